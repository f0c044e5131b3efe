"""Scenario 3: how long ``CancelBatch`` takes on a large batch whose running files hang.

The first run submits a batch of hanging files (``bench.processors``); each later run
retries every file of that batch (``RetryFiles``), which puts the whole batch back in
line without uploading it again. Each run waits until every worker is inside a hanging
file (its marker file exists), then times ``CancelBatch`` from the call to its reply.
Each reply is checked: the batch is ``CANCELLED`` with no file left running or waiting,
the processes that ran the hanging files are gone, and so are their temporary files. A
run that fails the check fails the scenario.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.corpus import write_copies
from bench.options import Options
from bench.processors import HANG, SCRIPTED
from bench.report import Figure, at_most, judged, median, percentile
from bench.server_process import ServerProcess, is_running, uploads
from server.gen.pdfbatch.v1 import batch_pb2 as pb

__all__ = ["cancel_latency"]

FILES = 10_000
RUNS = 10
_WAIT = 60.0


def _policy(workers: int, runs: int) -> pb.BatchPolicy:
    """Both workers busy, and a manual retry for every run after the first."""
    return pb.BatchPolicy(max_concurrency=2 * workers, max_manual_retries=runs)


def cancel_latency(options: Options) -> list[Figure]:
    """p50 and p99 of the cancel latency; target p99 < 250 ms."""
    runs = options.repeat or RUNS
    count = options.files or FILES
    workers = options.workers
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-cancel-") as scratch:
        root = Path(scratch)
        files = write_copies(root / "files", HANG, count)
        server = ServerProcess(root / "data", workers=workers, processor=SCRIPTED)
        with server, server.client() as client:
            work = root / "data" / "work"
            batch_id = ""
            for _ in range(runs):
                if batch_id:
                    client.retry(batch_id)
                else:
                    batch_id = client.submit(
                        uploads(files), policy=_policy(workers, runs), timeout=600
                    ).batch_id
                hanging = _wait_for_markers(work, workers)
                started = time.perf_counter()
                # A client cancelling 10,000 files wants the end state and counts, not
                # every file back (BATCH_VIEW_BASIC).
                reply = client.cancel(batch_id, with_files=False)
                latencies.append(time.perf_counter() - started)
                _check(reply, hanging)
    ms = [1000 * s for s in latencies]
    detail = {"files": count, "workers": workers, "runs": runs, "latencies_ms": ms}
    return [
        Figure(
            "cancel",
            f"cancel latency p50, {count}-file batch",
            percentile(ms, 0.5),
            "ms",
            note=f"{runs} runs",
            detail=detail,
        ),
        judged(
            "cancel",
            f"cancel latency p99, {count}-file batch",
            percentile(ms, 0.99),
            "ms",
            at_most(250),
            note=f"{runs} runs: the slowest; median {median(ms):.0f} ms; reply without files",
        ),
    ]


def _wait_for_markers(work: Path, workers: int) -> dict[int, Path]:
    """Wait until each worker left its marker: every worker hangs. Pid -> marker."""
    deadline = time.monotonic() + _WAIT
    while True:
        markers = {int(m.name.removeprefix("hang-")): m for m in work.glob("*/hang-*")}
        if len(markers) >= workers:
            return markers
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(markers)} of {workers} workers started hanging")
        time.sleep(0.01)


def _check(reply: pb.Batch, hanging: dict[int, Path]) -> None:
    """The reply's promise: everything of the batch stopped and cleaned up."""
    problems = []
    if reply.state != pb.BATCH_STATE_CANCELLED:
        problems.append(f"batch {pb.BatchState.Name(reply.state)}, not CANCELLED")
    counts = reply.counts
    if counts.running or counts.pending or counts.backoff:
        problems.append(f"files still in flight: {counts}")
    alive = [pid for pid in hanging if is_running(pid)]
    if alive:
        problems.append(f"workers still running: {alive}")
    left = [str(marker) for marker in hanging.values() if marker.exists()]
    if left:
        problems.append(f"temporary files left: {left}")
    if problems:
        raise RuntimeError("cancel replied before it was done: " + "; ".join(problems))
