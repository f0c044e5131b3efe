"""What a supervisor that holds only its working set needs of a store: files by id,
counts of a state (of the files a retry may move), and whole states moved by one
change; the same over the memory store and the SQLite store."""

from __future__ import annotations

import dataclasses
import sqlite3
from contextlib import closing
from pathlib import Path

from actors.policy.book import BatchBook
from actors.policy.catalogue import ErrorCode
from actors.policy.model import (
    Attempt,
    AttemptOutcome,
    BatchState,
    BatchView,
    FileError,
    FileState,
)
from actors.policy.rules import MAX_WRONG_PASSWORDS
from actors.storage.moves import state_conditions
from actors.storage.sqlite_files import attempts_of, page_query
from actors.storage.sqlite_store import SQLiteStore
from actors.storage.store import Store
from tests.helpers.records import new_batch, started


def _fail(book: BatchBook, file_id: str, now: float, code: ErrorCode, times: int = 1) -> None:
    """Run ``file_id`` to FAILED with ``code``, ``times`` attempts (retried between)."""
    for attempt in range(times):
        if attempt:
            book.set_file(file_id, FileState.PENDING, now)
        attempts = started(book, file_id, now)
        book.set_file(file_id, FileState.RUNNING, now, attempts=attempts)
        last = Attempt(attempts[-1].number, now, now + 1, outcome=AttemptOutcome.FAILED, code=code)
        book.set_file(
            file_id,
            FileState.FAILED,
            now + 1,
            attempts=(*attempts[:-1], last),
            error=FileError.of(code, now + 1),
        )


def test_files_are_read_by_id_with_their_attempts(store: Store) -> None:
    store.create_batch(new_batch(files=3))
    book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
    _fail(book, "f00002", 101.0, ErrorCode.PDF_MALFORMED)
    store.commit(book.take_changes(), {})

    found = store.file_records("b1", ["f00002", "f00003", "nope"])

    assert set(found) == {"f00002", "f00003"}
    assert found["f00002"] == book.file("f00002")
    assert found["f00002"].attempts[0].code is ErrorCode.PDF_MALFORMED
    assert store.file_records("missing", ["f00001"]) == {}


def test_a_retry_counts_only_files_with_retries_and_password_guesses_left(store: Store) -> None:
    store.create_batch(new_batch(files=4))
    book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
    _fail(book, "f00001", 101.0, ErrorCode.PDF_MALFORMED)
    _fail(book, "f00002", 101.0, ErrorCode.PDF_WRONG_PASSWORD, times=MAX_WRONG_PASSWORDS)
    _fail(book, "f00003", 101.0, ErrorCode.PDF_WRONG_PASSWORD, times=MAX_WRONG_PASSWORDS - 1)
    store.commit(book.take_changes(), {})

    assert store.count_files("b1", FileState.FAILED) == 3
    assert store.count_files("b1", FileState.PENDING) == 1
    # f00002 used up its password guesses.
    assert store.count_files("b1", FileState.FAILED, max_manual_retries=3) == 2
    # No file has had a manual retry yet: a limit of 1 leaves both, of 0 none.
    assert store.count_files("b1", FileState.FAILED, max_manual_retries=1) == 2
    assert store.count_files("b1", FileState.FAILED, max_manual_retries=0) == 0
    assert store.count_files("missing", FileState.FAILED) == 0


def test_whole_states_move_in_one_change_and_the_counts_follow(store: Store) -> None:
    store.create_batch(new_batch(files=6))
    book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
    book.set_batch(BatchState.RUNNING, 100.5)
    _fail(book, "f00001", 101.0, ErrorCode.PDF_MALFORMED)
    _fail(book, "f00002", 101.0, ErrorCode.PDF_WRONG_PASSWORD, times=MAX_WRONG_PASSWORDS)
    store.commit(book.take_changes(), {})
    # The supervisor holds only what it works on: here nothing.
    summary = store.batch_summary("b1")
    assert summary is not None
    partial = BatchBook(summary)
    error = FileError.of(ErrorCode.CANCELLED, 102.0)
    partial.set_batch(BatchState.CANCELLING, 102.0, "stop")
    partial.set_state(FileState.PENDING, FileState.CANCELLED, 102.0, "stop", error=error, count=4)
    partial.set_batch(BatchState.CANCELLED, 102.0, "stop")
    store.commit(partial.take_changes(), {})

    stored = store.load("b1")
    assert stored is not None
    assert [f.state for f in stored.files] == [FileState.FAILED] * 2 + [FileState.CANCELLED] * 4
    assert {f.error for f in stored.files[2:]} == {error}
    assert store.batch_summary("b1").counts == stored.counts  # type: ignore[union-attr]
    bulk = store.events_after("b1", 0)[-2].bulk
    assert bulk is not None
    assert (bulk.file_ids, bulk.from_state, bulk.count) == ((), FileState.PENDING, 4)

    # A retry of every file: the one with password guesses left, and the cancelled ones.
    again = BatchBook(store.batch_summary("b1"))  # type: ignore[arg-type]
    for state in (FileState.FAILED, FileState.CANCELLED):
        movable = store.count_files("b1", state, max_manual_retries=3)
        again.set_state(
            state,
            FileState.PENDING,
            103.0,
            "retry",
            error=None,
            count=movable,
            max_manual_retries=3,
        )
    store.commit(again.take_changes(), {})

    retried = store.load("b1")
    assert retried is not None
    assert [f.state for f in retried.files] == [FileState.PENDING, FileState.FAILED] + [
        FileState.PENDING
    ] * 4
    assert [f.manual_retries for f in retried.files] == [1, 0, 1, 1, 1, 1]
    assert retried.files[0].error is None
    assert retried.files[1].error is not None
    assert store.batch_summary("b1").counts == retried.counts  # type: ignore[union-attr]


