"""Scenario 7: the service next to Ray, the system a user would otherwise pick.

The throughput scenario's corpus goes through a local Ray (as many CPUs as the
service has workers) as one task per file, with Ray's own retries
(``max_retries=3``) calling the same extractor on the file's bytes, and through the
service, in interleaved runs. The figure is service throughput / Ray throughput: no
target, it says what the service's guarantees cost (or save) against the peer.
Skipped when Ray is not installed.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from actors.policy.model import ExtractionResult
from bench.baseline import configure_worker, extract_data
from bench.corpus import CorpusFile
from bench.options import Options
from bench.report import Figure, median
from bench.server_process import ROOT, ServerProcess, settle, submit
from bench.throughput import throughput_corpus

__all__ = ["extract_bytes", "peer"]

PAIRS = 3
# Ray binds to loopback only with this (despite its name) and must not phone home.
_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@functools.cache
def _configure_once() -> None:
    configure_worker()


def extract_bytes(data: bytes) -> ExtractionResult | str:
    """The Ray task's body: the bare baseline's extraction, on bytes."""
    _configure_once()
    return extract_data(data)


def peer(options: Options) -> list[Figure]:
    """Service / Ray throughput on the throughput corpus, median of interleaved pairs."""
    name = "service/Ray files/s"
    if importlib.util.find_spec("ray") is None:
        return [Figure("peer", name, None, "x", note="not measured: Ray is not installed")]
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as scratch:
        root = Path(scratch)
        files, what = throughput_corpus(options, root)
        return [_compare(options, files, root, f"{name}, {what}")]


def _compare(options: Options, files: list[CorpusFile], root: Path, name: str) -> Figure:
    import ray  # noqa: PLC0415 - optional

    pairs = options.repeat or PAIRS
    workers = options.workers
    ray_runs, service_runs, ratios = [], [], []
    for variable, value in _RAY_ENV.items():
        os.environ.setdefault(variable, value)
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    try:
        task = ray.remote(max_retries=3)(extract_bytes)
        server = ServerProcess(root / "data", workers=workers)
        with server, server.client() as client:
            warm = files[: 2 * workers]
            _ray_run(ray, task, warm)
            settle(client, submit(client, warm, 2 * workers))
            for _ in range(pairs):
                ray_seconds = _ray_run(ray, task, files)
                started = time.perf_counter()
                settled = settle(client, submit(client, files, 2 * workers))
                service_seconds = time.perf_counter() - started
                if settled.unsettled:
                    raise RuntimeError(f"peer: {settled.unsettled} files did not settle")
                ray_runs.append(ray_seconds)
                service_runs.append(service_seconds)
                ratios.append(ray_seconds / service_seconds)
    finally:
        ray.shutdown()
    count = len(files)
    return Figure(
        "peer",
        name,
        median(ratios),
        "x",
        note=(
            f"median of {pairs}; Ray {count / median(ray_runs):.1f}/s, "
            f"service {count / median(service_runs):.1f}/s"
        ),
        detail={
            "files": count,
            "workers": workers,
            "pairs": pairs,
            "ratios": ratios,
            "ray_seconds": ray_runs,
            "service_seconds": service_runs,
        },
    )


def _ray_run(ray: Any, task: Any, files: list[CorpusFile]) -> float:
    """Seconds to read every file and get every task's result back."""
    started = time.perf_counter()
    refs = [task.remote(f.path.read_bytes()) for f in files]
    ray.get(refs)
    return time.perf_counter() - started
