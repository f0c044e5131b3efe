"""The SQLite store's uploads in progress (schema version 9), statement by statement.

An upload's batch is a row of ``batches`` with ``uploading = 1`` from its spec on; its
files are rows of ``files`` added a group at a time, so that the service holds none of
them in memory. Every reader of :class:`~actors.storage.sqlite_store.SQLiteStore` asks
for ``uploading = 0``, except ``blob_in_use``: the blobs an upload stored are in use,
or retention would delete them under it. Each function runs inside the caller's write
transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from actors.policy.model import BatchRecord, FileRecord
from actors.storage import codec

__all__ = ["add_files", "begin", "drop", "end", "in_progress", "is_uploading"]

_INSERT_UPLOADING = (
    f"INSERT INTO batches ({', '.join(codec.BATCH_COLUMNS)}, uploading) "
    f"VALUES ({', '.join('?' * len(codec.BATCH_COLUMNS))}, 1)"
)
_INSERT_FILE = (
    f"INSERT INTO files (batch_id, position, {', '.join(codec.FILE_COLUMNS)}) "
    f"VALUES (?, ?, {', '.join('?' * len(codec.FILE_COLUMNS))})"
)
_UPLOADING = "SELECT owner, idempotency_key FROM batches WHERE batch_id = ? AND uploading = 1"
# Those of a JSON list of digests that SQLiteStore.blob_in_use would say are unused.
_UNUSED = (
    "SELECT value FROM json_each(?) WHERE NOT EXISTS (SELECT 1 FROM files "
    "JOIN batches USING (batch_id) WHERE files.blob = value "
    "AND batches.bytes_released_at IS NULL) ORDER BY value"
)


def begin(db: sqlite3.Connection, batch: BatchRecord) -> None:
    """Store ``batch`` as uploading.

    Raises:
        ValueError: A batch with this id exists.
    """
    try:
        db.execute(_INSERT_UPLOADING, codec.batch_to_row(batch))
    except sqlite3.IntegrityError:
        raise ValueError(f"batch {batch.batch_id} exists") from None


def is_uploading(db: sqlite3.Connection, batch_id: str) -> bool:
    """Whether the batch is stored and its upload has not ended."""
    return db.execute(_UPLOADING, (batch_id,)).fetchone() is not None


def add_files(
    db: sqlite3.Connection, batch_id: str, first_position: int, files: Sequence[FileRecord]
) -> None:
    """Add ``files`` (without attempts: they have none yet) at ``first_position`` on.

    Raises:
        KeyError: No batch with this id is uploading.
    """
    if db.execute(_UPLOADING, (batch_id,)).fetchone() is None:
        raise KeyError(batch_id)
    db.executemany(
        _INSERT_FILE,
        (
            (batch_id, position, *codec.file_to_row(record))
            for position, record in enumerate(files, start=first_position)
        ),
    )


def end(db: sqlite3.Connection, batch_id: str, *, contents: str, at: float) -> str:
    """Make the batch visible, unless its owner's idempotency key went to another batch
    first: then that batch's id, and nothing changed.

    Its counts are left as they are: its supervisor keeps them from the first file on.

    Raises:
        KeyError: No batch with this id is uploading.
    """
    row = db.execute(_UPLOADING, (batch_id,)).fetchone()
    if row is None:
        raise KeyError(batch_id)
    owner, key = row
    if key:
        taken = db.execute(
            "SELECT batch_id FROM idempotency_keys WHERE owner = ? AND key = ?", (owner, key)
        ).fetchone()
        if taken is not None:
            return str(taken[0])
    db.execute(
        "UPDATE batches SET uploading = 0, contents = ?, created_at = ? WHERE batch_id = ?",
        (contents, at, batch_id),
    )
    if key:
        db.execute(
            "INSERT INTO idempotency_keys (owner, key, batch_id) VALUES (?, ?, ?)",
            (owner, key, batch_id),
        )
    return batch_id


def drop(db: sqlite3.Connection, batch_id: str, limit: int) -> list[str] | None:
    """Delete up to ``limit`` of an uploading batch's files, the last first; the blobs
    no batch refers to any more, or ``None`` once no file was left (the batch is
    deleted then)."""
    if db.execute(_UPLOADING, (batch_id,)).fetchone() is None:
        return None
    rows = db.execute(
        "SELECT position, blob FROM files WHERE batch_id = ? ORDER BY position DESC LIMIT ?",
        (batch_id, limit),
    ).fetchall()
    if not rows:
        db.execute("DELETE FROM batches WHERE batch_id = ? AND uploading = 1", (batch_id,))
        return None
    db.execute("DELETE FROM files WHERE batch_id = ? AND position >= ?", (batch_id, rows[-1][0]))
    # One statement for the page: a query per blob cost more in Python than in SQLite.
    digests = json.dumps(sorted({blob for _, blob in rows}))
    return [str(digest) for (digest,) in db.execute(_UNUSED, (digests,))]


def in_progress(db: sqlite3.Connection) -> list[str]:
    """The ids of the batches uploading."""
    return [
        str(batch_id)
        for (batch_id,) in db.execute("SELECT batch_id FROM batches WHERE uploading = 1")
    ]
