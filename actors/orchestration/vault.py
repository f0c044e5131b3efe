"""Passwords of encrypted files, held in this process's memory only.

They are never logged, never stored on disk and never part of a record; after a restart
a file that needs one fails with ``PDF_ENCRYPTED`` until it is retried with it.
"""

from __future__ import annotations

import threading

__all__ = ["PasswordVault"]


class PasswordVault:
    """Passwords by (batch id, file id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[tuple[str, str], str] = {}

    def __repr__(self) -> str:
        return f"PasswordVault({len(self._secrets)} held)"

    def put(self, batch_id: str, file_id: str, password: str) -> None:
        """Hold ``password`` for the file."""
        with self._lock:
            self._secrets[(batch_id, file_id)] = password

    def get(self, batch_id: str, file_id: str) -> str | None:
        """The file's password, if one is held."""
        with self._lock:
            return self._secrets.get((batch_id, file_id))

    def forget_batch(self, batch_id: str) -> None:
        """Drop every password of the batch."""
        with self._lock:
            for key in [k for k in self._secrets if k[0] == batch_id]:
                del self._secrets[key]
