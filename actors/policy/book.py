"""The batch's book: its records, counts and event log, changed only through the state machine.

A :class:`BatchBook` is plain data with no threads and no I/O. The batch supervisor
owns one, holding only the files it works on; every change goes through
:meth:`BatchBook.set_file`, :meth:`BatchBook.set_state` or :meth:`BatchBook.set_batch`,
which check the transition, keep the counts right and append the event that announces
it. :meth:`BatchBook.take_changes` hands over what
changed since the last call, to be stored in one transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from actors.policy.model import (
    BatchEvent,
    BatchRecord,
    BatchState,
    BatchSummary,
    BatchView,
    BulkChange,
    FileError,
    FileRecord,
    FileState,
    all_counts,
    check_batch_transition,
    check_file_transition,
)
from actors.policy.rules import password_guesses_exhausted

__all__ = ["BatchBook", "Changes", "moved_by", "retryable"]


def retryable(record: FileRecord, max_manual_retries: int) -> bool:
    """Whether a manual retry may move ``record``, by its retries and password guesses
    (its state aside)."""
    return record.manual_retries < max_manual_retries and not password_guesses_exhausted(
        a.code for a in record.attempts
    )


def moved_by(bulk: BulkChange, record: FileRecord) -> FileRecord | None:
    """``record`` as a change by state leaves it, or ``None`` if the change skips it.

    The one rule for what such a change does to a file, whoever applies it: the book to
    the files it holds, a store to its rows (at once, or when it reads a row the change
    has not been written into yet).
    """
    if record.state is not bulk.from_state:
        return None
    if bulk.manual_retry and not retryable(record, bulk.max_manual_retries):
        return None
    if bulk.manual_retry:
        return dataclasses.replace(
            record,
            state=bulk.state,
            next_attempt_at=None,
            error=bulk.error,
            round_failures=0,
            manual_retries=record.manual_retries + 1,
        )
    return dataclasses.replace(record, state=bulk.state, next_attempt_at=None, error=bulk.error)


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed since the last :meth:`BatchBook.take_changes`: one transaction."""

    batch: BatchRecord
    files: tuple[FileRecord, ...]
    events: tuple[BatchEvent, ...]
    # Files per state after the changes, every state present: stored with the batch,
    # so required: an empty default would store a batch of no files.
    counts: Mapping[FileState, int]
    # Succeeded files with warnings after the changes, stored with the counts.
    files_with_warnings: int
    # Files were added (an upload's) without an event: the counts alone are to store.
    counts_changed: bool = False

    def __bool__(self) -> bool:
        return bool(self.events) or self.counts_changed


