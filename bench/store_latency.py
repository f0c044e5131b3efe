"""``python -m bench.store_latency``: how long the SQLite store takes to commit and to load.

Commits are what a supervisor does per message: a file's change with its event (and a
one-page result when the file succeeds). They are timed from 1 and from 8 threads at
once (8 supervisors), with ``synchronous=FULL`` (the default: every commit fsynced) and
``NORMAL``, and with 4 more threads reading whole batches meanwhile (the gRPC side).
Then the CPU time a file's way from waiting to succeeded costs the storing thread, at
1, 6 and 64 files a commit (6 is about what a supervisor groups at 700 one-page files a
second), and the load of a 10,000-file batch, which is what resuming it after a crash
reads.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

from actors.policy.book import BatchBook
from actors.policy.model import (
    Attempt,
    BatchRecord,
    BatchState,
    BatchView,
    DocumentInfo,
    ExtractionResult,
    FileRecord,
    FileState,
)
from actors.policy.rules import BatchPolicy
from actors.policy.sealed import seal
from actors.storage.sqlite_store import SQLiteStore

__all__ = ["main"]

DIGEST = "ab" * 32
# Sealed, as results reach the store from a worker.
RESULT = seal(ExtractionResult(1, False, DocumentInfo(title="t"), ("page text " * 50,)))


def _batch(batch_id: str, files: int) -> BatchView:
    batch = BatchRecord(batch_id, "", BatchPolicy(), BatchState.PENDING, 0.0, 0.0)
    records = tuple(FileRecord(f"f{n:05d}", f"{n}.pdf", DIGEST, 100) for n in range(1, files + 1))
    return BatchView(batch, records)


def _commits(store: SQLiteStore, batch_id: str, files: int, latencies: list[float]) -> None:
    view = store.load(batch_id)
    assert view is not None
    book = BatchBook(view)
    book.set_batch(BatchState.RUNNING, 1.0)
    store.commit(book.take_changes(), {})
    for n in range(1, files + 1):
        file_id = f"f{n:05d}"
        book.set_file(file_id, FileState.RUNNING, 2.0, attempts=(Attempt(1, 2.0),))
        started = time.perf_counter()
        store.commit(book.take_changes(), {})
        latencies.append(time.perf_counter() - started)
        book.set_file(file_id, FileState.SUCCEEDED, 3.0, attempts=(Attempt(1, 2.0, 3.0),))
        started = time.perf_counter()
        store.commit(book.take_changes(), {file_id: RESULT})
        latencies.append(time.perf_counter() - started)


def _read(store: SQLiteStore, batches: int, stop: threading.Event, latencies: list[float]) -> None:
    while not stop.is_set():
        for w in range(batches):
            started = time.perf_counter()
            store.load(f"b{w}")
            store.events_after(f"b{w}", 0)
            latencies.append(time.perf_counter() - started)


def commit_latency(
    root: Path, writers: int, readers: int, files: int, synchronous: Literal["FULL", "NORMAL"]
) -> tuple[list[float], list[float]]:
    """Commit and read latencies (seconds) of ``writers`` and ``readers`` threads."""
    path = root / f"{synchronous}-{writers}-{readers}.sqlite3"
    store = SQLiteStore(path, synchronous=synchronous)
    try:
        for w in range(writers):
            store.create_batch(_batch(f"b{w}", files))
        commits: list[float] = []
        reads: list[float] = []
        stop = threading.Event()
        threads = [
            threading.Thread(target=_commits, args=(store, f"b{w}", files, commits))
            for w in range(writers)
        ]
        reading = [
            threading.Thread(target=_read, args=(store, writers, stop, reads))
            for _ in range(readers)
        ]
        for thread in [*threads, *reading]:
            thread.start()
        for thread in threads:
            thread.join()
        stop.set()
        for thread in reading:
            thread.join()
        return commits, reads
    finally:
        store.close()


def lifecycle_cpu(
    root: Path, files: int, group: int, synchronous: Literal["FULL", "NORMAL"]
) -> tuple[float, float]:
    """CPU seconds of the storing thread per file, and per commit, to take ``files``
    files from waiting to succeeded with a one-page result, ``group`` files a commit:
    what a supervisor's group commits cost whatever else it does."""
    store = SQLiteStore(root / f"lifecycle-{group}-{synchronous}.sqlite3", synchronous=synchronous)
    try:
        view = _batch("life", files)
        store.create_batch(view)
        summary = store.batch_summary("life")
        assert summary is not None
        # Holding only the files it works on, as a supervisor does.
        book = BatchBook(summary)
        book.set_batch(BatchState.RUNNING, 1.0)
        store.commit(book.take_changes(), {})
        started, commits = time.thread_time(), 0
        for first in range(0, files, group):
            chosen = [book.hold(record).file_id for record in view.files[first : first + group]]
            for file_id in chosen:
                book.set_file(file_id, FileState.RUNNING, 2.0, attempts=(Attempt(1, 2.0),))
            store.commit(book.take_changes(), {})
            for file_id in chosen:
                attempts = (Attempt(1, 2.0, 3.0),)
                book.set_file(file_id, FileState.SUCCEEDED, 3.0, attempts=attempts)
            store.commit(book.take_changes(), dict.fromkeys(chosen, RESULT))
            book.forget_settled()
            commits += 2
        spent = time.thread_time() - started
        return spent / files, spent / commits
    finally:
        store.close()


def load_time(root: Path, files: int) -> tuple[float, float]:
    """Seconds to store a ``files``-file batch, and to load it back."""
    store = SQLiteStore(root / "large.sqlite3")
    try:
        started = time.perf_counter()
        store.create_batch(_batch("large", files))
        created = time.perf_counter() - started
        started = time.perf_counter()
        store.load("large")
        return created, time.perf_counter() - started
    finally:
        store.close()


def _ms(values: list[float], quantile: float) -> str:
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]:.2f}"


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.store_latency")
    parser.add_argument("--files", type=int, default=300, help="files per writer")
    parser.add_argument("--dir", type=Path, help="where the databases go (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="store-latency-", dir=args.dir) as scratch:
        root = Path(scratch)
        print("sync    writers readers  commit p50/p99 ms  commits/s  read p50/p99 ms")
        for synchronous in ("FULL", "NORMAL"):
            for writers, readers in ((1, 0), (8, 0), (8, 4)):
                started = time.perf_counter()
                commits, reads = commit_latency(root, writers, readers, args.files, synchronous)
                rate = len(commits) / (time.perf_counter() - started)
                read = f"{_ms(reads, 0.5):>7}/{_ms(reads, 0.99)}" if reads else "-"
                print(
                    f"{synchronous:<7} {writers:>7} {readers:>7}"
                    f"  {_ms(commits, 0.5):>7}/{_ms(commits, 0.99):<9} {rate:>9.0f}  {read}"
                )
        print("sync    files/commit  CPU per file ms  CPU per commit ms")
        modes: tuple[Literal["FULL", "NORMAL"], ...] = ("FULL", "NORMAL")
        for synchronous in modes:
            for group in (1, 6, 64):
                per_file, per_commit = lifecycle_cpu(root, 3_000, group, synchronous)
                print(
                    f"{synchronous:<7} {group:>12}  {1000 * per_file:>15.3f}"
                    f"  {1000 * per_commit:>17.3f}"
                )
        created, loaded = load_time(root, 10_000)
        print(f"10,000-file batch: stored in {created:.3f} s, loaded in {loaded:.3f} s")


if __name__ == "__main__":
    main()
