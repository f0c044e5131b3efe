"""The content-addressed blob store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from actors.blobs import BlobStore


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
