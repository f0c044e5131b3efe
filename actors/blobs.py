"""Uploaded bytes, stored once per content under their sha256.

A blob is written to a temporary name in the same directory, fsynced, then renamed, so
a reader never sees half a file and a crash leaves at most a temp file to sweep.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

__all__ = ["BlobStore"]

_TEMP_PREFIX = ".incoming-"


class BlobStore:
    """Content-addressed files under ``root``."""

    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where the blob with ``digest`` lies (whether or not it exists)."""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError("not a sha256 hex digest")
        return self._root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its digest; storing the same bytes twice is free."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return digest

    def exists(self, digest: str) -> bool:
        """Whether the blob is stored."""
        return self.path(digest).exists()

    def delete(self, digest: str) -> None:
        """Remove the blob, if present."""
        self.path(digest).unlink(missing_ok=True)

    def sweep_temp(self) -> int:
        """Remove temp files a crash left behind; returns how many."""
        removed = 0
        for temp in self._root.glob(f"*/{_TEMP_PREFIX}*"):
            temp.unlink(missing_ok=True)
            removed += 1
        return removed
