"""Scenario 5: the service at the size of real batches.

A fresh server (a ``pdfbatch serve`` child process) per scenario, sampled with psutil
every 20 ms:

- ``scale``: one batch of ``--files`` files (10,000 by default; run it at 1,000,000 to
  check the issue's targets) kept in flight, and the service's answers at that size:
  peak RSS, upload rate, ``GetBatch`` and ``ListFiles`` latency, resume after
  ``kill -9``, cancel and retry-all latency (see :func:`scale`);
- ``scale-batches``: 100 batches of 100 files submitted at once (from 8 client threads):
  peak RSS, and threads above the warmed-up idle count, whose target is the batches'
  total ``max_concurrency`` plus a small constant: threads follow concurrency, never
  the number of files.

Workers run the scripted processor (``bench.processors``), so that the service, not
pypdf, is what is measured.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil

from bench.corpus import CorpusFile, write_copies
from bench.options import Options
from bench.processors import HANG, OK, SCRIPTED
from bench.report import Figure, at_most, judged
from bench.server_process import ResourceSampler, ServerProcess, settle, submit
from server.client.api import Client
from server.gen.pdfbatch.v1 import batch_pb2 as pb

__all__ = ["scale", "scale_batches"]

LARGE_BATCH = 10_000
MANY_BATCHES = 100
FILES_PER_BATCH = 100
SUBMITTERS = 8
# Threads allowed beyond the concurrency: timers, pool monitor, the calls in flight...
THREAD_ALLOWANCE = 16


def scale(options: Options) -> list[Figure]:
    """One batch of ``--files`` files (default 10,000), the service's answers at its size.

    Every file hangs in its worker (``%PDF-hang``), so the batch stays in flight: all
    but ``max_concurrency`` files wait. Measured in order on one server: the upload,
    ``GetBatch`` (basic view) and ``ListFiles`` pages of 1,000 (medians), a restart
    after ``kill -9`` (until it serves, and until the batch's files run again), a
    cancel of the whole batch (basic view), a retry of every file (all cancelled by
    then: one change by state, like a retry of as many failed files), and the server's
    peak RSS over all of it (sampled every 20 ms, restart included).
    """
    workers = options.workers
    concurrency = 2 * workers
    count = options.files or LARGE_BATCH
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        root = Path(scratch)
        files = write_copies(root / "files", HANG, count)
        got = _at_scale(root / "data", workers, files, concurrency)
    what = f"one {count:,}-file batch"
    return [
        judged(
            "scale",
            f"server peak RSS, {what}",
            got["rss_mb"],
            "MB",
            at_most(300),
            note=f"max over upload, calls, restart; {got['tree_rss_mb']:.0f} MB with workers",
            detail=got,
        ),
        Figure(
            "scale",
            f"upload rate, {what}",
            got["upload_files_per_s"],
            "files/s",
            note=f"{got['upload_s']:.1f} s for {count:,} files",
        ),
        judged("scale", f"GetBatch (basic) median, {what}", got["get_ms"], "ms", at_most(10)),
        judged(
            "scale",
            f"ListFiles page of 1,000 median, {what}",
            got["page_ms"],
            "ms",
            at_most(50),
            note=f"p90 {got['page_p90_ms']:.1f} ms over {got['pages']} pages",
        ),
        judged(
            "scale",
            f"resume after kill -9 until serving, {what}",
            got["serving_s"],
            "s",
            at_most(2),
            note=f"process start included: {got['empty_start_s']:.2f} s with no batch",
        ),
        judged(
            "scale",
            f"resume after kill -9 until files run again, {what}",
            got["processing_s"],
            "s",
            at_most(2),
        ),
        judged(
            "scale",
            f"CancelBatch (basic), {what}",
            got["cancel_ms"],
            "ms",
            at_most(250),
            note=f"{got['cancelled']:,} files cancelled",
        ),
        judged(
            "scale",
            f"RetryFiles of every file, {what}",
            got["retry_ms"],
            "ms",
            at_most(1000),
            note=f"{got['retried']:,} files retried",
        ),
    ]


def _at_scale(
    data: Path, workers: int, files: list[CorpusFile], concurrency: int
) -> dict[str, float]:
    """Upload ``files`` as one batch of hanging files and time the calls on it."""
    count = len(files)
    server = ServerProcess(data, workers=workers, processor=SCRIPTED, max_files_per_batch=count)
    sampler: ResourceSampler | None = None
    got: dict[str, float] = {}
    try:
        got["empty_start_s"] = _empty_start(data.parent / "empty", workers)
        server.start()
        sampler = ResourceSampler(server.pid).__enter__()
        with _client(server) as client:
            started = time.perf_counter()
            batch_id = submit(client, files, concurrency)
            got["upload_s"] = time.perf_counter() - started
            got["upload_files_per_s"] = count / got["upload_s"]
            _until_running(client, batch_id, workers)
            got["get_ms"] = _median_ms(lambda: client.get(batch_id, with_files=False), 21)
            pages = _page_times(client, batch_id, 20)
            got["page_ms"], got["page_p90_ms"] = (
                statistics.median(pages),
                statistics.quantiles(pages, n=10)[-1] if len(pages) > 1 else pages[0],
            )
            got["pages"] = len(pages)
        sampler.__exit__(None, None, None)
        rss, tree = sampler.peaks_mb
        server.kill()
        restarted = ServerProcess(
            data, workers=workers, processor=SCRIPTED, max_files_per_batch=count
        )
        began = time.perf_counter()
        restarted.start()
        got["serving_s"] = time.perf_counter() - began
        server = restarted
        sampler = ResourceSampler(server.pid).__enter__()
        with _client(server) as client:
            _until_running(client, batch_id, workers, fresh=True)
            got["processing_s"] = time.perf_counter() - began
            began = time.perf_counter()
            cancelled = client.cancel(batch_id, with_files=False)
            got["cancel_ms"] = (time.perf_counter() - began) * 1000
            got["cancelled"] = cancelled.counts.cancelled
            began = time.perf_counter()
            retried = client.retry(batch_id)
            got["retry_ms"] = (time.perf_counter() - began) * 1000
            got["retried"] = retried.counts.pending + retried.counts.running
            client.cancel(batch_id, with_files=False)
        sampler.__exit__(None, None, None)
        again, again_tree = sampler.peaks_mb
        got["rss_mb"], got["tree_rss_mb"] = max(rss, again), max(tree, again_tree)
    finally:
        server.stop()
    return got


@contextlib.contextmanager
def _client(server: ServerProcess) -> Iterator[Client]:
    # The submit's reply still lists every file; a bench client takes it whole.
    options = [("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(server.address, options=options) as channel:
        yield Client(server.address, timeout=600.0, channel=channel)


def _empty_start(data: Path, workers: int) -> float:
    """Seconds a server with no batch takes to serve: what a restart costs anyway."""
    began = time.perf_counter()
    with ServerProcess(data, workers=workers, processor=SCRIPTED):
        return time.perf_counter() - began


def _until_running(client: Client, batch_id: str, workers: int, *, fresh: bool = False) -> None:
    """Wait until each of the ``workers`` runs a file of the batch (after a restart: new
    attempts); the other files handed over wait for a worker."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        batch = client.get(batch_id, with_files=False)
        if batch.counts.running >= workers:
            if not fresh:
                return
            page = next(client.file_pages(batch_id, states=[pb.FILE_STATE_RUNNING]))
            if all(f.attempt_count >= 2 for f in page.files):
                return
        time.sleep(0.01)
    raise RuntimeError("the batch's files did not start")


def _median_ms(call: Callable[[], object], times: int) -> float:
    samples = []
    for _ in range(times):
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


def _page_times(client: Client, batch_id: str, pages: int) -> list[float]:
    """Milliseconds of each of the first ``pages`` pages of 1,000 files, in order."""
    samples: list[float] = []
    listing = client.file_pages(batch_id, page_size=1000)
    for _ in range(pages):
        began = time.perf_counter()
        if next(listing, None) is None:
            break
        samples.append((time.perf_counter() - began) * 1000)
    return samples


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
