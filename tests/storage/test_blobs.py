"""The content-addressed blob store."""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from actors.storage.blobs import BlobStore, BlobWriter
from actors.storage.inline_blobs import DATABASE_NAME, RECENT_BYTES, InlineBlobWriter
from tests.helpers.blob_checks import stored_blobs


def test_same_bytes_are_stored_once(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=0)
    first = blobs.put(b"%PDF-1.7 hello")
    second = blobs.put(b"%PDF-1.7 hello")
    assert first == second == hashlib.sha256(b"%PDF-1.7 hello").hexdigest()
    assert blobs.path(first).read_bytes() == b"%PDF-1.7 hello"
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1


def test_digest_must_be_sha256_hex(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=0)
    with pytest.raises(ValueError, match="not a sha256 hex digest"):
        blobs.path("../../etc/passwd")


def test_sweep_removes_half_written_temp_files(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=0)
    digest = blobs.put(b"data")
    left_over = blobs.path(digest).parent / ".incoming-abc"
    left_over.write_bytes(b"half")
    assert blobs.sweep_temp() == 1
    assert not left_over.exists()
    assert blobs.exists(digest)


def test_blobs_committed_without_fsync_are_there_and_synced_together(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, inline_max_bytes=0)
    digests = []
    for n in range(20):
        with store.writer() as writer:
            writer.write(b"%d" % n)
            assert writer.commit(durable=False)
            digests.append(writer.finish())
    store.sync()
    assert [store.path(d).read_bytes() for d in digests] == [b"%d" % n for n in range(20)]
    assert list((tmp_path / "incoming").iterdir()) == []


def test_a_blob_cut_short_by_a_power_cut_is_replaced_by_the_next_upload(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, inline_max_bytes=0)
    data = b"%PDF-1.7 whole"
    target = store.path(hashlib.sha256(data).hexdigest())
    target.parent.mkdir(parents=True)
    target.write_bytes(b"")  # what an unsynced blob may look like after a power cut
    with store.writer() as writer:
        writer.write(data)
        assert not writer.commit(durable=False), "the name was taken"
    assert target.read_bytes() == data


# Small blobs, rows of the blobs' database ---------------------------------------------


def _inline_rows(root: Path) -> list[Path]:
    return [p for p in stored_blobs(root) if p.parent.name == "rows"]


def test_a_small_blob_is_a_row_invisible_until_committed_and_stored_once(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=64)
    data = b"%PDF-1.7 small"
    with blobs.writer(len(data)) as writer:
        writer.write(data[:5])
        writer.write(data[5:])
        digest = writer.finish(durable=False)
        assert digest == hashlib.sha256(data).hexdigest()
        assert not blobs.exists(digest)
        assert stored_blobs(tmp_path) == [], "held in memory until committed"
        assert writer.commit(durable=False) is True
    with blobs.writer(len(data)) as again:
        again.write(data)
        assert again.commit() is False, "the same bytes are stored once"
    blobs.sync()

    assert blobs.exists(digest)
    assert blobs.content(digest) == data
    assert list(blobs.digests()) == [digest]
    assert [p.name for p in stored_blobs(tmp_path)] == [digest], "a row, no file, no temp"
    blobs.close()


def test_a_small_blob_abandoned_or_cut_by_a_crash_leaves_no_row(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=64)
    blobs.put(b"kept")  # the database exists
    with blobs.writer(4) as unfinished:
        unfinished.write(b"half")
    with blobs.writer(4) as finished:
        finished.write(b"full")
        finished.finish()
    crashed = blobs.writer(4)
    crashed.write(b"lost")
    crashed.finish()
    blobs.close()  # the service dies holding it
    assert [p.name for p in _inline_rows(tmp_path)] == [hashlib.sha256(b"kept").hexdigest()]
    # A version before wrote a blob being received as a row of `incoming` first.
    with closing(sqlite3.connect(tmp_path / DATABASE_NAME)) as db, db:
        db.execute("INSERT INTO incoming (content) VALUES (?)", (b"older",))

    restarted = BlobStore(tmp_path, inline_max_bytes=64)
    assert restarted.sweep_temp() == 1
    assert [p.name for p in stored_blobs(tmp_path)] == [hashlib.sha256(b"kept").hexdigest()]
    restarted.close()


def test_a_blob_just_placed_is_read_from_memory_once_and_never_after_its_delete(
    tmp_path: Path,
) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=64)
    first, second, third = (_writing(blobs, b"%PDF-" + bytes([n]) * 8) for n in range(3))
    blobs.commit_all([first, second, third])
    on_disk = tmp_path / DATABASE_NAME
    # Rows changed behind the store's back show which reads come from memory.
    with closing(sqlite3.connect(on_disk)) as db, db:
        db.execute("UPDATE blobs SET content = X'00'")

    assert blobs.content(first.finish()) == b"%PDF-" + bytes([0]) * 8, "remembered"
    assert blobs.content(first.finish()) == b"\x00", "read once from memory, then the row"
    blobs.delete(second.finish())
    blobs.delete_many([third.finish()])
    assert blobs.content(second.finish()) is None
    assert blobs.content(third.finish()) is None
    blobs.close()


