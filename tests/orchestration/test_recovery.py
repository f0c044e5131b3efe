"""Resuming what a crash left in the store: every unfinished batch, each file as stored.

The stores here are SQLite files as a killed service leaves them (attempts open, a
backoff pending, a cancel half done); a fresh runtime resumes them, with real worker
processes and a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.execution.local.pool import DEFAULT_PROCESSOR
from actors.policy.book import BatchBook
from actors.policy.catalogue import ErrorCode
from actors.policy.model import (
    Attempt,
    AttemptOutcome,
    BatchRecord,
    BatchState,
    BatchView,
    FileRecord,
)
from actors.policy.model import FileState as S
from actors.policy.rules import BatchPolicy
from actors.storage.sqlite_store import SQLiteStore
from tests.helpers.harness import Harness, build_harness
from tests.helpers.processors import result
from tests.helpers.server_fixtures import make_pdf

BACKOFF_DELAY = 5.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "db.sqlite3")
    yield opened
    opened.close()


def left_by_crash(
    h: Harness, batch_id: str, state: BatchState, files: dict[str, tuple[bytes, S]], **extra: bool
) -> None:
    """Store a batch as a service killed while it ran would have left it.

    Args:
        h: Its store and blobs.
        batch_id: The batch.
        state: The batch's state: ``PENDING`` (accepted, never started), ``RUNNING``,
            ``CANCELLING`` or a terminal one.
        files: Script and state of each file: ``PENDING``, ``RUNNING`` (its attempt
            open), ``BACKOFF`` (due ``BACKOFF_DELAY`` from now) or ``SUCCEEDED``.
        extra: Fields every file record gets (``encrypted_with_password``).
    """
    now = h.clock.now()
    records = tuple(
        FileRecord(file_id, f"{file_id}.pdf", h.blobs.put(data), len(data), **extra)
        for file_id, (data, _) in files.items()
    )
    batch = BatchRecord(batch_id, "", BatchPolicy(), BatchState.PENDING, now, now)
    h.store.create_batch(BatchView(batch, records))
    if state is BatchState.PENDING:
        return
    book = BatchBook(BatchView(batch, records))
    book.set_batch(BatchState.RUNNING, now)
    results = {}
    for file_id, (_, target) in files.items():
        if target is S.PENDING:
            continue
        book.set_file(file_id, S.RUNNING, now, attempts=(Attempt(1, now),))
        ended = Attempt(1, now, now + 1, AttemptOutcome.SUCCEEDED)
        if target is S.SUCCEEDED:
            book.set_file(file_id, S.SUCCEEDED, now + 1, attempts=(ended,))
            results[file_id] = result("computed before the crash")
        elif target is S.BACKOFF:
            failed = Attempt(1, now, now, AttemptOutcome.FAILED, ErrorCode.WORKER_CRASHED)
            book.set_file(
                file_id,
                S.BACKOFF,
                now,
                attempts=(failed,),
                round_failures=1,
                next_attempt_at=now + BACKOFF_DELAY,
            )
    if state is not BatchState.RUNNING:
        book.set_batch(state, now, "as stored")
    h.store.commit(book.take_changes(), results)


def outcomes(view: BatchView) -> list[list[AttemptOutcome | None]]:
    return [[a.outcome for a in f.attempts] for f in view.files]


def test_every_unfinished_batch_resumes_where_it_was_stored(
    tmp_path: Path, store: SQLiteStore
) -> None:
    for h in build_harness(tmp_path, store=store):
        left_by_crash(
            h,
            "running",
            BatchState.RUNNING,
            {"f1": (b"ok", S.RUNNING), "f2": (b"ok", S.SUCCEEDED), "f3": (b"ok", S.PENDING)},
        )
        left_by_crash(h, "backoff", BatchState.RUNNING, {"f1": (b"ok", S.BACKOFF)})
        left_by_crash(
            h,
            "cancelling",
            BatchState.CANCELLING,
            {"f1": (b"hang", S.RUNNING), "f2": (b"hang", S.PENDING)},
        )
        left_by_crash(h, "accepted", BatchState.PENDING, {"f1": (b"ok", S.PENDING)})
        left_by_crash(h, "done", BatchState.SUCCEEDED, {"f1": (b"ok", S.SUCCEEDED)})
        done_before = store.load("done")

        resumed = h.runtime.resume()

        assert sorted(resumed) == ["accepted", "backoff", "cancelling", "running"]
        running = h.settled("running")
        assert running.batch.state is BatchState.SUCCEEDED
        assert outcomes(running) == [
            [AttemptOutcome.INTERRUPTED, AttemptOutcome.SUCCEEDED],
            [AttemptOutcome.SUCCEEDED],
            [AttemptOutcome.SUCCEEDED],
        ]
        assert running.files[0].round_failures == 0, "a cut-short attempt is no failure"
        assert store.load_result("running", "f2") == result("computed before the crash")
        cancelled = h.settled("cancelling")
        assert cancelled.batch.state is BatchState.CANCELLED
        assert outcomes(cancelled) == [[AttemptOutcome.INTERRUPTED], []]
        assert h.settled("accepted").batch.state is BatchState.SUCCEEDED
        # The backoff keeps its due time: nothing runs a moment before it.
        h.clock.wait_for_timer(BACKOFF_DELAY, timeout=30)
        h.clock.advance(BACKOFF_DELAY - 0.001)
        assert store.load("backoff").files[0].state is S.BACKOFF  # type: ignore[union-attr]
        h.clock.advance(0.001)
        backoff = h.settled("backoff")
        assert outcomes(backoff) == [[AttemptOutcome.FAILED, AttemptOutcome.SUCCEEDED]]
        assert store.load("done") == done_before
        for batch_id in resumed:
            sequences = [e.sequence for e in store.events_after(batch_id, 0)]
            assert sequences == list(range(1, len(sequences) + 1))


def test_a_file_whose_password_died_with_the_service_says_so(
    tmp_path: Path, store: SQLiteStore
) -> None:
    locked = make_pdf("secret text", password="s3cret")
    for h in build_harness(tmp_path, store=store, processor=DEFAULT_PROCESSOR):
        left_by_crash(
            h,
            "locked",
            BatchState.RUNNING,
            {"f1": (locked, S.RUNNING)},
            encrypted_with_password=True,
        )

        h.runtime.resume()

        view = h.settled("locked")
        (record,) = view.files
        assert record.error is not None
        assert record.error.code is ErrorCode.PDF_ENCRYPTED
        assert "service restarted" in record.error.message
        assert "Retry the file with its password" in record.error.message
        h.runtime.retry("locked", ["f1"], passwords={"f1": "s3cret"})
        assert h.settled("locked").batch.state is BatchState.SUCCEEDED


def test_a_batch_of_ten_thousand_files_resumes_within_two_seconds(
    tmp_path: Path, store: SQLiteStore
) -> None:
    # The service's own start (imports, worker processes) is measured by the bench
    # (``python -m bench --scenario recovery``); this is the part the store adds.
    for h in build_harness(tmp_path, store=store):
        files = {f"f{n:05d}": (b"ok", S.PENDING) for n in range(1, 10_001)}
        for n in range(1, 2_001):
            files[f"f{n:05d}"] = (b"ok", S.SUCCEEDED)
        for n in range(2_001, 2_005):
            files[f"f{n:05d}"] = (b"ok", S.RUNNING)
        left_by_crash(h, "large", BatchState.RUNNING, files)
        # The four cut-short attempts are interrupted, and four new ones started.
        resumed = store.load("large").batch.sequence + 8  # type: ignore[union-attr]
        started = time.perf_counter()

        h.runtime.resume()
        h.waiter.until("large", lambda v, last=resumed: v.batch.sequence >= last)

        assert time.perf_counter() - started < 2.0
        h.runtime.cancel("large")
