"""Scenarios 1 and 2: the whole service against the bare pool, on the same files.

Each pair of runs is a pass of the bare pool, then the same files through the service:
uploaded over gRPC on loopback as one batch, processed, and watched until the batch
settles. Both sides are warm and persistent. The figure is the median over the pairs of
service throughput / bare throughput, which equals bare time / service time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.baseline import BarePool
from bench.corpus import CorpusFile, directory_corpus, generated_corpus, one_page_corpus
from bench.options import Options
from bench.report import Figure, at_least, judged, median
from bench.server_process import ServerProcess, settle, submit

__all__ = ["compare", "control_plane", "throughput", "throughput_corpus"]

THROUGHPUT_FILES = 200
CONTROL_FILES = 5_000
THROUGHPUT_PAIRS = 5
CONTROL_PAIRS = 1


def throughput_corpus(options: Options, root: Path) -> tuple[list[CorpusFile], str]:
    """The files of the throughput scenario (``--corpus``, or generated under ``root``).

    Returns:
        The files, and words that say what they are.
    """
    if options.corpus is not None:
        files = directory_corpus(options.corpus, options.files)
        return files, f"{len(files)} files from {options.corpus.name}/"
    files = generated_corpus(root / "corpus", options.files or THROUGHPUT_FILES)
    return files, f"{len(files)} generated PDFs"


def throughput(options: Options) -> list[Figure]:
    """Scenario 1: real PDFs (generated, or ``--corpus``), target >= 0.95."""
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as scratch:
        root = Path(scratch)
        files, what = throughput_corpus(options, root)
        pairs = options.repeat or THROUGHPUT_PAIRS
        return [
            compare(
                options,
                files,
                root=root,
                scenario="throughput",
                what=what,
                pairs=pairs,
                target=0.95,
            )
        ]


def control_plane(options: Options) -> list[Figure]:
    """Scenario 2: one-page PDFs, where the service's cost per file shows; target >= 0.8."""
    with tempfile.TemporaryDirectory(prefix="bench-control-") as scratch:
        root = Path(scratch)
        files = one_page_corpus(root / "corpus", options.files or CONTROL_FILES)
        what = f"{len(files)} one-page PDFs"
        pairs = options.repeat or CONTROL_PAIRS
        return [
            compare(
                options,
                files,
                root=root,
                scenario="control-plane",
                what=what,
                pairs=pairs,
                target=0.8,
            )
        ]


def compare(
    options: Options,
    files: list[CorpusFile],
    *,
    root: Path,
    scenario: str,
    what: str,
    pairs: int,
    target: float,
) -> Figure:
    """Interleave bare and service runs over ``files``; the median throughput ratio."""
    workers = options.workers
    concurrency = 2 * workers
    paths = [f.path for f in files]
    warm = files[: 2 * workers]
    bare_runs, service_runs, uploads, ratios = [], [], [], []
    # CPU milliseconds per file: where the service's time goes, next to the bare pool's.
    cpu: dict[str, list[float]] = {"bare_workers": [], "service_workers": [], "server": []}
    outcomes: dict[str, object] = {}
    with (
        BarePool(workers) as bare,
        ServerProcess(root / "data", workers=workers) as server,
        server.client() as client,
    ):
        bare.run([f.path for f in warm])
        settle(client, submit(client, warm, concurrency))
        for _ in range(pairs):
            bare_run = bare.run(paths)
            server_before, workers_before = server.cpu_seconds()
            started = time.perf_counter()
            batch_id = submit(client, files, concurrency)
            uploaded = time.perf_counter() - started
            settled = settle(client, batch_id)
            elapsed = time.perf_counter() - started
            server_after, workers_after = server.cpu_seconds()
            per_file = 1000 / len(files)
            cpu["bare_workers"].append(bare_run.cpu_seconds * per_file)
            cpu["service_workers"].append((workers_after - workers_before) * per_file)
            cpu["server"].append((server_after - server_before) * per_file)
            if settled.unsettled:
                raise RuntimeError(f"{scenario}: {settled.unsettled} files did not settle")
            bare_runs.append(bare_run.seconds)
            service_runs.append(elapsed)
            uploads.append(uploaded)
            ratios.append(bare_run.seconds / elapsed)
            outcomes = {
                "bare": {"succeeded": bare_run.succeeded, "failed": bare_run.failed},
                "service": {
                    "succeeded": settled.counts.succeeded,
                    "failed": settled.counts.failed,
                    "events": settled.events,
                },
            }
    count = len(files)
    bare_rate = count / median(bare_runs)
    service_rate = count / median(service_runs)
    return judged(
        scenario,
        f"service/bare files/s, {what}",
        median(ratios),
        "x",
        at_least(target),
        note=f"median of {pairs}; bare {bare_rate:.1f}/s, service {service_rate:.1f}/s",
        detail={
            "files": count,
            "workers": workers,
            "max_concurrency": concurrency,
            "pairs": pairs,
            "ratios": ratios,
            "bare_seconds": bare_runs,
            "service_seconds": service_runs,
            "service_upload_seconds": uploads,
            "cpu_ms_per_file": cpu,
            "outcomes_last_pair": outcomes,
        },
    )
