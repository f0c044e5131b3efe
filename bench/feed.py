"""Scenario: how many files one service process can feed when the work costs nothing.

The server runs the scripted processor (:mod:`bench.processors`: every file is a
``%PDF-ok`` script that succeeds at once with a one-page result), so the workers cost
next to nothing and what limits the batch is the service itself: the upload, the
supervisor, its group commits, the pool's hand-overs and the watch. Each run uploads
``--files`` distinct scripts (5,000 by default) as one batch and watches it settle; the
figures are files per second from the first byte to the last event, and the server
process's CPU time per file (psutil), which is what a service feeding a large Ray
cluster would pay per file. The issue-16 target is 0.25 ms, so that one process feeds
more than 4,000 files a second.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.corpus import CorpusFile
from bench.options import Options
from bench.processors import OK, SCRIPTED
from bench.report import Figure, at_most, judged, median
from bench.server_process import ServerProcess, submit
from bench.throughput import SERVER_CPU_MS_PER_ONE_PAGE_FILE, settle_timed

__all__ = ["feed"]

FILES = 5_000
RUNS = 3
# As many files in flight as the pool can take in chunks: the service, not the batch's
# policy, is what this scenario measures.
MAX_CONCURRENCY = 256


def feed(options: Options) -> list[Figure]:
    """Files per second and server CPU per file with workers that cost nothing."""
    count = options.files or FILES
    runs = options.repeat or RUNS
    rates: list[float] = []
    cpu_ms: list[float] = []
    worker_ms: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as scratch:
        root = Path(scratch)
        corpus = root / "corpus"
        corpus.mkdir()
        files = []
        for n in range(count):
            path = corpus / f"{n:07d}.pdf"
            # Distinct bytes: each file is a blob of its own, as in a real batch.
            path.write_bytes(OK + b" %d" % n)
            files.append(CorpusFile(path, path.name))
        with (
            ServerProcess(root / "data", workers=options.workers, processor=SCRIPTED) as server,
            server.client() as client,
        ):
            settle_timed(client, submit(client, files[:50], MAX_CONCURRENCY), time.time())
            for _ in range(runs):
                server_before, workers_before = server.cpu_seconds()
                began = time.time()
                started = time.perf_counter()
                settled, _ = settle_timed(client, submit(client, files, MAX_CONCURRENCY), began)
                elapsed = time.perf_counter() - started
                server_after, workers_after = server.cpu_seconds()
                if settled.counts.succeeded != count:
                    raise RuntimeError(f"feed: {settled.counts.succeeded} of {count} succeeded")
                rates.append(count / elapsed)
                cpu_ms.append(1000 * (server_after - server_before) / count)
                worker_ms.append(1000 * (workers_after - workers_before) / count)
    note = f"median of {runs}; {options.workers} workers at {median(worker_ms):.2f} ms a file"
    detail = {"files": count, "rates": rates, "server_cpu_ms": cpu_ms, "worker_cpu_ms": worker_ms}
    return [
        Figure("feed", f"files/s, {count} instant files", median(rates), "files/s", note=note),
        judged(
            "feed",
            f"server CPU per file, {count} instant files",
            median(cpu_ms),
            "ms",
            at_most(SERVER_CPU_MS_PER_ONE_PAGE_FILE, strict=False),
            note=note,
            detail=detail,
        ),
    ]
