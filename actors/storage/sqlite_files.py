"""File rows in SQL: how a row is written, read back with its batch's pending moves
applied, paged by state, and how a pending move is written into the rows it moves.

The statements and queries :class:`~actors.storage.sqlite_store.SQLiteStore` runs on
``files`` and ``attempts``, each on a connection inside the store's transaction. The
rule of what a move does is :mod:`actors.storage.moves`'; this module turns it into
statements.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from actors.policy.catalogue import ErrorCode
from actors.policy.model import Attempt, BulkChange, FileRecord, FileState
from actors.storage import codec
from actors.storage.moves import (
    MAX_PENDING_MOVES,
    Condition,
    Move,
    apply_moves,
    retryable_sql,
    state_conditions,
)

__all__ = [
    "FILE_READ",
    "IDS_PER_READ",
    "INSERT_FILE",
    "SELECT_ATTEMPTS",
    "SELECT_FILES",
    "UPDATE_FILE",
    "UPSERT_ATTEMPT",
    "attempts_of",
    "columns",
    "count_by_conditions",
    "few_rows",
    "file_of",
    "marks",
    "moves_of",
    "page_query",
    "read_records",
    "record_bulk",
    "write_move",
]

# Ids in one statement: SQLite bounds the parameters of one statement.
IDS_PER_READ = 500

# The condition of schema version 8's files_wrong_password, as written there.
_WRONG_PASSWORD = f"json_extract(error, '$.code') = '{ErrorCode.PDF_WRONG_PASSWORD.value}'"


def columns(names: tuple[str, ...]) -> str:
    return ", ".join(names)


def page_query(
    batch_id: str, conditions: Mapping[FileState, Condition] | None, after_position: int, limit: int
) -> tuple[str, dict[str, object]]:
    """The query of a page of files after ``after_position``, in submission order.

    Args:
        conditions: Only rows of these stored states, each on its condition (see
            :func:`actors.storage.moves.state_conditions`); ``None`` for every file.

    One state is a range of ``files_by_state``. Several are one such range each, merged:
    ``state IN (...)`` makes SQLite walk ``files_by_position`` instead, which reads
    every later row of the batch to find a few (0.7 s for 1,000,000 files). A state
    whose wanted rows are among the few retried or out of password guesses (a pending
    retry moved the others away) starts from those instead of walking its range.
    """
    selected = f"position, {FILE_READ}"
    params: dict[str, object] = {"batch": batch_id, "after": after_position, "limit": limit}
    if conditions is None:
        return (
            f"SELECT {selected} FROM files WHERE batch_id = :batch AND position > :after "
            "ORDER BY position LIMIT :limit",
            params,
        )
    if not conditions:
        return f"SELECT {selected} FROM files WHERE 0", {}
    branches = []
    for index, (state, condition) in enumerate(
        sorted(conditions.items(), key=lambda item: item[0].value)
    ):
        params[f"state{index}"] = state.value
        where = f"files.batch_id = :batch AND state = :state{index} AND position > :after"
        if condition.sql != "1":
            where += f" AND {condition.sql}"
        source = "files"
        if condition.floor is not None:
            # CROSS JOIN: SQLite keeps the order written, the few rows first.
            params[f"floor{index}"] = condition.floor
            source = (
                f"({few_rows(f':floor{index}')}) AS few CROSS JOIN files ON files.file_id = few.id"
            )
        branches.append(
            f"SELECT * FROM (SELECT {selected} FROM {source} WHERE {where} "
            "ORDER BY position LIMIT :limit)"
        )
    query = " UNION ALL ".join(branches)
    if len(branches) == 1:
        return query, params
    return f"SELECT * FROM ({query}) ORDER BY position LIMIT :limit", params


def few_rows(floor: str) -> str:
    """The ids of the batch's files with at least ``floor`` (a parameter) manual retries
    or a wrong password as their last error: the rows of schema version 8's
    files_retried and files_wrong_password. The indexes' conditions are written as
    there (SQLite matches them as written), and named: without statistics SQLite would
    rather walk the batch."""
    return (
        "SELECT file_id AS id FROM files INDEXED BY files_retried WHERE batch_id = :batch "
        f"AND manual_retries > 0 AND manual_retries >= {floor} UNION ALL "
        "SELECT file_id FROM files INDEXED BY files_wrong_password "
        f"WHERE batch_id = :batch AND {_WRONG_PASSWORD}"
    )


def marks(count: int) -> str:
    return ", ".join("?" * count)


def attempts_of(files: int) -> str:
    """The query of the attempts of ``files`` named files of a batch, by key."""
    return (
        f"SELECT file_id, {columns(codec.ATTEMPT_COLUMNS)} FROM attempts "
        f"WHERE batch_id = ? AND file_id IN ({marks(files)}) ORDER BY file_id, number"
    )


# A file row as read: its record's columns, then the last move it shows.
FILE_READ = f"{columns(codec.FILE_COLUMNS)}, moved"
SELECT_FILES = f"SELECT {FILE_READ} FROM files WHERE batch_id = ? ORDER BY position"
INSERT_FILE = (
    f"INSERT INTO files (batch_id, position, {columns(codec.FILE_COLUMNS)}) "
    f"VALUES (?, ?, {marks(len(codec.FILE_COLUMNS))})"
)
# A file's change: its name, blob and size are left as its upload wrote them, which
# spares the index by blob a rewrite at every change (about 3 µs a row).
UPDATE_FILE = (
    "UPDATE files SET "
    + ", ".join(f"{name} = ?" for name in codec.FILE_CHANGE_COLUMNS)
    + ", moved = ? WHERE batch_id = ? AND file_id = ?"
)
_UPDATE_FILE_BULK = (
    "UPDATE files SET state = ?, next_attempt_at = NULL, error = ?, moved = ? "
    "WHERE batch_id = ? AND file_id = ?"
)
SELECT_ATTEMPTS = (
    f"SELECT file_id, {columns(codec.ATTEMPT_COLUMNS)} FROM attempts "
    "WHERE batch_id = ? ORDER BY file_id, number"
)
UPSERT_ATTEMPT = (
    f"INSERT INTO attempts (batch_id, file_id, {columns(codec.ATTEMPT_COLUMNS)}) "
    f"VALUES (?, ?, {marks(len(codec.ATTEMPT_COLUMNS))}) "
    "ON CONFLICT (batch_id, file_id, number) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in codec.ATTEMPT_COLUMNS[1:])
)


def file_of(row: Sequence[Any], attempts: Sequence[Attempt], moves: Sequence[Move]) -> FileRecord:
    """The record of a row read with :data:`FILE_READ`, its pending moves applied."""
    *values, moved = row
    return apply_moves(codec.file_from_row(values, attempts), moved, moves)


def moves_of(db: sqlite3.Connection, batch_id: str) -> tuple[Move, ...] | None:
    """The batch's pending moves, or ``None`` for no such batch."""
    row = db.execute("SELECT pending_moves FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
    return None if row is None else codec.moves_from_json(row[0])


def read_records(
    db: sqlite3.Connection, batch_id: str, file_ids: Sequence[str], moves: Sequence[Move]
) -> dict[str, FileRecord]:
    """The named files (at most :data:`IDS_PER_READ`) with their attempts, by id."""
    rows = db.execute(
        f"SELECT {FILE_READ} FROM files WHERE batch_id = ? AND file_id IN ({marks(len(file_ids))})",
        (batch_id, *file_ids),
    ).fetchall()
    attempts: dict[str, list[Attempt]] = {}
    for file_id, *attempt in db.execute(attempts_of(len(file_ids)), (batch_id, *file_ids)):
        attempts.setdefault(file_id, []).append(codec.attempt_from_row(attempt))
    return {row[0]: file_of(row, attempts.get(row[0], ()), moves) for row in rows}


def write_move(
    db: sqlite3.Connection, batch_id: str, move: Move, *, after_position: int, rows: int | None
) -> int | None:
    """Write the batch's oldest pending ``move`` into the rows it moves, in submission
    order after ``after_position``: up to ``rows`` of them, or all (``None``).

    Returns:
        The position of the last row written, or ``None`` when no row is left for it.
    """
    number, bulk = move
    assert bulk.from_state is not None, "only a change by state is a move"
    where = "batch_id = :batch AND state = :from AND moved < :number AND position > :after"
    if bulk.manual_retry:
        where += f" AND {retryable_sql(bulk.max_manual_retries)}"
    params: dict[str, object] = {
        "batch": batch_id,
        "from": bulk.from_state.value,
        "number": number,
        "after": after_position,
        "to": bulk.state.value,
        "error": codec.error_to_json(bulk.error),
    }
    last = None
    if rows is not None:
        row = db.execute(
            f"SELECT position FROM files WHERE {where} ORDER BY position LIMIT 1 OFFSET :skip",
            {**params, "skip": rows - 1},
        ).fetchone()
        last = None if row is None else int(row[0])
    retry = ", round_failures = 0, manual_retries = manual_retries + 1"
    db.execute(
        "UPDATE files SET state = :to, next_attempt_at = NULL, error = :error, moved = :number"
        f"{retry if bulk.manual_retry else ''} WHERE {where}"
        f"{'' if last is None else ' AND position <= :last'}",
        {**params, "last": last},
    )
    return last


def record_bulk(
    db: sqlite3.Connection, batch_id: str, bulks: Sequence[BulkChange]
) -> tuple[int, bool]:
    """Apply ``bulks`` (in order) in the commit's transaction.

    A change by state becomes the batch's next pending move: no row is written. A
    listed change writes its few rows, brought up to date first.

    Returns:
        The number of the batch's last move, which the commit's own file records
        show, and whether a move was added (for the background writer).
    """
    number, pending = db.execute(
        "SELECT moves, pending_moves FROM batches WHERE batch_id = ?", (batch_id,)
    ).fetchone()
    if not bulks:
        return number, False
    moves = list(codec.moves_from_json(pending))
    added = False
    for bulk in bulks:
        if bulk.from_state is None:
            _bring_up_to_date(db, batch_id, bulk.file_ids, moves, number)
            error = codec.error_to_json(bulk.error)
            db.executemany(
                _UPDATE_FILE_BULK,
                ((bulk.state.value, error, number, batch_id, f) for f in bulk.file_ids),
            )
            continue
        number += 1
        moves.append((number, bulk))
        added = True
        while len(moves) > MAX_PENDING_MOVES:
            # Each pending move costs every query by state a little: too many, and
            # the oldest is written into its rows now.
            write_move(db, batch_id, moves.pop(0), after_position=-1, rows=None)
    db.execute(
        "UPDATE batches SET moves = ?, pending_moves = ? WHERE batch_id = ?",
        (number, codec.moves_to_json(moves), batch_id),
    )
    return number, added


def _bring_up_to_date(
    db: sqlite3.Connection,
    batch_id: str,
    file_ids: Sequence[str],
    moves: Sequence[Move],
    number: int,
) -> None:
    """Write the pending ``moves`` into the rows of ``file_ids``, which then show
    every move up to ``number``: for a change that writes only some columns."""
    if not moves:
        return
    for start in range(0, len(file_ids), IDS_PER_READ):
        records = read_records(db, batch_id, file_ids[start : start + IDS_PER_READ], moves)
        db.executemany(
            UPDATE_FILE,
            (
                (*codec.file_change_to_row(record), number, batch_id, record.file_id)
                for record in records.values()
            ),
        )


def count_by_conditions(
    db: sqlite3.Connection,
    batch_id: str,
    moves: tuple[Move, ...],
    state: FileState,
    max_manual_retries: int,
) -> int:
    """Files a retry may move, counted row by row (a limit of a retry or two)."""
    count = 0
    for stored, condition in state_conditions(
        moves, frozenset({state}), max_manual_retries
    ).items():
        (n,) = db.execute(
            "SELECT COUNT(*) FROM files WHERE batch_id = :batch AND state = :state"
            f"{'' if condition.sql == '1' else ' AND ' + condition.sql}",
            {"batch": batch_id, "state": stored.value},
        ).fetchone()
        count += int(n)
    return count
