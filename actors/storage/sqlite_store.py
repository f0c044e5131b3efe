"""The durable :class:`~actors.storage.store.Store`: every record in one SQLite file.

Durability: the journal is a write-ahead log with ``synchronous=FULL``, so each commit
is fsynced before it returns. A batch whose submit was acknowledged, and every event a
watcher has seen, then survive a power cut and not only a killed process. (``NORMAL``
survives ``kill -9`` too, but a power cut could take the last commits with it, and the
restarted batch would reuse their event sequences for different changes.)

Tables (see :mod:`actors.storage.sqlite_schema`): batches, their files, one row per attempt
(a file's history can be queried), events (the payload as JSON), results with their
text in pieces (read a few at a time, so any page streams in bounded memory), and
idempotency keys. A transaction is applied whole or not at all; a
database that cannot be used raises :class:`~actors.policy.catalogue.StorageUnavailableError`
(see :mod:`actors.storage.sqlite_connections`).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from actors.policy.book import Changes, retryable
from actors.policy.model import (
    Attempt,
    AuditEntry,
    BatchEvent,
    BatchRecord,
    BatchState,
    BatchSummary,
    BatchView,
    ExtractionResult,
    FilePage,
    FileRecord,
    FileState,
    ResultSummary,
)
from actors.policy.sealed import SealedResult, as_sealed
from actors.storage import codec, sqlite_uploads
from actors.storage.moves import (
    MoveWriter,
    state_conditions,
)
from actors.storage.sqlite_connections import Connections, Synchronous
from actors.storage.sqlite_files import (
    IDS_PER_READ,
    INSERT_FILE,
    SELECT_ATTEMPTS,
    SELECT_FILES,
    UPDATE_FILE,
    UPSERT_ATTEMPT,
    attempts_of,
    columns,
    count_by_conditions,
    few_rows,
    file_of,
    marks,
    moves_of,
    page_query,
    read_records,
    record_bulk,
    write_move,
)
from actors.storage.store import EventListener, FileHistoryPage

__all__ = ["DEFAULT_BUSY_TIMEOUT", "SQLiteStore"]

DEFAULT_BUSY_TIMEOUT = 5.0
_PIECES_PER_READ = 4
# Rows a pending move is written into per transaction: about 8 ms of the write lock.
_MOVE_ROWS = 1000
_TERMINAL_STATES = tuple(state.value for state in BatchState if state.terminal)


_AUDIT_COLUMNS = "at, request_id, caller, action, batch_id, outcome, detail"
# The expressions schema version 7 indexes events by: written exactly as there, or SQLite
# does not use the index.
_EVENT_FILE_ID = "json_extract(payload, '$.file.file_id')"
_EVENT_IS_BULK = "json_type(payload, '$.bulk') = 'object'"


# Batches whose upload has ended: the only ones a reader sees (schema version 9).
_VISIBLE = "uploading = 0"
_SELECT_BATCH = f"SELECT {columns(codec.BATCH_COLUMNS)} FROM batches"
_SELECT_BATCH_SUMMARY = f"SELECT {columns(codec.BATCH_COLUMNS)}, counts FROM batches"
_INSERT_BATCH = (
    f"INSERT INTO batches ({columns(codec.BATCH_COLUMNS)}) "
    f"VALUES ({marks(len(codec.BATCH_COLUMNS))})"
)
_UPDATE_BATCH = (
    "UPDATE batches SET state = ?, updated_at = ?, sequence = ?, reason = ?, counts = ? "
    "WHERE batch_id = ? AND sequence = ?"
)


def _summary_from_row(row: Sequence[Any]) -> BatchSummary:
    *batch, counts = row
    return BatchSummary(
        codec.batch_from_row(batch),
        codec.counts_from_json(counts),
        codec.warned_from_json(counts),
    )


_INSERT_RESULT = (
    "INSERT OR REPLACE INTO results (batch_id, file_id, page_count, encrypted, info, "
    "warnings, stored_bytes, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_RESULT_TEXT = (
    "INSERT INTO result_text (batch_id, file_id, page_number, part, text) VALUES (?, ?, ?, ?, ?)"
)


def _insert_results(
    db: sqlite3.Connection,
    batch_id: str,
    results: Mapping[str, SealedResult | ExtractionResult],
) -> None:
    """Write a commit's results: every row of ``results``, then every piece of text, in
    two statements whatever the number of files (one pair a file cost 2 calls into
    SQLite per file of a group commit).

    A result stored before for a file (none is, as a succeeded file never runs again)
    is replaced with its text: the replaced row's text goes with it, by the foreign key,
    before the new text is inserted.
    """
    sealed = {file_id: as_sealed(result) for file_id, result in results.items()}
    db.executemany(
        _INSERT_RESULT,
        [
            (
                batch_id,
                file_id,
                result.page_count,
                int(result.encrypted),
                result.info_json,
                codec.warnings_to_json(result.warnings),
                result.stored_bytes,
                result.details_json,
            )
            for file_id, result in sealed.items()
        ],
    )
    db.executemany(
        _INSERT_RESULT_TEXT,
        (
            (batch_id, file_id, number, part, piece)
            for file_id, result in sealed.items()
            for number, pieces in enumerate(result.pages, start=1)
            for part, piece in enumerate(pieces)
        ),
    )


class SQLiteStore:
    """A :class:`~actors.storage.store.Store` in a SQLite database file; safe from any thread.

    The schema is created or migrated when the store opens.

    Args:
        path: The database file; created with its directory if missing.
        max_events_per_batch: Keep only this many newest events per batch. Default
            ``None``: keep every event (until :meth:`prune_events`).
        busy_timeout: Seconds a call waits for another connection's lock before it
            fails with ``StorageUnavailableError``. Default 5.
        synchronous: ``"FULL"`` (default) fsyncs every commit; ``"NORMAL"`` survives a
            killed process but may lose the last commits to a power cut.
        write_moves: Write changes by state into their rows on a thread of the store's
            own (default), a few thousand rows per transaction, until none is pending.
            ``False`` leaves them to :meth:`write_pending_moves` (tests); readers apply
            pending ones either way.

    Raises:
        ValueError: A negative ``max_events_per_batch`` or an unknown ``synchronous``.
        StorageUnavailableError: The database cannot be opened or migrated.
        SchemaTooNewError: The database was written by a newer version.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_events_per_batch: int | None = None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        synchronous: Synchronous = "FULL",
        write_moves: bool = True,
    ) -> None:
        if max_events_per_batch is not None and max_events_per_batch < 0:
            raise ValueError("max_events_per_batch must not be negative")
        self.path = path
        self._max_events = max_events_per_batch
        self._db = Connections(path, busy_timeout=busy_timeout, synchronous=synchronous)
        self._listeners_lock = threading.Lock()
        self._listeners: list[EventListener] = []
        # Which move (batch id, number) is being written into its rows, and the
        # position of the last row written: moves are written one at a time.
        self._move_cursor: tuple[tuple[str, int], int] = (("", 0), -1)
        self._mover = MoveWriter(self.write_pending_moves, name="pdfbatch-moves")
        self._write_moves = write_moves
        with self._db.read() as db:
            pending = db.execute(
                "SELECT 1 FROM batches WHERE pending_moves != '[]' LIMIT 1"
            ).fetchone()
        if pending is not None:
            # Left pending by the last run.
            self._wake_mover()

    def close(self) -> None:
        """Close every connection; later calls raise ``StorageUnavailableError``.

        Idempotent.
        """
        self._mover.stop()
        self._db.close()

    def write_pending_moves(self, rows: int = _MOVE_ROWS) -> bool:
        """Write part of one batch's oldest pending move into its rows, in one
        transaction, and forget the move once no row is left for it.

        Args:
            rows: The most rows to write.

        Returns:
            Whether a move was pending.

        Raises:
            StorageUnavailableError: The database failed; nothing was written.
        """
        with self._db.write() as db:
            row = db.execute(
                "SELECT batch_id, pending_moves FROM batches WHERE pending_moves != '[]' LIMIT 1"
            ).fetchone()
            if row is None:
                return False
            batch_id, text = row
            move = codec.moves_from_json(text)[0]
            key = (batch_id, move[0])
            cursor, after = self._move_cursor
            last = write_move(
                db, batch_id, move, after_position=after if cursor == key else -1, rows=rows
            )
            if last is None:
                db.execute(
                    "UPDATE batches SET pending_moves = json_remove(pending_moves, '$[0]') "
                    "WHERE batch_id = ?",
                    (batch_id,),
                )
        # Only once committed: a cursor past rows not written would skip them.
        self._move_cursor = (key, -1 if last is None else last)
        return True

    def _wake_mover(self) -> None:
        if self._write_moves:
            self._mover.wake()

    # Writes ------------------------------------------------------------------------

    def create_batch(self, view: BatchView) -> None:
        batch = view.batch
        with self._db.write() as db:
            try:
                db.execute(_INSERT_BATCH, codec.batch_to_row(batch))
            except sqlite3.IntegrityError:
                raise ValueError(f"batch {batch.batch_id} exists") from None
            db.execute(
                "UPDATE batches SET counts = ? WHERE batch_id = ?",
                (
                    codec.counts_to_json(view.counts, view.summary().files_with_warnings),
                    batch.batch_id,
                ),
            )
            if batch.idempotency_key:
                db.execute(
                    "INSERT INTO idempotency_keys (owner, key, batch_id) VALUES (?, ?, ?)",
                    (batch.owner, batch.idempotency_key, batch.batch_id),
                )
            db.executemany(
                INSERT_FILE,
                (
                    (batch.batch_id, position, *codec.file_to_row(record))
                    for position, record in enumerate(view.files)
                ),
            )
            db.executemany(
                UPSERT_ATTEMPT,
                (
                    (batch.batch_id, record.file_id, *codec.attempt_to_row(attempt))
                    for record in view.files
                    for attempt in record.attempts
                ),
            )

    def begin_upload(self, batch: BatchRecord) -> None:
        with self._db.write() as db:
            sqlite_uploads.begin(db, batch)

    def add_upload_files(
        self, batch_id: str, first_position: int, files: Sequence[FileRecord]
    ) -> None:
        with self._db.write() as db:
            sqlite_uploads.add_files(db, batch_id, first_position, files)

    def end_upload(self, batch_id: str, *, contents: str, at: float) -> str:
        with self._db.write() as db:
            return sqlite_uploads.end(db, batch_id, contents=contents, at=at)

    def drop_upload(self, batch_id: str, *, limit: int) -> list[str] | None:
        with self._db.write() as db:
            return sqlite_uploads.drop(db, batch_id, limit)

    def uploads_in_progress(self) -> list[str]:
        with self._db.read() as db:
            return sqlite_uploads.in_progress(db)

    def batch_contents(self, batch_id: str) -> str | None:
        with self._db.read() as db:
            row = db.execute(
                f"SELECT contents FROM batches WHERE batch_id = ? AND {_VISIBLE}", (batch_id,)
            ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def commit(
        self, changes: Changes, results: Mapping[str, SealedResult | ExtractionResult]
    ) -> None:
        """Store ``changes``, their events and ``results`` in one transaction.

        A sealed result's values are written as they came; a plain one (from tests and
        tools) is sealed first, inside the transaction.

        Raises:
            KeyError: No such batch.
            ValueError: The changes do not continue the stored event sequence (a
                second writer for the same batch); nothing was stored.
            StorageUnavailableError: The database failed; nothing was stored.
        """
        batch = changes.batch
        batch_id = batch.batch_id
        previous = changes.events[0].sequence - 1 if changes.events else batch.sequence
        with self._db.write() as db:
            updated = db.execute(
                _UPDATE_BATCH,
                (
                    batch.state.value,
                    batch.updated_at,
                    batch.sequence,
                    batch.reason,
                    codec.counts_to_json(changes.counts, changes.files_with_warnings),
                    batch_id,
                    previous,
                ),
            )
            if updated.rowcount != 1:
                self._refuse_commit(db, batch_id, previous)
            # Bulk changes first: a file's own record in the same commit is newer.
            bulks = [e.bulk for e in changes.events if e.bulk is not None]
            moved, more = record_bulk(db, batch_id, bulks)
            db.executemany(
                UPDATE_FILE,
                ((*codec.file_change_to_row(f), moved, batch_id, f.file_id) for f in changes.files),
            )
            db.executemany(
                UPSERT_ATTEMPT,
                (
                    (batch_id, f.file_id, *codec.attempt_to_row(attempt))
                    for f in changes.files
                    for attempt in f.attempts
                ),
            )
            db.executemany(
                "INSERT INTO events (batch_id, sequence, at, payload) VALUES (?, ?, ?, ?)",
                ((batch_id, e.sequence, e.at, codec.event_to_json(e)) for e in changes.events),
            )
            if self._max_events is not None:
                db.execute(
                    "DELETE FROM events WHERE batch_id = ? AND sequence <= ?",
                    (batch_id, batch.sequence - self._max_events),
                )
            if results:
                _insert_results(db, batch_id, results)
        if more:
            self._wake_mover()
        if changes.events:
            with self._listeners_lock:
                listeners = list(self._listeners)
            for listener in listeners:
                listener(changes.events)

    @staticmethod
    def _refuse_commit(db: sqlite3.Connection, batch_id: str, previous: int) -> None:
        row = db.execute("SELECT sequence FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
        if row is None:
            raise KeyError(batch_id)
        raise ValueError(
            f"batch {batch_id}: the changes follow event {previous}, but event {row[0]} "
            "is the last one stored"
        )

    def delete_batch(self, batch_id: str) -> None:
        with self._db.write() as db:
            db.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,))

    def release_bytes(self, batch_id: str, at: float) -> bool:
        with self._db.write() as db:
            marked = db.execute(
                "UPDATE batches SET bytes_released_at = ? WHERE batch_id = ? "
                f"AND bytes_released_at IS NULL AND state IN ({marks(len(_TERMINAL_STATES))})",
                (at, batch_id, *_TERMINAL_STATES),
            )
            return marked.rowcount == 1

    def prune_events(self, before: float) -> int:
        with self._db.write() as db:
            cutoffs = db.execute(
                "SELECT batch_id, MAX(sequence) FROM events WHERE at < ? GROUP BY batch_id",
                (before,),
            ).fetchall()
            pruned = 0
            for batch_id, last in cutoffs:
                pruned += db.execute(
                    "DELETE FROM events WHERE batch_id = ? AND sequence <= ?", (batch_id, last)
                ).rowcount
            return pruned

    def append_audit(self, entry: AuditEntry) -> None:
        with self._db.write() as db:
            db.execute(
                f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.at,
                    entry.request_id,
                    entry.caller,
                    entry.action,
                    entry.batch_id,
                    entry.outcome,
                    entry.detail,
                ),
            )

    # Reads -------------------------------------------------------------------------

    def tenant_usage(self, owner: str) -> tuple[int, int]:
        terminal = marks(len(_TERMINAL_STATES))
        with self._db.read() as db:
            (active,) = db.execute(
                f"SELECT COUNT(*) FROM batches WHERE owner = ? AND {_VISIBLE} "
                f"AND state NOT IN ({terminal})",
                (owner, *_TERMINAL_STATES),
            ).fetchone()
            (uploads,) = db.execute(
                "SELECT COALESCE(SUM(files.size), 0) FROM files JOIN batches USING (batch_id) "
                "WHERE batches.owner = ? AND batches.uploading = 0 "
                "AND batches.bytes_released_at IS NULL",
                (owner,),
            ).fetchone()
            (results,) = db.execute(
                "SELECT COALESCE(SUM(results.stored_bytes), 0) FROM results "
                "JOIN batches USING (batch_id) WHERE batches.owner = ?",
                (owner,),
            ).fetchone()
        return int(active), int(uploads) + int(results)

    def audit_entries(self, batch_id: str) -> list[AuditEntry]:
        with self._db.read() as db:
            rows = db.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE batch_id = ? ORDER BY id", (batch_id,)
            ).fetchall()
        return [AuditEntry(*row) for row in rows]

    def load(self, batch_id: str) -> BatchView | None:
        with self._db.read() as db:
            row = db.execute(
                f"{_SELECT_BATCH} WHERE batch_id = ? AND {_VISIBLE}", (batch_id,)
            ).fetchone()
            if row is None:
                return None
            moves = moves_of(db, batch_id) or ()
            file_rows = db.execute(SELECT_FILES, (batch_id,)).fetchall()
            attempt_rows = db.execute(SELECT_ATTEMPTS, (batch_id,)).fetchall()
        attempts: dict[str, list[Attempt]] = {}
        for file_id, *attempt in attempt_rows:
            attempts.setdefault(file_id, []).append(codec.attempt_from_row(attempt))
        files = tuple(file_of(r, attempts.get(r[0], ()), moves) for r in file_rows)
        return BatchView(codec.batch_from_row(row), files)

    def load_batch(self, batch_id: str) -> BatchRecord | None:
        with self._db.read() as db:
            row = db.execute(
                f"{_SELECT_BATCH} WHERE batch_id = ? AND {_VISIBLE}", (batch_id,)
            ).fetchone()
        return None if row is None else codec.batch_from_row(row)

    def batch_summary(self, batch_id: str, *, uploading: bool = False) -> BatchSummary | None:
        visible = "1" if uploading else _VISIBLE
        with self._db.read() as db:
            row = db.execute(
                f"{_SELECT_BATCH_SUMMARY} WHERE batch_id = ? AND {visible}", (batch_id,)
            ).fetchone()
            hidden = uploading and sqlite_uploads.is_uploading(db, batch_id)
        if row is None:
            return None
        summary = _summary_from_row(row)
        return dataclasses.replace(summary, uploading=True) if hidden else summary

    def batch_state_counts(self) -> dict[BatchState, int]:
        with self._db.read() as db:
            rows = db.execute(
                f"SELECT state, COUNT(*) FROM batches WHERE {_VISIBLE} GROUP BY state"
            ).fetchall()
        tally = {BatchState(state): int(n) for state, n in rows}
        return {state: tally.get(state, 0) for state in BatchState}

    def batches_in(
        self, states: Collection[BatchState], *, updated_by: float | None = None
    ) -> list[BatchRecord]:
        if not states:
            return []
        clause = f"{_VISIBLE} AND state IN ({marks(len(states))})"
        params: list[object] = [state.value for state in states]
        if updated_by is not None:
            clause += " AND updated_at <= ?"
            params.append(updated_by)
        with self._db.read() as db:
            rows = db.execute(
                f"{_SELECT_BATCH} WHERE {clause} ORDER BY updated_at, batch_id", params
            ).fetchall()
        return [codec.batch_from_row(row) for row in rows]

    def batch_summaries(
        self,
        *,
        owner: str | None,
        states: Collection[BatchState],
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[BatchSummary]:
        where: list[str] = [_VISIBLE]
        params: list[object] = []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if states:
            where.append(f"state IN ({marks(len(states))})")
            params.extend(state.value for state in states)
        if before is not None:
            where.append("(created_at, batch_id) < (?, ?)")
            params.extend(before)
        clause = f" WHERE {' AND '.join(where)}"
        with self._db.read() as db:
            rows = db.execute(
                f"{_SELECT_BATCH_SUMMARY}{clause} ORDER BY created_at DESC, batch_id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [_summary_from_row(row) for row in rows]

    def file_page(
        self,
        batch_id: str,
        *,
        states: Collection[FileState],
        after_position: int,
        limit: int,
        uploading: bool = False,
    ) -> FilePage | None:
        visible = "1" if uploading else _VISIBLE
        with self._db.read() as db:
            head = db.execute(
                "SELECT sequence, counts, pending_moves FROM batches "
                f"WHERE batch_id = ? AND {visible}",
                (batch_id,),
            ).fetchone()
            if head is None:
                return None
            moves = codec.moves_from_json(head[2])
            conditions = state_conditions(moves, frozenset(states)) if states else None
            query, params = page_query(batch_id, conditions, after_position, limit)
            rows = db.execute(query, params).fetchall()
            attempts: dict[str, list[Attempt]] = {}
            # The page's own files' attempts, by key: a join on the page's range of
            # positions made SQLite read every attempt of the batch (0.1 s a page at
            # 100,000 files that had run), and a page by state spans files of others.
            ids = [row[1] for row in rows]
            for start in range(0, len(ids), IDS_PER_READ):
                some = ids[start : start + IDS_PER_READ]
                for file_id, *attempt in db.execute(attempts_of(len(some)), (batch_id, *some)):
                    attempts.setdefault(file_id, []).append(codec.attempt_from_row(attempt))
        sequence, counts_json, _ = head
        counts = codec.counts_from_json(counts_json)
        total = sum(n for state, n in counts.items() if not states or state in states)
        files = tuple(
            (position, file_of(row, attempts.get(row[0], ()), moves)) for position, *row in rows
        )
        return FilePage(files, total, sequence)

    def file_records(self, batch_id: str, file_ids: Collection[str]) -> dict[str, FileRecord]:
        wanted = list(dict.fromkeys(file_ids))
        records: dict[str, FileRecord] = {}
        with self._db.read() as db:
            moves = moves_of(db, batch_id) or ()
            # In slices: SQLite bounds the parameters of one statement.
            for start in range(0, len(wanted), IDS_PER_READ):
                ids = wanted[start : start + IDS_PER_READ]
                records.update(read_records(db, batch_id, ids, moves))
        return records

    def count_files(
        self, batch_id: str, state: FileState, *, max_manual_retries: int | None = None
    ) -> int:
        with self._db.read() as db:
            head = db.execute(
                "SELECT counts, pending_moves FROM batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            if head is None:
                return 0
            # The batch's counts are its files' states after every move.
            in_state = codec.counts_from_json(head[0]).get(state, 0)
            if max_manual_retries is None or in_state == 0:
                return in_state
            moves = codec.moves_from_json(head[1])
            # A file a retry may not move has a limit's worth of manual retries (less
            # those the pending moves add) or has guessed its password wrong.
            floor = max_manual_retries - sum(bulk.manual_retry for _, bulk in moves)
            if floor <= 0:
                return count_by_conditions(db, batch_id, moves, state, max_manual_retries)
            ids = [
                file_id
                for (file_id,) in db.execute(
                    few_rows(":floor"), {"batch": batch_id, "floor": floor}
                )
            ]
            skipped = 0
            for start in range(0, len(ids), IDS_PER_READ):
                records = read_records(db, batch_id, ids[start : start + IDS_PER_READ], moves)
                skipped += sum(
                    record.state is state and not retryable(record, max_manual_retries)
                    for record in records.values()
                )
        return in_state - skipped

    def list_batches(self) -> list[BatchRecord]:
        with self._db.read() as db:
            rows = db.execute(
                f"{_SELECT_BATCH} WHERE {_VISIBLE} ORDER BY created_at DESC"
            ).fetchall()
        return [codec.batch_from_row(row) for row in rows]

    def find_by_idempotency_key(self, owner: str, key: str) -> str | None:
        with self._db.read() as db:
            row = db.execute(
                "SELECT batch_id FROM idempotency_keys WHERE owner = ? AND key = ?", (owner, key)
            ).fetchone()
        return None if row is None else str(row[0])

    def events_after(self, batch_id: str, sequence: int) -> list[BatchEvent]:
        with self._db.read() as db:
            rows = db.execute(
                "SELECT payload FROM events WHERE batch_id = ? AND sequence > ? ORDER BY sequence",
                (batch_id, sequence),
            ).fetchall()
        return [codec.event_from_json(payload) for (payload,) in rows]

    def load_result(self, batch_id: str, file_id: str) -> ExtractionResult | None:
        summary = self.result_summary(batch_id, file_id)
        if summary is None:
            return None
        pages: dict[int, list[str]] = {}
        for number, piece in self.result_text(batch_id, file_id):
            pages.setdefault(number, []).append(piece)
        return ExtractionResult(
            page_count=summary.page_count,
            encrypted=summary.encrypted,
            info=summary.info,
            pages=tuple("".join(pieces) for pieces in pages.values()),
            warnings=summary.warnings,
            details=summary.details,
        )

    def result_summary(self, batch_id: str, file_id: str) -> ResultSummary | None:
        with self._db.read() as db:
            row = db.execute(
                "SELECT page_count, encrypted, info, warnings, stored_bytes, details FROM results "
                "WHERE batch_id = ? AND file_id = ?",
                (batch_id, file_id),
            ).fetchone()
        if row is None:
            return None
        page_count, encrypted, info, warnings, stored_bytes, details = row
        return ResultSummary(
            page_count=page_count,
            encrypted=bool(encrypted),
            info=codec.info_from_json(info),
            warnings=codec.warnings_from_json(warnings),
            stored_bytes=stored_bytes,
            details=codec.details_from_json(details),
        )

    def result_text(self, batch_id: str, file_id: str) -> Iterator[tuple[int, str]]:
        # A few pieces per read transaction: memory stays bounded whatever the text's
        # size, and a slow reader never holds a transaction open (which would keep the
        # write-ahead log from being checkpointed).
        after = (0, 0)
        while True:
            with self._db.read() as db:
                rows = db.execute(
                    "SELECT page_number, part, text FROM result_text "
                    "WHERE batch_id = ? AND file_id = ? AND (page_number, part) > (?, ?) "
                    "ORDER BY page_number, part LIMIT ?",
                    (batch_id, file_id, *after, _PIECES_PER_READ),
                ).fetchall()
            for number, _, text in rows:
                yield number, text
            if len(rows) < _PIECES_PER_READ:
                return
            after = rows[-1][:2]

    def oldest_sequence(self, batch_id: str) -> int | None:
        with self._db.read() as db:
            row = db.execute(
                "SELECT sequence, (SELECT MIN(sequence) FROM events WHERE batch_id = ?) "
                f"FROM batches WHERE batch_id = ? AND {_VISIBLE}",
                (batch_id, batch_id),
            ).fetchone()
        if row is None:
            return None
        last, oldest = row
        return int(last) + 1 if oldest is None else int(oldest)

    def blob_in_use(self, digest: str) -> bool:
        with self._db.read() as db:
            row = db.execute(
                "SELECT 1 FROM files JOIN batches USING (batch_id) "
                "WHERE files.blob = ? AND batches.bytes_released_at IS NULL LIMIT 1",
                (digest,),
            ).fetchone()
        return row is not None

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        with self._listeners_lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._listeners_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def file_position(self, batch_id: str, file_id: str) -> int | None:
        with self._db.read() as db:
            row = db.execute(
                "SELECT position FROM files WHERE batch_id = ? AND file_id = ?",
                (batch_id, file_id),
            ).fetchone()
        return None if row is None else int(row[0])

    def file_record(self, batch_id: str, file_id: str) -> FileRecord | None:
        with self._db.read() as db:
            moves = moves_of(db, batch_id) or ()
            return read_records(db, batch_id, [file_id], moves).get(file_id)

    def file_history(
        self,
        batch_id: str,
        file_id: str,
        *,
        caller: str,
        after_sequence: int,
        after_request: int,
        until_request: int | None,
        limit: int,
    ) -> FileHistoryPage:
        # Each query is a keyset range of an index (schema version 7): the file's own
        # events, the batch's few bulk events (filtered on their file lists), and the
        # caller's requests about the batch. No query reads the batch's other events.
        with self._db.read() as db:
            own = db.execute(
                f"SELECT sequence, payload FROM events WHERE batch_id = ? "
                f"AND {_EVENT_FILE_ID} = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (batch_id, file_id, after_sequence, limit),
            ).fetchall()
            bulk = db.execute(
                f"SELECT sequence, payload FROM events WHERE batch_id = ? AND {_EVENT_IS_BULK} "
                "AND sequence > ? AND (json_extract(payload, '$.bulk.from_state') IS NOT NULL "
                "OR EXISTS (SELECT 1 FROM json_each(payload, '$.bulk.file_ids') WHERE value = ?)) "
                "ORDER BY sequence LIMIT ?",
                (batch_id, after_sequence, file_id, limit),
            ).fetchall()
            requests = db.execute(
                f"SELECT id, {_AUDIT_COLUMNS} FROM audit WHERE batch_id = ? AND caller = ? "
                "AND id > ? AND id <= ? "
                "AND (detail = '' OR instr(',' || detail || ',', ',' || ? || ',') > 0) "
                "ORDER BY id LIMIT ?",
                (
                    batch_id,
                    caller,
                    after_request,
                    2**62 if until_request is None else until_request,
                    file_id,
                    limit,
                ),
            ).fetchall()
            (newest,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()
        events = sorted((*own, *bulk))[:limit]
        return FileHistoryPage(
            tuple(codec.event_from_json(payload) for _, payload in events),
            tuple((number, AuditEntry(*entry)) for number, *entry in requests),
            int(newest),
        )
