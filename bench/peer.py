"""Scenario 7: the service next to Ray, the system a user would otherwise pick.

The same files go through a local Ray (as many CPUs as the service has workers) as
one task per file, with Ray's own retries (``max_retries=3``) calling the same
extractor on the file's bytes, through the bare pool and through the service, in
interleaved runs (:func:`bench.throughput.compare`), on two sets: the throughput
scenario's corpus (generated text-heavy PDFs, or ``--corpus``) and one-page PDFs. The
figure is service throughput / Ray throughput (target >= 1.2 on the generated and the
one-page sets: what the service's guarantees cost, or save, against the peer), with
the bare pool's ratio, the server's CPU per file and the time to the first result
measured in the same runs. Skipped when Ray is not installed.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from actors.policy.model import ExtractionResult
from bench.baseline import configure_worker, extract_data
from bench.corpus import CorpusFile, one_page_corpus
from bench.options import Options
from bench.report import Figure
from bench.server_process import ROOT
from bench.throughput import compare, throughput_corpus

__all__ = ["ONE_PAGE_FILES", "RayTasks", "extract_bytes", "peer"]

PAIRS = 3
ONE_PAGE_FILES = 1_500
RAY_TARGET = 1.2
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
    """Service / Ray throughput (and the bare pool's) on the throughput corpus and on
    one-page PDFs, median of interleaved runs."""
    if importlib.util.find_spec("ray") is None:
        return [
            Figure(
                "peer", "service/Ray files/s", None, "x", note="not measured: Ray is not installed"
            )
        ]
    pairs = options.repeat or PAIRS
    with (
        tempfile.TemporaryDirectory(prefix="bench-peer-") as scratch,
        RayTasks(options.workers) as ray,
    ):
        root = Path(scratch)
        for run in ("set-1", "set-2"):
            (root / run).mkdir()
        files, what = throughput_corpus(options, root)
        figures = compare(
            options,
            files,
            root=root / "set-1",
            scenario="peer",
            what=what,
            pairs=pairs,
            target=0.95,
            peer=ray,
            peer_target=RAY_TARGET if options.corpus is None else None,
        )
        one_page = one_page_corpus(root / "one-page", options.files or ONE_PAGE_FILES)
        figures += compare(
            options,
            one_page,
            root=root / "set-2",
            scenario="peer",
            what=f"{len(one_page)} one-page PDFs",
            pairs=pairs,
            target=0.8,
            one_page=True,
            peer=ray,
            peer_target=RAY_TARGET,
        )
        return figures


class RayTasks:
    """A local Ray running one task per file; start it with ``with``."""

    name = "Ray"

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._ray: Any = None
        self._task: Any = None

    def __enter__(self) -> Self:
        import ray  # noqa: PLC0415 - optional

        for variable, value in _RAY_ENV.items():
            os.environ.setdefault(variable, value)
        ray.init(
            num_cpus=self._workers,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        )
        self._ray = ray
        self._task = ray.remote(max_retries=3)(extract_bytes)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._ray.shutdown()

    def run(self, files: list[CorpusFile]) -> float:
        """Seconds to read every file and get every task's result back."""
        started = time.perf_counter()
        refs = [self._task.remote(f.path.read_bytes()) for f in files]
        self._ray.get(refs)
        return time.perf_counter() - started