def test_blobs_remembered_are_bounded_in_bytes_oldest_forgotten_first(tmp_path: Path) -> None:
    size = RECENT_BYTES // 4
    blobs = BlobStore(tmp_path, inline_max_bytes=size)
    writers = [_writing(blobs, bytes([n]) * size) for n in range(5)]
    blobs.commit_all(writers)
    with closing(sqlite3.connect(tmp_path / DATABASE_NAME)) as db, db:
        db.execute("UPDATE blobs SET content = X'00'")

    read = [blobs.content(writer.finish()) for writer in writers]

    assert [data == bytes([n]) * size for n, data in enumerate(read)] == [
        False,
        True,
        True,
        True,
        True,
    ]
    blobs.close()


def test_a_small_blob_takes_no_more_bytes_than_announced(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=64)
    with blobs.writer(4) as writer, pytest.raises(ValueError, match="at most 4 bytes"):
        writer.write(b"12345")
    big = blobs.writer(65)
    assert isinstance(big, BlobWriter), "over the threshold: a file"
    big.abort()
    blobs.close()


def test_a_deleted_small_blob_leaves_no_trace_of_its_bytes_on_disk(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=1024)
    secret = b"%PDF-1.7 " + b"confidential-" * 20
    digest = blobs.put(secret)
    kept = blobs.put(b"%PDF-1.7 another")
    assert any(secret in p.read_bytes() for p in tmp_path.glob("inline.sqlite*"))

    blobs.delete(digest)
    blobs.scrub()

    assert not blobs.exists(digest)
    assert blobs.content(kept) == b"%PDF-1.7 another"
    assert not any(b"confidential-" in p.read_bytes() for p in tmp_path.glob("inline.sqlite*"))
    blobs.close()


def test_bytes_stored_one_way_are_not_stored_again_the_other(tmp_path: Path) -> None:
    as_file = BlobStore(tmp_path, inline_max_bytes=0)
    file_digest = as_file.put(b"%PDF- stored as a file")
    as_file.close()
    as_row = BlobStore(tmp_path, inline_max_bytes=1024)
    row_digest = as_row.put(b"%PDF- stored as a row")
    as_row.close()
    reopened = BlobStore(tmp_path, inline_max_bytes=1024)
    with reopened.writer(22) as small:
        small.write(b"%PDF- stored as a file")
        assert small.commit() is False
    reopened.close()
    files_only = BlobStore(tmp_path, inline_max_bytes=0)
    with files_only.writer() as big:
        big.write(b"%PDF- stored as a row")
        assert big.commit() is False

    assert sorted(files_only.digests()) == sorted([file_digest, row_digest])
    assert files_only.content(row_digest) == b"%PDF- stored as a row"
    assert files_only.content(file_digest) is None
    files_only.delete(row_digest)
    files_only.delete(file_digest)
    assert stored_blobs(tmp_path) == []
    files_only.close()


def test_many_blobs_of_both_kinds_are_deleted_together(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=16)
    small, big, kept = blobs.put(b"%PDF-small"), blobs.put(b"%PDF-" + b"big" * 10), blobs.put(b"k")
    missing = "0" * 64

    blobs.delete_many([small, big, missing])

    assert [blobs.exists(d) for d in (small, big, kept)] == [False, False, True]
    assert stored_blobs(tmp_path) == [tmp_path / "rows" / kept]
    with pytest.raises(ValueError, match="not a sha256 hex digest"):
        blobs.delete_many(["../../etc/passwd"])
    blobs.close()


def _writing(blobs: BlobStore, data: bytes) -> BlobWriter | InlineBlobWriter:
    writer = blobs.writer(len(data))
    writer.write(data)
    return writer


def test_a_group_of_blobs_of_both_kinds_is_committed_at_once(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=16)
    stored = blobs.put(b"%PDF-stored")
    contents = [b"%PDF-a", b"%PDF-" + b"big" * 10, b"%PDF-stored", b"%PDF-a", b"%PDF-b"]
    writers = [_writing(blobs, data) for data in contents]

    created = blobs.commit_all(writers)
    blobs.sync()

    # The second %PDF-a finds the first placed in the same call.
    assert created == [True, True, False, False, True]
    digests = {hashlib.sha256(data).hexdigest() for data in contents}
    assert sorted(blobs.digests()) == sorted(digests)
    assert {blobs.content(d) for d in digests} - {None} == {b"%PDF-a", b"%PDF-b", b"%PDF-stored"}
    assert stored in digests
    assert not [p for p in stored_blobs(tmp_path) if p.name.startswith(".incoming")]
    with pytest.raises(ValueError, match="already committed"):
        blobs.commit_all(writers[:1])
    blobs.close()


def test_a_group_that_cannot_be_committed_leaves_none_of_its_new_blobs(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=16)
    big = _writing(blobs, b"%PDF-" + b"big" * 10)
    small = _writing(blobs, b"%PDF-small")
    aborted = _writing(blobs, b"%PDF-gone")
    aborted.abort()

    with pytest.raises(ValueError, match="aborted"):
        blobs.commit_all([big, small, aborted])

    assert list(blobs.digests()) == []
    small.abort()
    assert stored_blobs(tmp_path) == []
    blobs.close()
