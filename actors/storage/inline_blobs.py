"""Small blobs as rows of a SQLite file, instead of a file each.

Creating a file costs about 0.4 ms on this disk, more than reading and hashing a
one-page PDF; a row of a SQLite file in write-ahead-log mode costs a few tens of
microseconds. So the blob store keeps uploads of at most ``inline_max_bytes`` here, in
``inline.sqlite`` beside the blob files, and the rest as files.

A blob being received is held in memory by its :class:`InlineBlobWriter`, which nothing
refers to; committing it inserts it into ``blobs`` under its digest (kept if the digest
is there already), and a group of writers is committed in one transaction
(:meth:`InlineBlobs.place_all`); an abort drops the bytes; a crash loses nothing that
was referred to. (Writers once wrote their bytes to a table ``incoming`` first: a
statement and a commit more per small file. A database from then may still hold such
rows, which :meth:`InlineBlobs.sweep_incoming` removes at start.) Commits use
``synchronous=NORMAL``, so they survive a killed process; the upload makes them survive
a power cut with the file-system flush it does anyway before its batch is stored
(:meth:`~actors.storage.blobs.BlobStore.sync`), as for blob files, so that a whole
upload costs one flush. ``secure_delete`` overwrites a deleted blob's pages, and
:meth:`InlineBlobs.scrub` checkpoints and truncates the log, which still holds them.

The blobs placed most recently are also kept in memory, up to :data:`RECENT_BYTES`, until
read once: a batch starts its files as their group is stored, and the read of each
file's bytes for its attempt was, inside the service, a few times what it costs alone
(the connection's lock is held by the upload's transactions meanwhile).

One connection, used under a lock by every thread: each use is a single short
statement or transaction, so a pool of connections would buy nothing here. It opens
when first needed, and not at all for a store that never held a small blob.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["DATABASE_NAME", "RECENT_BYTES", "InlineBlobWriter", "InlineBlobs"]

DATABASE_NAME = "inline.sqlite"
_FILE_MODE = 0o600
# The bytes of blobs placed and not read yet that are kept in memory; the oldest go first.
RECENT_BYTES = 8 * 1024 * 1024
# Digests looked up in one statement (SQLite allows 32,766 parameters).
_LOOKUP = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (digest TEXT PRIMARY KEY, content BLOB NOT NULL);
-- Written by older versions only; swept at start.
CREATE TABLE IF NOT EXISTS incoming (id INTEGER PRIMARY KEY, content BLOB NOT NULL);
"""


