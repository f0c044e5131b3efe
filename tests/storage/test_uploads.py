"""Uploads stored as they arrive: a batch nobody sees until its end, then visible whole in
one transaction, or dropped a page at a time with the blobs only it referred to. The
same over the memory store and the SQLite store."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from actors.policy.book import BatchBook
from actors.policy.model import BatchRecord, BatchState, FileRecord, FileState
from actors.policy.rules import BatchPolicy
from actors.storage import codec
from actors.storage.sqlite_schema import migrate
from actors.storage.sqlite_store import SQLiteStore
from actors.storage.store import Store
from tests.helpers.records import DIGEST, OTHER, new_batch

THIRD = "ef" * 32


def _uploading(batch_id: str = "up", key: str = "", owner: str = "alice") -> BatchRecord:
    return BatchRecord(
        batch_id,
        "upload",
        BatchPolicy(),
        BatchState.PENDING,
        50.0,
        50.0,
        owner=owner,
        idempotency_key=key,
    )


def _files(first: int, *blobs: str) -> list[FileRecord]:
    return [
        FileRecord(f"f{n:05d}", f"{n}.pdf", blob, 10)
        for n, blob in enumerate(blobs, start=first + 1)
    ]


def test_an_upload_in_progress_is_seen_by_no_reader_but_holds_its_blobs(store: Store) -> None:
    store.begin_upload(_uploading(key="k"))
    store.add_upload_files("up", 0, _files(0, DIGEST, OTHER))
    store.add_upload_files("up", 2, _files(2, DIGEST))

    assert store.load("up") is None
    assert store.load_batch("up") is None
    assert store.batch_summary("up") is None
    assert store.file_page("up", states=(), after_position=-1, limit=10) is None
    assert store.oldest_sequence("up") is None
    assert store.list_batches() == []
    assert store.batches_in(set(BatchState)) == []
    assert store.batch_summaries(owner=None, states=(), before=None, limit=10) == []
    assert set(store.batch_state_counts().values()) == {0}
    assert store.tenant_usage("alice") == (0, 0), "its bytes are the upload's reservation"
    assert store.find_by_idempotency_key("alice", "k") is None
    assert store.batch_contents("up") is None
    assert store.uploads_in_progress() == ["up"]
    assert store.blob_in_use(DIGEST)
    assert store.blob_in_use(OTHER)
    assert not store.blob_in_use(THIRD)


def test_the_supervisor_of_an_upload_reads_it_and_keeps_its_counts(store: Store) -> None:
    store.begin_upload(_uploading())
    store.add_upload_files("up", 0, _files(0, DIGEST, OTHER))

    summary = store.batch_summary("up", uploading=True)
    assert summary is not None
    assert summary.uploading
    page = store.file_page("up", states=(), after_position=-1, limit=10, uploading=True)
    assert page is not None
    assert [f.file_id for _, f in page.files] == ["f00001", "f00002"]
    book = BatchBook(summary)
    book.files_arrived(2)
    store.commit(book.take_changes(), {})
    counted = store.batch_summary("up", uploading=True)
    assert counted is not None
    assert counted.counts[FileState.PENDING] == 2
    assert store.batch_summary("up") is None, "still hidden from every other reader"


def test_the_end_of_an_upload_shows_its_batch_whole_with_its_key(store: Store) -> None:
    store.begin_upload(_uploading(key="k"))
    store.add_upload_files("up", 0, _files(0, DIGEST, OTHER, DIGEST))
    # Its supervisor counts the files as they arrive.
    arriving = store.batch_summary("up", uploading=True)
    assert arriving is not None
    book = BatchBook(arriving)
    book.files_arrived(3)
    store.commit(book.take_changes(), {})

    assert store.end_upload("up", contents="c" * 64, at=70.0) == "up"

    summary = store.batch_summary("up")
    assert summary is not None
    assert not summary.uploading
    assert summary.batch.created_at == 70.0
    assert summary.counts[FileState.PENDING] == 3
    assert summary.file_count == 3
    page = store.file_page("up", states={FileState.PENDING}, after_position=-1, limit=10)
    assert page is not None
    assert [(p, f.file_id, f.blob) for p, f in page.files] == [
        (0, "f00001", DIGEST),
        (1, "f00002", OTHER),
        (2, "f00003", DIGEST),
    ]
    assert store.find_by_idempotency_key("alice", "k") == "up"
    assert store.batch_contents("up") == "c" * 64
    assert store.uploads_in_progress() == []
    assert store.tenant_usage("alice") == (1, 30)
    assert store.batches_in({BatchState.PENDING}) == [summary.batch]


def test_an_upload_whose_key_went_to_another_batch_first_changes_nothing(store: Store) -> None:
    store.create_batch(new_batch("first", files=1, key="k"))
    store.begin_upload(_uploading(key="k"))
    store.add_upload_files("up", 0, _files(0, DIGEST))

    assert store.end_upload("up", contents="c" * 64, at=70.0) == "first"

    assert store.load_batch("up") is None
    assert store.uploads_in_progress() == ["up"]
    assert store.find_by_idempotency_key("alice", "k") == "first"
    assert store.batch_contents("first") is None, "stored by create_batch: no digest"
    # Another owner's key of the same name is another key.
    store.begin_upload(_uploading("bobs", key="k", owner="bob"))
    store.add_upload_files("bobs", 0, _files(0, OTHER))
    assert store.end_upload("bobs", contents="d" * 64, at=71.0) == "bobs"


def test_a_dropped_upload_goes_a_page_at_a_time_releasing_only_its_own_blobs(
    store: Store,
) -> None:
    store.create_batch(new_batch("kept", files=1, blob=OTHER))
    store.begin_upload(_uploading())
    # Positions 0..4: DIGEST, OTHER (kept's too), THIRD, DIGEST, THIRD.
    store.add_upload_files("up", 0, _files(0, DIGEST, OTHER, THIRD))
    store.add_upload_files("up", 3, _files(3, DIGEST, THIRD))

    # The last two go first; both their blobs are still referred to by earlier files.
    assert store.drop_upload("up", limit=2) == []
    assert store.drop_upload("up", limit=2) == [THIRD]
    assert store.drop_upload("up", limit=2) == [DIGEST]
    assert store.uploads_in_progress() == ["up"]
    assert store.drop_upload("up", limit=2) is None

    assert store.uploads_in_progress() == []
    assert store.drop_upload("up", limit=2) is None
    assert not store.blob_in_use(DIGEST)
    assert store.blob_in_use(OTHER)
    assert [b.batch_id for b in store.list_batches()] == ["kept"]
    # The id is free again: nothing of the upload is left.
    store.begin_upload(_uploading())


def test_an_upload_takes_its_files_in_order_and_refuses_unknown_batches(store: Store) -> None:
    with pytest.raises(KeyError):
        store.add_upload_files("missing", 0, _files(0, DIGEST))
    with pytest.raises(KeyError):
        store.end_upload("missing", contents="c" * 64, at=1.0)
    store.create_batch(new_batch("visible", files=1))
    with pytest.raises(KeyError):
        store.add_upload_files("visible", 1, _files(1, DIGEST))
    assert store.drop_upload("visible", limit=10) is None
    assert store.load_batch("visible") is not None, "a visible batch is never dropped"
    with pytest.raises(ValueError, match="exists"):
        store.begin_upload(_uploading("visible"))
    store.begin_upload(_uploading())
    with pytest.raises(ValueError, match="exists"):
        store.begin_upload(_uploading())


def test_a_version_7_database_keeps_its_batches_visible(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    record = new_batch(files=1).batch
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        migrate(db, 7)
        columns = codec.BATCH_COLUMNS
        db.execute(
            f"INSERT INTO batches ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            codec.batch_to_row(record),
        )

    store = SQLiteStore(path)
    try:
        assert store.load_batch("b1") == record
        assert store.batches_in({BatchState.PENDING}) == [record]
        assert store.uploads_in_progress() == []
        assert store.batch_contents("b1") is None
    finally:
        store.close()
