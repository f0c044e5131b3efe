"""Connections to one SQLite database, shared safely by every thread of the process.

One writer connection behind a lock: SQLite runs one write transaction at a time
anyway, and waiting on a lock in the process is cheaper than busy-waiting on the file's.
Reader connections come from a small pool; in WAL mode each reads a consistent snapshot
while the writer writes. A connection is only ever used by one thread at a time.

Failures of the database (full disk, locked past the busy timeout, I/O errors, a
damaged file) leave as :class:`~actors.policy.catalogue.StorageUnavailableError`, after the
transaction in progress was rolled back.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from actors.policy.catalogue import ErrorCode, StorageUnavailableError
from actors.policy.model import AttemptOutcome, BatchState, FileState
from actors.storage.private import private_directory
from actors.storage.sqlite_schema import migrate

__all__ = ["Connections", "Synchronous", "translated"]

Synchronous = Literal["FULL", "NORMAL"]
# Idle reader connections kept open; more are opened when more threads read at once.
_MAX_IDLE_READERS = 8


def _as_is(value: str | None) -> str | None:
    return value


# Parameters bound as they are, registered only so that the sqlite3 module finds them in
# its table of adapters. A parameter of any other type than an exact int, float, str or
# bytes is otherwise looked up as the protocol's __adapt__ and its own __conform__,
# each a raised and cleared AttributeError: about 1 µs a parameter (CPython 3.11), and
# a file's change binds a dozen (None for what is unset, states and codes, which are
# str subclasses). What is stored is the same: None is NULL, a member its text.
for _bound_as_is in (type(None), FileState, BatchState, AttemptOutcome, ErrorCode):
    sqlite3.register_adapter(_bound_as_is, _as_is)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Turn the database's failures into :class:`StorageUnavailableError`.

    Constraint violations and misuse of the API are bugs, and stay what they are.
    """
    try:
        yield
    except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
        raise
    except (sqlite3.Error, OSError) as exc:
        raise StorageUnavailableError(f"the batch database failed: {exc}") from exc


class Connections:
    """The writer and the readers of the database at ``path``, migrated when opened.

    Args:
        path: The database file; created with its directory if missing.
        busy_timeout: Seconds to wait for another connection's lock.
        synchronous: ``"FULL"`` fsyncs every commit; ``"NORMAL"`` survives a killed
            process but may lose the last commits to a power cut.

    Raises:
        StorageUnavailableError: The database cannot be opened or migrated.
        SchemaTooNewError: The database was written by a newer version.
    """

    def __init__(self, path: Path, *, busy_timeout: float, synchronous: Synchronous) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self._path = path
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle_readers: list[sqlite3.Connection] = []
        self._closed = False
        private_directory(path.parent)
        with translated():
            # Results hold the documents' text: readable by the service's user only.
            # SQLite gives its -wal and -shm files the database file's mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            writer = self._connect()
            try:
                migrate(writer)
            except BaseException:
                writer.close()
                raise
        self._writer: sqlite3.Connection | None = writer

    def _connect(self, *, readonly: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.execute("PRAGMA foreign_keys = ON")
            # Deleted results and passwords' traces are overwritten, not left in free pages.
            db.execute("PRAGMA secure_delete = ON")
            if readonly:
                db.execute("PRAGMA query_only = ON")
        except BaseException:
            db.close()
            raise
        return db

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, else rolled back.

        Raises:
            StorageUnavailableError: The database failed, or is closed.
        """
        with self._write_lock, translated():
            if self._closed:
                raise StorageUnavailableError("the batch database is closed")
            if self._writer is None:
                self._writer = self._connect()
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                self._roll_back(db)
                raise

    def _roll_back(self, db: sqlite3.Connection) -> None:
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            # The connection is in an unknown state: drop it. SQLite ignores the
            # uncommitted part of the log when the next connection opens.
            db.close()
            self._writer = None

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A reader inside a read transaction: one consistent snapshot.

        Raises:
            StorageUnavailableError: The database failed, or is closed.
        """
        with translated():
            with self._pool_lock:
                if self._closed:
                    raise StorageUnavailableError("the batch database is closed")
                db = self._idle_readers.pop() if self._idle_readers else None
            if db is None:
                db = self._connect(readonly=True)
            healthy = False
            try:
                db.execute("BEGIN")
                yield db
                db.execute("COMMIT")
                healthy = True
            finally:
                self._give_back(db, healthy)

    def _give_back(self, db: sqlite3.Connection, healthy: bool) -> None:
        with self._pool_lock:
            keep = healthy and not self._closed and len(self._idle_readers) < _MAX_IDLE_READERS
            if keep:
                self._idle_readers.append(db)
        if not keep:
            db.close()

    def close(self) -> None:
        """Close every connection; later calls raise ``StorageUnavailableError``.

        Idempotent. Readers in use are closed when they are given back.
        """
        with self._write_lock, self._pool_lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle_readers = self._idle_readers, []
            writer, self._writer = self._writer, None
        for db in idle:
            db.close()
        if writer is not None:
            writer.close()