class InlineBlobs:
    """The small blobs of a blob store: rows of ``directory/inline.sqlite``.

    Raises (every method):
        OSError: The database could not be opened, read or written (its
            ``sqlite3.Error`` is the cause).
    """

    def __init__(self, directory: Path) -> None:
        self._path = directory / DATABASE_NAME
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._closed = False
        # Placed and not read yet, oldest first; a lock of its own, so a read does not
        # wait for the upload's transaction.
        self._recent: dict[str, bytes] = {}
        self._recent_bytes = 0
        self._recent_lock = threading.Lock()

    def _connect(self, *, create: bool) -> sqlite3.Connection | None:
        """The connection; ``None`` if the file does not exist and ``create`` is false."""
        if self._db is not None:
            return self._db
        if self._closed:
            raise OSError("the inline blob store is closed")
        if not create and not self._path.exists():
            return None
        # Created owner-only before SQLite opens it: its log and shared-memory files
        # take the database file's mode.
        os.close(os.open(self._path, os.O_RDWR | os.O_CREAT, _FILE_MODE))
        try:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise OSError(f"cannot open {self._path}: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA secure_delete = ON")
            db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            db.close()
            raise OSError(f"cannot open {self._path}: {exc}") from exc
        self._db = db
        return db

    def content(self, digest: str) -> bytes | None:
        """The blob's bytes, or ``None`` if it is not stored here."""
        with self._recent_lock:
            data = self._recent.pop(digest, None)
            if data is not None:
                self._recent_bytes -= len(data)
                return data
        with self._lock, _translated():
            db = self._connect(create=False)
            if db is None:
                return None
            row = db.execute("SELECT content FROM blobs WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else bytes(row[0])

    def exists(self, digest: str) -> bool:
        """Whether the blob is stored here."""
        with self._lock, _translated():
            db = self._connect(create=False)
            if db is None:
                return False
            row = db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone()
        return row is not None

    def put(self, digest: str, data: bytes) -> bool:
        """Store ``data`` under ``digest``; whether it was not stored already."""
        with self._lock, _translated():
            db = self._connect(create=True)
            assert db is not None
            added = db.execute(
                "INSERT OR IGNORE INTO blobs (digest, content) VALUES (?, ?)", (digest, data)
            )
            return added.rowcount == 1

    def delete(self, digest: str) -> bool:
        """Remove the blob, if stored here; whether it was."""
        with self._lock, _translated():
            # Under the lock a placing holds too, so that its bytes are not remembered
            # after they were forgotten here.
            self._forget((digest,))
            db = self._connect(create=False)
            if db is None:
                return False
            return db.execute("DELETE FROM blobs WHERE digest = ?", (digest,)).rowcount == 1

    def delete_many(self, digests: Iterable[str]) -> int:
        """Remove those of ``digests`` stored here, in one transaction; how many were."""
        digests = list(digests)
        with self._lock, _translated():
            self._forget(digests)
            db = self._connect(create=False)
            if db is None:
                return 0
            db.execute("BEGIN IMMEDIATE")
            try:
                removed = db.executemany(
                    "DELETE FROM blobs WHERE digest = ?", ((digest,) for digest in digests)
                ).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return removed

    def digests(self) -> Iterator[str]:
        """The digest of every blob stored here, in no order."""
        with self._lock, _translated():
            db = self._connect(create=False)
            rows = [] if db is None else db.execute("SELECT digest FROM blobs").fetchall()
        return (digest for (digest,) in rows)

    def flush(self) -> None:
        """Make every commit so far survive a power cut (a checkpoint, fsynced)."""
        with self._lock, _translated():
            db = self._connect(create=False)
            if db is not None:
                db.execute("PRAGMA wal_checkpoint(FULL)")

    def scrub(self) -> None:
        """Overwrite what deleted blobs left in the write-ahead log (checkpoint, truncate)."""
        with self._lock, _translated():
            db = self._connect(create=False)
            if db is not None:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def sweep_incoming(self) -> int:
        """Remove the blobs a crash left half received; returns how many."""
        with self._lock, _translated():
            db = self._connect(create=False)
            if db is None:
                return 0
            return db.execute("DELETE FROM incoming").rowcount

    def writer(self, limit: int) -> InlineBlobWriter:
        """Start a blob of at most ``limit`` bytes; see :class:`InlineBlobWriter`."""
        return InlineBlobWriter(self, limit)

    def close(self) -> None:
        """Close the database. Idempotent."""
        with self._recent_lock:
            self._recent.clear()
            self._recent_bytes = 0
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None

    def _remember(self, placed: Iterable[tuple[str, bytes]]) -> None:
        """Keep the bytes of blobs just placed for their first read."""
        with self._recent_lock:
            recent = self._recent
            for digest, data in placed:
                if len(data) > RECENT_BYTES:
                    continue
                if digest not in recent:
                    recent[digest] = data
                    self._recent_bytes += len(data)
            while self._recent_bytes > RECENT_BYTES:
                oldest = next(iter(recent))
                self._recent_bytes -= len(recent.pop(oldest))

    def _forget(self, digests: Iterable[str]) -> None:
        with self._recent_lock:
            for digest in digests:
                data = self._recent.pop(digest, None)
                if data is not None:
                    self._recent_bytes -= len(data)

    # For InlineBlobWriter ------------------------------------------------------------

    def place_all(self, writers: Sequence[InlineBlobWriter]) -> list[bool]:
        """Commit every writer, all their rows in one transaction (a transaction each
        cost an upload of small files most of its time storing them); whether each
        created its blob (of two writers with the same bytes, the first). Nothing is
        placed if it fails.

        Raises:
            ValueError: A writer was aborted or committed already.
            OSError: The database refused the bytes.
        """
        placing: dict[str, bytes] = {}
        for writer in writers:
            if writer._settled:
                raise ValueError("blob writer was already committed or aborted")
            digest = writer.finish()
            assert writer._data is not None
            placing.setdefault(digest, writer._data)
        if not placing:
            return []
        with self._lock, _translated():
            db = self._connect(create=True)
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
                stored = self._stored_among(db, list(placing))
                db.executemany(
                    "INSERT INTO blobs (digest, content) VALUES (?, ?)",
                    ((d, data) for d, data in placing.items() if d not in stored),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._remember(placing.items())
        created = []
        for writer in writers:
            digest = writer.finish()
            created.append(digest not in stored)
            stored.add(digest)
            writer._settle()
        return created

    @staticmethod
    def _stored_among(db: sqlite3.Connection, digests: list[str]) -> set[str]:
        """Which of ``digests`` are stored already; in a transaction."""
        found: set[str] = set()
        it = iter(digests)
        while some := list(islice(it, _LOOKUP)):
            marks = ", ".join("?" * len(some))
            found.update(
                digest
                for (digest,) in db.execute(
                    f"SELECT digest FROM blobs WHERE digest IN ({marks})", some
                )
            )
        return found


class _translated:
    """Turns ``sqlite3.Error`` into ``OSError``: to the upload, a disk that failed."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, sqlite3.Error):
            raise OSError(f"inline blob store: {exc}") from exc


class InlineBlobWriter:
    """A small blob being written, held in memory until committed.

    The same protocol as :class:`~actors.storage.blobs.BlobWriter`. It takes at most
    ``limit`` bytes; nothing of it is on disk before :meth:`commit` (or
    :meth:`InlineBlobs.place_all`), so an abort or a crash leaves nothing behind. An
    upload holds the writers of a group of files until the group is stored. Not
    thread-safe.
    """

    # Kept small: an upload holds one writer per file until its group is stored.
    __slots__ = ("_blobs", "_buffer", "_data", "_digest", "_hash", "_limit", "_settled", "size")

    def __init__(self, blobs: InlineBlobs, limit: int) -> None:
        self._blobs = blobs
        self._limit = limit
        self._buffer: bytearray | None = bytearray()
        self._hash: hashlib._Hash | None = hashlib.sha256()
        self._digest: str | None = None
        self._data: bytes | None = None
        self._settled = False
        self.size = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.abort()

    def write(self, data: bytes) -> None:
        """Append ``data``.

        Raises:
            ValueError: The writer was finished or aborted, or ``data`` would take it
                past its limit.
        """
        if self._buffer is None or self._hash is None:
            raise ValueError("blob writer is closed")
        if self.size + len(data) > self._limit:
            raise ValueError(f"an inline blob holds at most {self._limit} bytes")
        self._buffer += data
        self._hash.update(data)
        self.size += len(data)

    def finish(self, *, durable: bool = True) -> str:
        """Return the bytes' digest; no more writes. Idempotent.

        ``durable`` changes nothing: the bytes are held in memory until :meth:`commit`,
        which is what stores them.

        Raises:
            ValueError: The writer was aborted.
        """
        del durable
        if self._digest is not None:
            return self._digest
        if self._buffer is None or self._hash is None:
            raise ValueError("blob writer was aborted")
        self._data = bytes(self._buffer)
        self._buffer = None
        self._digest = self._hash.hexdigest()
        self._hash = None  # its state is no longer needed
        return self._digest

    def commit(self, *, durable: bool = True, stored_elsewhere: bool = False) -> bool:
        """Finish, then store the bytes under their digest.

        Args:
            durable: Flush before returning; false leaves it to the store's ``sync``.
            stored_elsewhere: The same bytes are stored as a file already: keep those.

        Returns:
            Whether this call created the blob.

        Raises:
            ValueError: The writer was aborted or committed already.
            OSError: The database refused the bytes.
        """
        if self._settled:
            raise ValueError("blob writer was already committed or aborted")
        digest = self.finish()
        assert self._data is not None
        created = False if stored_elsewhere else self._blobs.put(digest, self._data)
        self._settle()
        if created and durable:
            self._blobs.flush()
        return created

    def abort(self) -> None:
        """Drop the bytes, unless committed. Idempotent."""
        if not self._settled:
            self._settle()
        self._buffer = None

    def _settle(self) -> None:
        self._settled = True
        self._data = None