def test_a_held_files_own_record_in_the_same_commit_outlasts_the_change_by_state(
    store: Store,
) -> None:
    store.create_batch(new_batch(files=3))
    summary = store.batch_summary("b1")
    assert summary is not None
    book = BatchBook(summary, [store.file_records("b1", ["f00001"])["f00001"]])
    book.set_batch(BatchState.RUNNING, 101.0)
    # f00001 starts; its row still says PENDING until this commit.
    book.set_file("f00001", FileState.RUNNING, 101.0, attempts=started(book, "f00001", 101.0))
    book.set_batch(BatchState.CANCELLING, 102.0, "stop")
    error = FileError.of(ErrorCode.CANCELLED, 102.0)
    book.set_state(FileState.PENDING, FileState.CANCELLED, 102.0, "stop", error=error, count=2)
    store.commit(book.take_changes(), {})

    stored = store.load("b1")
    assert stored is not None
    assert [f.state for f in stored.files] == [
        FileState.RUNNING,
        FileState.CANCELLED,
        FileState.CANCELLED,
    ]
    assert stored.files[0].attempts == book.file("f00001").attempts
    assert store.batch_summary("b1").counts == stored.counts  # type: ignore[union-attr]


def _mixed(files: int) -> BatchView:
    """A batch whose files are in states spread over its positions."""
    view = new_batch(files=files)
    states = {0: FileState.RUNNING, 3: FileState.BACKOFF}
    records = tuple(
        dataclasses.replace(f, state=states.get(n % 7, FileState.PENDING))
        for n, f in enumerate(view.files)
    )
    return dataclasses.replace(view, files=records)


def test_a_page_of_several_states_merges_them_in_submission_order(store: Store) -> None:
    view = _mixed(200)
    store.create_batch(view)
    wanted = {FileState.RUNNING, FileState.BACKOFF}
    expected = [f.file_id for f in view.files if f.state in wanted]
    got: list[str] = []
    after = -1
    while True:
        page = store.file_page("b1", states=wanted, after_position=after, limit=9)
        assert page is not None
        got += [f.file_id for _, f in page.files]
        if len(page.files) < 9:
            break
        after = page.files[-1][0]
    assert got == expected


def test_a_page_of_several_states_reads_each_states_index_not_the_batch(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    try:
        store.create_batch(_mixed(50))
        conditions = state_conditions((), frozenset({FileState.RUNNING, FileState.BACKOFF}))
        query, params = page_query("b1", conditions, after_position=-1, limit=10)
        with closing(sqlite3.connect(tmp_path / "db.sqlite3")) as db:
            plan = " ".join(row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {query}", params))
    finally:
        store.close()
    # A walk of files_by_position would read every later file of the batch to find a few.
    assert "files_by_state" in plan
    assert "files_by_position" not in plan


def test_a_pages_attempts_are_read_by_its_files_keys_not_from_the_batchs_attempts(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    try:
        store.create_batch(_mixed(50))
        with closing(sqlite3.connect(tmp_path / "db.sqlite3")) as db:
            plan = [
                row[-1]
                for row in db.execute(
                    f"EXPLAIN QUERY PLAN {attempts_of(3)}", ("b1", "f00001", "f00002", "f00003")
                )
            ]
    finally:
        store.close()
    # One lookup per file in the attempts' key. A join on the page's positions read
    # every attempt of the batch for each page.
    assert plan == ["SEARCH attempts USING PRIMARY KEY (batch_id=? AND file_id=?)"]
