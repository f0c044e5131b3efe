"""Batches of any size, read in pages: counts kept with the batch, files and batches
listed by keyset, the same over the memory store and the SQLite store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from actors.policy.book import BatchBook
from actors.policy.catalogue import ErrorCode
from actors.policy.document import DocumentDetails
from actors.policy.model import (
    BatchRecord,
    BatchState,
    BatchView,
    FileError,
    FileRecord,
    FileState,
)
from actors.policy.rules import BatchPolicy
from actors.storage.sqlite_schema import migrate
from actors.storage.sqlite_store import SQLiteStore
from actors.storage.store import Store
from tests.helpers.records import new_batch, started, succeed


def _batch(batch_id: str, owner: str, created_at: float, files: int = 1) -> BatchView:
    record = BatchRecord(
        batch_id, "n", BatchPolicy(), BatchState.PENDING, created_at, created_at, owner=owner
    )
    records = tuple(FileRecord(f"f{n:05d}", f"{n}.pdf", "ab" * 32, 1) for n in range(files))
    return BatchView(record, records)


def test_counts_are_kept_with_the_batch_as_its_files_change(store: Store) -> None:
    store.create_batch(new_batch(files=4))
    book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
    book.set_batch(BatchState.RUNNING, 101.0)
    store.commit(succeed(book, "f00001", 102.0), {})
    book.set_file("f00002", FileState.RUNNING, 103.0, attempts=started(book, "f00002", 103.0))
    error = FileError.of(ErrorCode.CANCELLED, 104.0)
    # A bulk change and a file's own change in one commit.
    book.set_files(["f00003", "f00004"], FileState.CANCELLED, 104.0, "gone", error=error)
    store.commit(book.take_changes(), {})

    summary = store.batch_summary("b1")

    assert summary is not None
    assert summary.counts == store.load("b1").counts  # type: ignore[union-attr]
    assert summary.counts[FileState.CANCELLED] == 2
    assert summary.counts[FileState.RUNNING] == 1
    assert summary.file_count == 4
    assert store.batch_summary("missing") is None


def test_files_are_paged_in_submission_order_with_their_attempts(store: Store) -> None:
    store.create_batch(new_batch(files=5))
    book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
    store.commit(succeed(book, "f00002", 101.0), {})
    store.commit(succeed(book, "f00004", 102.0), {})

    first = store.file_page("b1", states=set(), after_position=-1, limit=2)
    assert first is not None
    rest = store.file_page("b1", states=set(), after_position=first.files[-1][0], limit=10)
    done = store.file_page("b1", states={FileState.SUCCEEDED}, after_position=-1, limit=10)

    assert rest is not None
    assert done is not None
    listed = [r.file_id for _, r in (*first.files, *rest.files)]
    assert listed == ["f00001", "f00002", "f00003", "f00004", "f00005"]
    assert (first.total, done.total) == (5, 2)
    assert [r.file_id for _, r in done.files] == ["f00002", "f00004"]
    assert all(len(r.attempts) == 1 for _, r in done.files)
    assert done.sequence == store.load_batch("b1").sequence  # type: ignore[union-attr]
    assert store.file_page("missing", states=set(), after_position=-1, limit=1) is None


def test_a_files_position_is_where_the_next_page_after_it_starts(store: Store) -> None:
    store.create_batch(new_batch(files=5))
    store.create_batch(_batch("other", "alice", 1.0, files=2))

    position = store.file_position("b1", "f00003")
    assert position is not None
    after = store.file_page("b1", states=set(), after_position=position, limit=10)

    assert after is not None
    assert [r.file_id for _, r in after.files] == ["f00004", "f00005"]
    assert store.file_position("b1", "f00001") == 0
    assert store.file_position("b1", "f00009") is None
    assert store.file_position("missing", "f00001") is None
    assert store.file_position("other", "f00001") == 1


def test_batches_are_listed_newest_first_per_owner_and_state(store: Store) -> None:
    for n in range(6):
        store.create_batch(_batch(f"b{n}", "alice" if n % 2 else "bob", float(n), files=n))

    alices = store.batch_summaries(owner="alice", states=set(), before=None, limit=10)
    page = store.batch_summaries(owner=None, states=set(), before=(3.0, "b3"), limit=2)
    none = store.batch_summaries(
        owner="alice", states={BatchState.SUCCEEDED}, before=None, limit=10
    )

    assert [s.batch.batch_id for s in alices] == ["b5", "b3", "b1"]
    assert [s.file_count for s in alices] == [5, 3, 1]
    assert [s.batch.batch_id for s in page] == ["b2", "b1"]
    assert none == []


def test_a_version_4_database_gets_the_counts_of_its_batches(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path, isolation_level=None) as db:
        migrate(db, target=4)
        db.execute(
            "INSERT INTO batches (batch_id, name, policy, state, created_at, updated_at, "
            "sequence, reason, labels, owner, idempotency_key) "
            "VALUES ('b', 'n', ?, 'RUNNING', 0, 0, 0, '', '{}', 'alice', '')",
            (BatchPolicy().model_dump_json(),),
        )
        db.executemany(
            "INSERT INTO files VALUES ('b', ?, ?, 'a.pdf', 'd', 10, ?, 0, 0, NULL, NULL, 0)",
            [(0, "f1", "SUCCEEDED"), (1, "f2", "PENDING"), (2, "f3", "SUCCEEDED")],
        )
    db.close()

    store = SQLiteStore(path)
    try:
        summary = store.batch_summary("b")
        assert summary is not None
        assert summary.counts[FileState.SUCCEEDED] == 2
        assert summary.counts[FileState.PENDING] == 1
        assert summary.file_count == 3
    finally:
        store.close()


def test_batches_are_counted_and_found_by_state_without_a_scan_of_all(store: Store) -> None:
    for n, state in enumerate([BatchState.RUNNING, BatchState.SUCCEEDED, BatchState.FAILED]):
        view = _batch(f"b{n}", "alice", float(n))
        store.create_batch(view)
        book = BatchBook(view)
        book.set_batch(BatchState.RUNNING, 10.0 + n)
        if state is not BatchState.RUNNING:
            book.set_batch(state, 10.0 + n)
        store.commit(book.take_changes(), {})

    counts = store.batch_state_counts()
    ended = {BatchState.SUCCEEDED, BatchState.FAILED}

    assert counts[BatchState.RUNNING] == counts[BatchState.SUCCEEDED] == 1
    assert counts[BatchState.CANCELLED] == 0
    assert [b.batch_id for b in store.batches_in(ended)] == ["b1", "b2"]
    assert [b.batch_id for b in store.batches_in(ended, updated_by=11.0)] == ["b1"]
    assert store.batches_in(set()) == []


def test_a_version_5_database_reads_its_files_and_results_without_warnings(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path, isolation_level=None) as db:
        migrate(db, target=5)
        db.execute(
            "INSERT INTO batches (batch_id, name, policy, state, created_at, updated_at, "
            "sequence, reason, labels, owner, idempotency_key, counts) "
            "VALUES ('b', 'n', ?, 'SUCCEEDED', 0, 0, 0, '', '{}', 'alice', '', "
            "'{\"SUCCEEDED\": 1}')",
            (BatchPolicy().model_dump_json(),),
        )
        db.execute(
            "INSERT INTO files VALUES ('b', 0, 'f1', 'a.pdf', 'd', 10, 'SUCCEEDED', 0, 0, "
            "NULL, NULL, 0)"
        )
        db.execute(
            "INSERT INTO results (batch_id, file_id, page_count, encrypted, info, warnings, "
            "stored_bytes) VALUES ('b', 'f1', 1, 0, '{}', '[[\"CHARACTERS_REPLACED\", "
            '"text", 2]]\', 5)'
        )
    db.close()

    store = SQLiteStore(path)
    try:
        view = store.load("b")
        summary = store.batch_summary("b")
        result = store.result_summary("b", "f1")
    finally:
        store.close()
    assert view is not None
    assert summary is not None
    assert result is not None
    assert view.files[0].warnings == ()
    assert summary.files_with_warnings == 0
    assert result.details == DocumentDetails()
    assert [(w.code.value, w.count, w.total) for w in result.warnings] == [
        ("CHARACTERS_REPLACED", 2, 0)
    ]
