"""Passwords of encrypted files, held in this process's memory only, while they may be used.

They are never logged, never stored on disk and never part of a record. A password is
dropped as soon as its file has ended for good (succeeded, failed with no attempt left,
cancelled), and with its batch: a retry of the file then needs it again, as it does
after a restart, when a file that needs one fails with ``PDF_ENCRYPTED`` until it is
retried with it. So the service holds the passwords of files still to run, not of every
file it ever ran (a hundred 1 KiB passwords, not a batch's lifetime of them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from actors.policy.model import FileRecord

__all__ = ["PasswordVault"]


class PasswordVault:
    """Passwords by (batch id, file id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[tuple[str, str], str] = {}

    def __repr__(self) -> str:
        return f"PasswordVault({len(self._secrets)} held)"

    def __len__(self) -> int:
        with self._lock:
            return len(self._secrets)

    def put(self, batch_id: str, file_id: str, password: str) -> None:
        """Hold ``password`` for the file."""
        with self._lock:
            self._secrets[(batch_id, file_id)] = password

    def get(self, batch_id: str, file_id: str) -> str | None:
        """The file's password, if one is held."""
        with self._lock:
            return self._secrets.get((batch_id, file_id))

    def forget_ended(self, batch_id: str, files: Iterable[FileRecord]) -> None:
        """Drop the passwords of those of ``files`` that have ended for good.

        Called with the records a batch just stored: a file stored in a terminal state
        runs again only if someone retries it, and a retry brings its password again.
        """
        ended = [f.file_id for f in files if f.state.terminal]
        if not ended:
            return
        with self._lock:
            for file_id in ended:
                self._secrets.pop((batch_id, file_id), None)

    def forget_batch(self, batch_id: str) -> None:
        """Drop every password of the batch."""
        with self._lock:
            for key in [k for k in self._secrets if k[0] == batch_id]:
                del self._secrets[key]
