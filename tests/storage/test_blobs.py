"""The content-addressed blob store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from actors.storage.blobs import BlobStore


def test_same_bytes_are_stored_once(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    first = blobs.put(b"%PDF-1.7 hello")
    second = blobs.put(b"%PDF-1.7 hello")
    assert first == second == hashlib.sha256(b"%PDF-1.7 hello").hexdigest()
    assert blobs.path(first).read_bytes() == b"%PDF-1.7 hello"
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1


def test_digest_must_be_sha256_hex(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    with pytest.raises(ValueError, match="not a sha256 hex digest"):
        blobs.path("../../etc/passwd")


def test_sweep_removes_half_written_temp_files(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest = blobs.put(b"data")
    left_over = blobs.path(digest).parent / ".incoming-abc"
    left_over.write_bytes(b"half")
    assert blobs.sweep_temp() == 1
    assert not left_over.exists()
    assert blobs.exists(digest)


def test_blobs_committed_without_fsync_are_there_and_synced_together(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
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
    store = BlobStore(tmp_path)
    data = b"%PDF-1.7 whole"
    target = store.path(hashlib.sha256(data).hexdigest())
    target.parent.mkdir(parents=True)
    target.write_bytes(b"")  # what an unsynced blob may look like after a power cut
    with store.writer() as writer:
        writer.write(data)
        assert not writer.commit(durable=False), "the name was taken"
    assert target.read_bytes() == data