class BatchBook:
    """A batch's record, its counts and the files it holds, kept consistent with its
    state machine.

    The book holds files, not the batch: a supervisor gives it the files it works on
    (running, in backoff, the next few waiting) and the counts of all of them, so its
    memory does not grow with the batch. Made from a whole :class:`BatchView` (tests,
    small tools) it holds every file. A change by state (:meth:`set_state`) moves the
    files it does not hold too, through the store.

    Args:
        view: The batch as stored: a whole view, or a summary (the record and counts).
        files: With a summary, the files to hold from the start.
    """

    def __init__(self, view: BatchView | BatchSummary, files: Iterable[FileRecord] = ()) -> None:
        self._batch = view.batch
        held = view.files if isinstance(view, BatchView) else tuple(files)
        self._files: dict[str, FileRecord] = {}
        # The held files in a terminal state: what forget_settled looks at, instead of
        # every held file at every commit.
        self._settled: set[str] = set()
        for record in held:
            self._put(record)
        # Every state present, in FileState's order: an event's counts are a copy.
        self._counts: dict[FileState, int] = all_counts(view.counts)
        self._warned = (view.summary() if isinstance(view, BatchView) else view).files_with_warnings
        self._dirty: dict[str, FileRecord] = {}
        self._events: list[BatchEvent] = []
        # Files moved without an event, with the state last told of them.
        self._untold: dict[str, FileState] = {}
        self._arrived = False

    @property
    def batch(self) -> BatchRecord:
        """The batch record as it is now."""
        return self._batch

    @property
    def total(self) -> int:
        """Number of files in the batch (held or not)."""
        return sum(self._counts.values())

    def file(self, file_id: str) -> FileRecord:
        """A held file's record. Raises ``KeyError`` for a file not held."""
        return self._files[file_id]

    def holds(self, file_id: str) -> bool:
        """Whether the book holds the file's record."""
        return file_id in self._files

    def hold(self, record: FileRecord) -> FileRecord:
        """Hold ``record``, read from the store, unless a newer one is held already.

        Returns:
            The record held for the file now.
        """
        held = self._files.get(record.file_id)
        if held is not None:
            return held
        self._put(record)
        return record

    def forget_settled(self) -> None:
        """Stop holding files in a terminal state whose changes were handed over."""
        kept: set[str] = set()
        for file_id in self._settled:
            if file_id in self._dirty:
                kept.add(file_id)
            else:
                del self._files[file_id]
        self._settled = kept

    @property
    def held(self) -> int:
        """Number of files held."""
        return len(self._files)

    def files(self) -> list[FileRecord]:
        """Every held file, in the order they were taken in (submission order for a
        book made from a view)."""
        return list(self._files.values())

    def count(self, state: FileState) -> int:
        """Files in ``state``, held or not."""
        return self._counts[state]

    @property
    def files_with_warnings(self) -> int:
        """Succeeded files whose result carries warnings."""
        return self._warned

    @property
    def unsettled(self) -> int:
        """Files not in a terminal state."""
        counts = self._counts
        return sum([counts[state] for state in _UNSETTLED_STATES])

    @property
    def pending_events(self) -> int:
        """Events since the last :meth:`take_changes`."""
        return len(self._events)

    @property
    def changed(self) -> bool:
        """Whether :meth:`take_changes` has anything to hand over."""
        return bool(self._events or self._dirty or self._arrived)

    def files_arrived(self, total: int) -> int:
        """An upload's batch has ``total`` files now: count those not counted yet as
        PENDING (no event; the counts are stored with the next changes).

        Returns:
            How many files were added (none when they were counted already).
        """
        added = total - self.total
        if added <= 0:
            return 0
        self._counts[FileState.PENDING] += added
        self._arrived = True
        return added

    def summary(self) -> BatchSummary:
        """The batch and its counts as they are now."""
        return BatchSummary(self._batch, self._counts.copy(), self._warned)

    def view(self) -> BatchView:
        """The batch and its held files (every file for a book made from a whole view)."""
        return BatchView(self._batch, tuple(self._files.values()))

    def set_file(
        self,
        file_id: str,
        state: FileState,
        now: float,
        reason: str = "",
        *,
        announce: bool = True,
        via: FileState | None = None,
        **changes: Any,
    ) -> FileRecord:
        """Move a held file to ``state`` for ``reason``, applying ``changes``; log the event.

        With ``announce`` false the move is stored but no event tells it: for a step
        that the file's next move, in the same commit, tells with its own (a worker's
        start of an attempt that ended before the commit). That event's previous state
        is the last one told. With ``via``, the file passes through that state on the
        way: the two steps made one, as such an unannounced step and the move that
        follows it would make them.

        Raises:
            IllegalTransitionError: The state machine does not allow the move (either
                step of it, with ``via``).
            KeyError: The file is not held.
        """
        current = self._files[file_id]
        previous = current.state
        if via is None:
            check_file_transition(previous, state)
        else:
            check_file_transition(previous, via)
            check_file_transition(via, state)
        updated = current.moved(state, **changes)
        self._put(updated)
        self._dirty[file_id] = updated
        self._counts[previous] -= 1
        self._counts[state] += 1
        self._warned += _warned(updated) - _warned(current)
        if announce:
            told = self._untold.pop(file_id, previous)
            self._announce(now, file=updated, reason=reason, previous=told)
        else:
            self._untold.setdefault(file_id, previous)
        return updated

    def set_files(
        self,
        file_ids: list[str],
        state: FileState,
        now: float,
        reason: str,
        *,
        error: FileError | None,
    ) -> None:
        """Move many held files to ``state`` with one :class:`BulkChange` event naming them.

        Each file's ``next_attempt_at`` is cleared and its ``error`` set. Nothing
        happens for an empty list.

        Raises:
            IllegalTransitionError: The state machine does not allow a file's move;
                then no file was moved.
            KeyError: A file is not held; then no file was moved.
        """
        if not file_ids:
            return
        for previous in {self._files[file_id].state for file_id in file_ids}:
            check_file_transition(previous, state)
        for file_id in file_ids:
            current = self._files[file_id]
            self._counts[current.state] -= 1
            moved = dataclasses.replace(current, state=state, next_attempt_at=None, error=error)
            self._replace(moved)
        self._counts[state] += len(file_ids)
        self._announce(
            now, reason=reason, previous=None, bulk=BulkChange(tuple(file_ids), state, error)
        )

    def set_state(
        self,
        from_state: FileState,
        state: FileState,
        now: float,
        reason: str,
        *,
        error: FileError | None,
        count: int,
        max_manual_retries: int | None = None,
    ) -> None:
        """Move every file in ``from_state``, held or not, to ``state`` in one event.

        The store applies the change to the files the book does not hold (one
        statement), so call this with no change of a file held back: right after
        :meth:`take_changes` was stored. Nothing happens when ``count`` is 0.

        Args:
            from_state: The state the files leave.
            state: The state they enter.
            now: When.
            reason: Why, for people.
            error: Their new error.
            count: How many move, as the store counts them (the book knows only the
                number in ``from_state``, not which of them a manual retry may move).
            max_manual_retries: For a manual retry: only files with fewer manual
                retries than this and with password guesses left move; they get their
                retry counted and their failures of the round cleared.

        Raises:
            IllegalTransitionError: The state machine does not allow the move.
            ValueError: ``count`` is more than the files in ``from_state``.
        """
        if count == 0:
            return
        check_file_transition(from_state, state)
        if count > self._counts[from_state]:
            held = self._counts[from_state]
            raise ValueError(f"{count} files cannot leave {from_state.value}: {held} are in it")
        bulk = BulkChange(
            (),
            state,
            error,
            from_state=from_state,
            count=count,
            manual_retry=max_manual_retries is not None,
            max_manual_retries=max_manual_retries or 0,
        )
        for current in list(self._files.values()):
            updated = moved_by(bulk, current)
            if updated is not None:
                self._replace(updated)
        self._counts[from_state] -= count
        self._counts[state] += count
        self._announce(now, reason=reason, previous=None, bulk=bulk)

    def _replace(self, updated: FileRecord) -> None:
        current = self._files[updated.file_id]
        self._warned += _warned(updated) - _warned(current)
        self._put(updated)
        # A change of the same file held back for this commit is now out of date; the
        # bulk change carries the rest.
        if updated.file_id in self._dirty:
            self._dirty[updated.file_id] = updated

    def set_batch(self, state: BatchState, now: float, reason: str = "") -> None:
        """Move the batch to ``state`` for ``reason`` and log the event.

        Raises:
            IllegalTransitionError: The state machine does not allow the move.
        """
        previous = self._batch.state
        check_batch_transition(previous, state)
        self._batch = dataclasses.replace(self._batch, state=state, reason=reason)
        self._announce(now, reason=reason, previous=previous)

    def take_changes(self) -> Changes:
        """Hand over every change since the last call."""
        changes = Changes(
            self._batch,
            tuple(self._dirty.values()),
            tuple(self._events),
            self._counts.copy(),
            self._warned,
            self._arrived,
        )
        self._dirty.clear()
        self._events.clear()
        self._arrived = False
        return changes

    def _announce(
        self,
        now: float,
        *,
        file: FileRecord | None = None,
        reason: str,
        previous: FileState | BatchState | None,
        bulk: BulkChange | None = None,
    ) -> None:
        sequence = self._batch.sequence + 1
        self._batch = self._batch.announced(sequence, now)
        self._events.append(
            BatchEvent(
                sequence=sequence,
                batch_id=self._batch.batch_id,
                at=now,
                batch_state=self._batch.state,
                file=file,
                reason=reason,
                previous_state=previous,
                bulk=bulk,
                counts=self._counts.copy(),
            )
        )

    def _put(self, record: FileRecord) -> None:
        """Hold ``record`` as the file's record now."""
        file_id = record.file_id
        self._files[file_id] = record
        if record.state in _TERMINAL_STATES:
            self._settled.add(file_id)
        else:
            self._settled.discard(file_id)


_TERMINAL_STATES = frozenset(state for state in FileState if state.terminal)
_UNSETTLED_STATES = tuple(state for state in FileState if not state.terminal)


def _warned(record: FileRecord) -> int:
    """1 for a succeeded file whose result carries warnings (see
    :func:`~actors.policy.model.warned_files`), else 0."""
    return 1 if record.warnings and record.state is FileState.SUCCEEDED else 0
