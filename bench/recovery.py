"""Scenario 6: restart after SIGKILL with a large batch in flight, until work resumes.

A ``pdfbatch serve`` child (durable SQLite store, the default) gets a 10,000-file batch
of scripted ``ok`` files. Once files are being processed, the server is killed with
SIGKILL (its workers and fork server die with it) and started again on the same data
directory. Two times are taken from the restart command: until it serves (prints
``listening on``), and until the batch resumed processing (the first file of the batch
that succeeds after the kill reaches a watcher that starts from the batch's stored
sequence, read with ``GetBatch`` once the server serves). Each further run kills it again,
mid-batch, and restarts it again.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.corpus import write_copies
from bench.options import Options
from bench.processors import OK, SCRIPTED
from bench.report import Figure, at_most, judged, median
from bench.server_process import ServerProcess, submit
from server.client.api import Client
from server.gen.pdfbatch.v1 import batch_pb2 as pb

__all__ = ["recovery"]

FILES = 10_000
RUNS = 3
# Files that must succeed between two kills: the batch is really being processed.
PROGRESS = 100


def recovery(options: Options) -> list[Figure]:
    """Time to serving and to resumed processing after SIGKILL; target < 2 s."""
    workers = options.workers
    count = options.files or FILES
    runs = options.repeat or RUNS
    serving: list[float] = []
    resumed: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as scratch:
        root = Path(scratch)
        files = write_copies(root / "files", OK, count)
        server = ServerProcess(root / "data", workers=workers, processor=SCRIPTED).start()
        try:
            with server.client() as client:
                batch_id = submit(client, files, 2 * workers)
                last = _progress(client, batch_id, 0, since=0.0)
            for _ in range(runs):
                server.kill()
                killed_at = time.time()
                server = ServerProcess(root / "data", workers=workers, processor=SCRIPTED)
                started = time.perf_counter()
                server.start()
                serving.append(time.perf_counter() - started)
                with server.client() as client:
                    # From what is stored now: the events before it are the killed
                    # process's, which a watcher that lagged behind it would have to
                    # replay before it could see anything new.
                    last = client.get(batch_id, with_files=False).sequence
                    last = _progress(client, batch_id, last, since=killed_at)
                    resumed.append(time.perf_counter() - started)
                    # The rest of the run must be real progress, not a lucky first file.
                    last = _progress(client, batch_id, last, since=killed_at, files=PROGRESS)
            with server.client() as client:
                client.cancel(batch_id)
        finally:
            server.stop()
    detail = {
        "files": count,
        "runs": runs,
        "serving_seconds": serving,
        "resumed_seconds": resumed,
    }
    return [
        Figure(
            "recovery",
            f"restart after SIGKILL to serving, {count}-file batch in flight",
            median(serving),
            "s",
            note=f"median of {runs}; slowest {max(serving):.2f} s",
            detail=detail,
        ),
        judged(
            "recovery",
            f"restart after SIGKILL to resumed processing, {count}-file batch",
            max(resumed),
            "s",
            at_most(2),
            note=f"slowest of {runs}; median {median(resumed):.2f} s",
        ),
    ]


def _progress(client: Client, batch_id: str, after: int, *, since: float, files: int = 1) -> int:
    """Wait until ``files`` files of the batch succeed after ``since`` (wall clock).

    Returns:
        The sequence of the last event read.

    Raises:
        RuntimeError: The batch settled first.
    """
    done = 0
    for event in client.watch(batch_id, after_sequence=after):
        after = event.sequence
        fresh = event.event_time.ToNanoseconds() / 1e9 > since
        if fresh and event.WhichOneof("change") == "file":
            done += event.file.state == pb.FILE_STATE_SUCCEEDED
            if done >= files:
                return after
    raise RuntimeError("the batch settled before the recovery runs were done")
