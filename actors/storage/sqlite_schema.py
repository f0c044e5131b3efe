"""The SQLite store's schema, as a list of migrations run in order at open.

The database's ``PRAGMA user_version`` is the number of migrations applied. Opening a
database runs the missing ones in one transaction, so a crash mid-migration leaves the
old version intact. A migration is never edited once released: changes are new entries.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SchemaTooNewError", "migrate", "schema_version"]

# Version 1: batches, their files, attempts, events, results and idempotency keys.
# Columns of batches, files and attempts follow actors.storage.codec's *_COLUMNS.
_V1 = (
    """
    CREATE TABLE batches (
        batch_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        policy TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        sequence INTEGER NOT NULL,
        reason TEXT NOT NULL,
        labels TEXT NOT NULL,
        owner TEXT NOT NULL,
        idempotency_key TEXT NOT NULL
    )
    """,
    "CREATE INDEX batches_by_state ON batches (state)",
    """
    CREATE TABLE idempotency_keys (
        owner TEXT NOT NULL,
        key TEXT NOT NULL,
        batch_id TEXT NOT NULL REFERENCES batches (batch_id) ON DELETE CASCADE,
        PRIMARY KEY (owner, key)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX idempotency_keys_by_batch ON idempotency_keys (batch_id)",
    """
    CREATE TABLE files (
        batch_id TEXT NOT NULL REFERENCES batches (batch_id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        file_id TEXT NOT NULL,
        name TEXT NOT NULL,
        blob TEXT NOT NULL,
        size INTEGER NOT NULL,
        state TEXT NOT NULL,
        round_failures INTEGER NOT NULL,
        manual_retries INTEGER NOT NULL,
        next_attempt_at REAL,
        error TEXT,
        encrypted_with_password INTEGER NOT NULL,
        PRIMARY KEY (batch_id, file_id)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX files_by_blob ON files (blob)",
    """
    CREATE TABLE attempts (
        batch_id TEXT NOT NULL,
        file_id TEXT NOT NULL,
        number INTEGER NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        outcome TEXT,
        code TEXT,
        worker_pid INTEGER,
        retry_delay REAL,
        PRIMARY KEY (batch_id, file_id, number),
        FOREIGN KEY (batch_id, file_id) REFERENCES files (batch_id, file_id) ON DELETE CASCADE
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE events (
        batch_id TEXT NOT NULL REFERENCES batches (batch_id) ON DELETE CASCADE,
        sequence INTEGER NOT NULL,
        at REAL NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (batch_id, sequence)
    )
    """,
    """
    CREATE TABLE results (
        batch_id TEXT NOT NULL,
        file_id TEXT NOT NULL,
        page_count INTEGER NOT NULL,
        encrypted INTEGER NOT NULL,
        info TEXT NOT NULL,
        PRIMARY KEY (batch_id, file_id),
        FOREIGN KEY (batch_id, file_id) REFERENCES files (batch_id, file_id) ON DELETE CASCADE
    ) WITHOUT ROWID
    """,
    # One row per page, so that a long document can be read a page at a time.
    """
    CREATE TABLE result_pages (
        batch_id TEXT NOT NULL,
        file_id TEXT NOT NULL,
        page_number INTEGER NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (batch_id, file_id, page_number),
        FOREIGN KEY (batch_id, file_id) REFERENCES results (batch_id, file_id) ON DELETE CASCADE
    )
    """,
)

# Version 2: retention. When a batch's uploaded bytes were removed, and events by age.
_V2 = (
    "ALTER TABLE batches ADD COLUMN bytes_released_at REAL",
    "CREATE INDEX events_by_time ON events (at)",
)

# Version 3: the audit trail of requests, append-only and kept when its batch is deleted.
_V3 = (
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        request_id TEXT NOT NULL,
        caller TEXT NOT NULL,
        action TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL
    )
    """,
    "CREATE INDEX audit_by_batch ON audit (batch_id, id)",
    """
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END
    """,
    """
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END
    """,
)

# Version 4: results within bounds. Text in pieces of at most 512 Ki characters (a page
# of any length is streamed without being read whole); a result's warnings and its size,
# which counts against its owner's storage quota. Old pages become one piece each.
_V4 = (
    "ALTER TABLE results ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE results ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0",
    """
    CREATE TABLE result_text (
        batch_id TEXT NOT NULL,
        file_id TEXT NOT NULL,
        page_number INTEGER NOT NULL,
        part INTEGER NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (batch_id, file_id, page_number, part),
        FOREIGN KEY (batch_id, file_id) REFERENCES results (batch_id, file_id) ON DELETE CASCADE
    )
    """,
    """
    INSERT INTO result_text (batch_id, file_id, page_number, part, text)
    SELECT batch_id, file_id, page_number, 0, text FROM result_pages
    """,
    """
    UPDATE results SET stored_bytes = length(CAST(info AS BLOB)) + COALESCE((
        SELECT SUM(length(CAST(text AS BLOB))) FROM result_text
        WHERE result_text.batch_id = results.batch_id AND result_text.file_id = results.file_id
    ), 0)
    """,
    "DROP TABLE result_pages",
)

# Version 5: batches of any size, read in pages. Each batch keeps its files' counts per
# state (JSON, written in the same transaction as the changes), so nothing counts by
# reading files; files are paged in submission order, optionally by state; a tenant's
# batches are listed newest first from an index.
_V5 = (
    "ALTER TABLE batches ADD COLUMN counts TEXT NOT NULL DEFAULT '{}'",
    """
    UPDATE batches SET counts = COALESCE((
        SELECT json_group_object(state, n) FROM (
            SELECT state, COUNT(*) AS n FROM files
            WHERE files.batch_id = batches.batch_id GROUP BY state
        )
    ), '{}')
    """,
    "CREATE INDEX files_by_position ON files (batch_id, position)",
    "CREATE INDEX files_by_state ON files (batch_id, state, position)",
    "CREATE INDEX batches_by_owner ON batches (owner, created_at, batch_id)",
    "CREATE INDEX batches_by_time ON batches (created_at, batch_id)",
    "CREATE INDEX batches_by_change ON batches (state, updated_at)",
)

# Version 6: richer results. A file keeps its result's warnings (no text layer, a damaged
# outline...), shown with its status; the batch's counts JSON gains how many succeeded
# files have warnings; a result keeps its document's structure (version, page sizes,
# outline, attachments) as JSON. Older rows have none.
_V6 = (
    "ALTER TABLE files ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE results ADD COLUMN details TEXT NOT NULL DEFAULT '{}'",
)

# Version 7: a file's history read a page at a time. Its own events by the file id their
# payload carries, the batch's bulk events (few) apart, and the audited requests by
# caller; each in the order a page continues in. The expressions are the ones
# actors.storage.sqlite_store queries with.
_V7 = (
    "CREATE INDEX events_by_file ON events "
    "(batch_id, json_extract(payload, '$.file.file_id'), sequence)",
    "CREATE INDEX events_in_bulk ON events (batch_id, sequence) "
    "WHERE json_type(payload, '$.bulk') = 'object'",
    "CREATE INDEX audit_by_caller ON audit (batch_id, caller, id)",
)

# Version 8: a change by state (a cancel, a retry of every file) is recorded on its
# batch, not written into every row it moves. ``moves`` numbers the batch's changes by
# state; ``pending_moves`` lists those not yet written into every row they move (JSON,
# oldest first, each with its number); a file row's ``moved`` is the number of the last
# change by state it already shows. A reader applies the pending changes numbered above
# a row's ``moved``; the store writes them into the rows in the background.
_V8 = (
    "ALTER TABLE batches ADD COLUMN moves INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE batches ADD COLUMN pending_moves TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE files ADD COLUMN moved INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX batches_with_moves ON batches (batch_id) WHERE pending_moves != '[]'",
    # A page by state tells the rows a pending move took out of the state from the
    # index alone.
    "DROP INDEX files_by_state",
    "CREATE INDEX files_by_state ON files (batch_id, state, position, moved, manual_retries)",
    # The few files a retry of every file may skip: those retried before, and those
    # whose last error is a wrong password. A retry counts the files it moves as the
    # files in the state less these.
    "CREATE INDEX files_retried ON files (batch_id, manual_retries) WHERE manual_retries > 0",
    "CREATE INDEX files_wrong_password ON files (batch_id) "
    "WHERE json_extract(error, '$.code') = 'PDF_WRONG_PASSWORD'",
)

# Version 9: uploads stored as they arrive (issue 15). A batch is stored when its upload
# begins, with uploading = 1, and its files are added in groups as they arrive; every
# reader ignores it until the upload's end clears the flag, in one transaction with its
# counts and idempotency key. contents is the digest of the batch's ordered (name, blob,
# size) list (actors.policy.contents), which an upload repeating the batch's idempotency
# key is compared with; NULL for batches stored otherwise.
_V9 = (
    "ALTER TABLE batches ADD COLUMN uploading INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE batches ADD COLUMN contents TEXT",
    "CREATE INDEX batches_uploading ON batches (batch_id) WHERE uploading = 1",
)

MIGRATIONS: Sequence[Sequence[str]] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNewError(Exception):
    """The database was written by a newer pdfbatch, whose schema this one cannot read."""


def schema_version(db: sqlite3.Connection) -> int:
    """The number of migrations applied to ``db``."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(db: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring ``db`` up to schema version ``target`` in one transaction.

    Args:
        db: A connection in autocommit mode (``isolation_level=None``).
        target: The version to reach. Default the newest.

    Returns:
        The version the database had before.

    Raises:
        SchemaTooNewError: The database is at a version above ``target``.
        sqlite3.Error: The database could not be read or written; nothing changed.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        before = schema_version(db)
        if before > target:
            raise SchemaTooNewError(
                f"the database has schema version {before}; this pdfbatch knows up to {target}"
            )
        for statements in MIGRATIONS[before:target]:
            for statement in statements:
                db.execute(statement)
        if before != target:
            # PRAGMA takes no parameters; target is an int.
            db.execute(f"PRAGMA user_version = {int(target)}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return before
