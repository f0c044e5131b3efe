"""Changes by state stored as pending moves: the same files as a store that moves every
row at once, whatever the moves, the reads, and how far the rows have been written."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.policy.book import BatchBook
from actors.policy.catalogue import ErrorCode
from actors.policy.model import Attempt, AttemptOutcome, FileError, FileState
from actors.storage.moves import MAX_PENDING_MOVES
from actors.storage.sqlite_store import SQLiteStore
from actors.storage.store import MemoryStore
from tests.helpers.records import new_batch

FILES = 9
CAP = 2
_CODES = (ErrorCode.PDF_MALFORMED, ErrorCode.PDF_WRONG_PASSWORD)

# One step: ("run", file, outcome) runs a waiting file to an end; ("state", from, to, retry)
# moves a whole state; ("list", files) cancels the named waiting files; ("retry", file)
# retries one file; ("write", rows) writes part of the oldest pending move.
_steps = st.one_of(
    st.tuples(
        st.just("run"),
        st.integers(1, FILES),
        st.sampled_from(["ok", "backoff", *_CODES]),
    ),
    st.tuples(
        st.just("state"),
        st.sampled_from(
            [
                (FileState.PENDING, FileState.CANCELLED, False),
                (FileState.BACKOFF, FileState.CANCELLED, False),
                (FileState.FAILED, FileState.PENDING, True),
                (FileState.CANCELLED, FileState.PENDING, True),
            ]
        ),
    ),
    st.tuples(st.just("list"), st.lists(st.integers(1, FILES), min_size=1, max_size=3)),
    st.tuples(st.just("retry"), st.integers(1, FILES)),
    st.tuples(st.just("write"), st.integers(1, 4)),
)


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "db.sqlite3"


def _apply(step: tuple[Any, ...], memory: MemoryStore, store: SQLiteStore, now: float) -> None:
    kind = step[0]
    if kind == "write":
        store.write_pending_moves(rows=step[1])
        return
    summary = store.batch_summary("b1")
    assert summary is not None
    if kind == "state":
        from_state, to_state, retry = step[1]
        cap = CAP if retry else None
        count = store.count_files("b1", from_state, max_manual_retries=cap)
        assert count == memory.count_files("b1", from_state, max_manual_retries=cap)
        book = BatchBook(summary)
        error = None if retry else FileError.of(ErrorCode.CANCELLED, now)
        book.set_state(
            from_state, to_state, now, "move", error=error, count=count, max_manual_retries=cap
        )
    else:
        ids = [f"f{n:05d}" for n in (step[1] if kind == "list" else [step[1]])]
        held = store.file_records("b1", ids)
        assert held == memory.file_records("b1", ids)
        book = BatchBook(summary, held.values())
        waiting = [i for i in dict.fromkeys(ids) if held[i].state is FileState.PENDING]
        record = held[ids[0]]
        if kind == "list":
            if not waiting:
                return
            error = FileError.of(ErrorCode.CANCELLED, now)
            book.set_files(waiting, FileState.CANCELLED, now, "some", error=error)
        elif kind == "retry":
            if record.state not in (FileState.FAILED, FileState.CANCELLED):
                return
            book.set_file(
                record.file_id,
                FileState.PENDING,
                now,
                manual_retries=record.manual_retries + 1,
                round_failures=0,
                error=None,
            )
        else:
            if record.state not in (FileState.PENDING, FileState.BACKOFF):
                return
            attempt = Attempt(len(record.attempts) + 1, now)
            attempts = (*record.attempts, attempt)
            book.set_file(record.file_id, FileState.RUNNING, now, attempts=attempts)
            outcome = step[2]
            if outcome == "ok":
                book.set_file(record.file_id, FileState.SUCCEEDED, now)
            elif outcome == "backoff":
                book.set_file(record.file_id, FileState.BACKOFF, now, next_attempt_at=now + 5)
            else:
                ended = dataclasses.replace(
                    attempt, ended_at=now, outcome=AttemptOutcome.FAILED, code=outcome
                )
                book.set_file(
                    record.file_id,
                    FileState.FAILED,
                    now,
                    attempts=(*record.attempts, ended),
                    error=FileError.of(outcome, now),
                )
    changes = book.take_changes()
    memory.commit(changes, {})
    store.commit(changes, {})


def _same_files(memory: MemoryStore, store: SQLiteStore) -> None:
    expected = memory.load("b1")
    got = store.load("b1")
    assert got is not None
    assert expected is not None
    assert got.files == expected.files
    assert store.batch_summary("b1").counts == expected.counts  # type: ignore[union-attr]
    for states in ({s} for s in FileState):
        for cap in (None, 0, 1, CAP, 5):
            (state,) = states
            assert store.count_files("b1", state, max_manual_retries=cap) == memory.count_files(
                "b1", state, max_manual_retries=cap
            ), (state, cap)
    for states in [*({s} for s in FileState), {FileState.PENDING, FileState.CANCELLED}]:
        wanted = [f for f in expected.files if f.state in states]
        got_files = []
        after = -1
        while True:
            page = store.file_page("b1", states=states, after_position=after, limit=2)
            assert page is not None
            got_files += [f for _, f in page.files]
            if len(page.files) < 2:
                break
            after = page.files[-1][0]
        assert got_files == wanted, states


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(_steps, min_size=1, max_size=14))
def test_pending_moves_read_as_if_every_row_had_moved(
    tmp_path: Path, steps: list[tuple[Any, ...]]
) -> None:
    path = tmp_path / f"{threading.get_ident()}-{len(list(tmp_path.iterdir()))}.sqlite3"
    memory = MemoryStore()
    store = SQLiteStore(path, write_moves=False)
    try:
        memory.create_batch(new_batch(files=FILES))
        store.create_batch(new_batch(files=FILES))
        for number, step in enumerate(steps):
            _apply(step, memory, store, 100.0 + number)
            _same_files(memory, store)
        while store.write_pending_moves(rows=3):
            pass
        _same_files(memory, store)
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT pending_moves FROM batches").fetchone() == ("[]",)
    finally:
        store.close()


def _cancel_every_waiting_file(store: SQLiteStore, now: float) -> int:
    summary = store.batch_summary("b1")
    assert summary is not None
    book = BatchBook(summary)
    error = FileError.of(ErrorCode.CANCELLED, now)
    count = summary.counts[FileState.PENDING]
    book.set_state(FileState.PENDING, FileState.CANCELLED, now, "stop", error=error, count=count)
    store.commit(book.take_changes(), {})
    return count


def _rows_in(path: Path, state: FileState) -> int:
    with closing(sqlite3.connect(path)) as db:
        (n,) = db.execute("SELECT COUNT(*) FROM files WHERE state = ?", (state.value,)).fetchone()
    return int(n)


def test_a_change_by_state_writes_no_file_row_until_the_rows_are_written(
    sqlite_path: Path,
) -> None:
    store = SQLiteStore(sqlite_path, write_moves=False)
    try:
        store.create_batch(new_batch(files=5000))
        assert _cancel_every_waiting_file(store, 101.0) == 5000
        # The commit recorded the move on the batch: every row still says PENDING...
        assert _rows_in(sqlite_path, FileState.PENDING) == 5000
        # ...and every read says CANCELLED.
        assert store.count_files("b1", FileState.CANCELLED) == 5000
        assert store.count_files("b1", FileState.PENDING) == 0
        page = store.file_page("b1", states={FileState.CANCELLED}, after_position=-1, limit=10)
        assert page is not None
        assert len(page.files) == 10
        errors = {f.error for _, f in page.files}
        assert {e.code for e in errors if e is not None} == {ErrorCode.CANCELLED}
        assert None not in errors
        # Written in steps of at most 1,000 rows, then forgotten.
        steps = 0
        while store.write_pending_moves():
            steps += 1
        assert steps == 6
        assert _rows_in(sqlite_path, FileState.CANCELLED) == 5000
    finally:
        store.close()


def test_more_pending_moves_than_allowed_write_the_oldest_first(sqlite_path: Path) -> None:
    store = SQLiteStore(sqlite_path, write_moves=False)
    try:
        store.create_batch(new_batch(files=20))
        for round_ in range(MAX_PENDING_MOVES + 1):
            now = 101.0 + 2 * round_
            _cancel_every_waiting_file(store, now)
            summary = store.batch_summary("b1")
            assert summary is not None
            book = BatchBook(summary)
            count = store.count_files("b1", FileState.CANCELLED, max_manual_retries=10)
            book.set_state(
                FileState.CANCELLED,
                FileState.PENDING,
                now + 1,
                "again",
                error=None,
                count=count,
                max_manual_retries=10,
            )
            store.commit(book.take_changes(), {})
        with closing(sqlite3.connect(sqlite_path)) as db:
            (pending,) = db.execute(
                "SELECT json_array_length(pending_moves) FROM batches"
            ).fetchone()
        assert pending == MAX_PENDING_MOVES
        # Five rounds of cancel and retry: five manual retries each, whatever is written.
        files = store.file_records("b1", [f"f{n:05d}" for n in range(1, 21)])
        assert {(f.state, f.manual_retries) for f in files.values()} == {
            (FileState.PENDING, MAX_PENDING_MOVES + 1)
        }
    finally:
        store.close()


def test_the_stores_own_thread_writes_pending_moves_and_stops_with_the_store(
    sqlite_path: Path,
) -> None:
    store = SQLiteStore(sqlite_path, write_moves=False)
    try:
        store.create_batch(new_batch(files=300))
        _cancel_every_waiting_file(store, 101.0)
    finally:
        store.close()
    assert "pdfbatch-moves" not in {t.name for t in threading.enumerate()}
    # Opened again with the writer on: it finds the move the last run left pending and
    # writes it into the rows.
    reopened = SQLiteStore(sqlite_path)
    try:
        writer = next(t for t in threading.enumerate() if t.name == "pdfbatch-moves")
        pause = threading.Event()
        for _ in range(400):  # at most 20 s
            if _rows_in(sqlite_path, FileState.CANCELLED) == 300:
                break
            pause.wait(0.05)
        assert reopened.count_files("b1", FileState.CANCELLED) == 300
    finally:
        reopened.close()
    assert not writer.is_alive()
    assert _rows_in(sqlite_path, FileState.CANCELLED) == 300
