"""Scenario 5: memory and threads of the server process for large batches.

A fresh server (a ``pdfbatch serve`` child process) per scenario, warmed up with a small
batch and then sampled with psutil every 20 ms while it runs:

- ``scale``: one batch of 10,000 files;
- ``scale-batches``: 100 batches of 100 files submitted at once (from 8 client threads).

Workers run the scripted ``ok`` processor (``bench.processors``), so that the service,
not pypdf, is what is measured. Every file must end terminal (succeeded). Reported: the server's
peak RSS alone (the target), with its children, and its peak thread count above the
warmed-up idle count. The thread target is the batches' total ``max_concurrency`` plus
a small constant: threads must follow concurrency, never the number of files.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from bench.corpus import CorpusFile, write_copies
from bench.options import Options
from bench.processors import OK, SCRIPTED
from bench.report import Figure, at_most, judged
from bench.server_process import ResourceSampler, ServerProcess, settle, submit

__all__ = ["scale", "scale_batches"]

LARGE_BATCH = 10_000
MANY_BATCHES = 100
FILES_PER_BATCH = 100
SUBMITTERS = 8
# Threads allowed beyond the concurrency: timers, pool monitor, the calls in flight...
THREAD_ALLOWANCE = 16


def scale(options: Options) -> list[Figure]:
    """Peak RSS and threads for one large batch (``--files`` files)."""
    workers = options.workers
    concurrency = 2 * workers
    count = options.files or LARGE_BATCH
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        root = Path(scratch)
        files = write_copies(root / "files", OK, count)
        peaks = _measure(root / "data", workers, [files], concurrency)
    return [
        judged(
            "scale",
            f"server peak RSS, one {count}-file batch",
            peaks["rss_mb"],
            "MB",
            at_most(250),
            note=f"{peaks['tree_rss_mb']:.0f} MB with its workers; {peaks['seconds']:.0f} s",
            detail=peaks,
        ),
        judged(
            "scale",
            f"server peak threads above idle, one {count}-file batch",
            peaks["threads_above_idle"],
            "threads",
            at_most(concurrency + THREAD_ALLOWANCE, strict=False),
            note=f"max_concurrency {concurrency} + {THREAD_ALLOWANCE}",
        ),
    ]


def scale_batches(options: Options) -> list[Figure]:
    """Peak RSS and threads for 100 batches at once (of ``--files`` files each)."""
    workers = options.workers
    concurrency = 2 * workers
    count = options.files or FILES_PER_BATCH
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        root = Path(scratch)
        files = write_copies(root / "files", OK, count)
        peaks = _measure(root / "data", workers, [files] * MANY_BATCHES, concurrency)
    what = f"{MANY_BATCHES} batches of {count} files at once"
    return [
        Figure(
            "scale-batches",
            f"server peak RSS, {what}",
            peaks["rss_mb"],
            "MB",
            note=f"{peaks['tree_rss_mb']:.0f} MB with its workers; {peaks['seconds']:.0f} s",
            detail=peaks,
        ),
        judged(
            "scale-batches",
            f"server peak threads above idle, {what}",
            peaks["threads_above_idle"],
            "threads",
            at_most(MANY_BATCHES * concurrency + THREAD_ALLOWANCE, strict=False),
            note=f"{MANY_BATCHES} x max_concurrency {concurrency} + {THREAD_ALLOWANCE}",
        ),
    ]


def _measure(
    data: Path, workers: int, batches: list[list[CorpusFile]], concurrency: int
) -> dict[str, float]:
    """Run ``batches`` at once on a fresh server; its peaks, and how long it took."""
    server = ServerProcess(data, workers=workers, processor=SCRIPTED)
    with server, server.client() as client:
        settle(client, submit(client, batches[0][: 2 * workers], concurrency))
        idle = psutil.Process(server.pid).num_threads()
        started = time.perf_counter()
        with ResourceSampler(server.pid) as sampler:
            submitters = min(SUBMITTERS, len(batches))
            with ThreadPoolExecutor(submitters, thread_name_prefix="bench-submit") as pool:
                ids = list(pool.map(lambda files: submit(client, files, concurrency), batches))
            succeeded = sum(settle(client, batch_id).counts.succeeded for batch_id in ids)
        seconds = time.perf_counter() - started
        rss, tree = sampler.peaks_mb
    submitted = sum(len(files) for files in batches)
    if succeeded != submitted:
        raise RuntimeError(f"{submitted - succeeded} of {submitted} files did not succeed")
    return {
        "rss_mb": rss,
        "tree_rss_mb": tree,
        "threads_idle": idle,
        "threads_peak": sampler.peak_threads,
        "threads_above_idle": sampler.peak_threads - idle,
        "samples": sampler.samples,
        "seconds": seconds,
        "batches": len(batches),
        "files_per_batch": len(batches[0]),
        "max_concurrency": concurrency,
    }
