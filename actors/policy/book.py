"""The batch's book: its records, counts and event log, changed only through the state machine.

A :class:`BatchBook` is plain data with no threads and no I/O. The batch supervisor
owns one; every change goes through :meth:`BatchBook.set_file` or
:meth:`BatchBook.set_batch`, which check the transition, keep the counts right and
append the event that announces it. :meth:`BatchBook.take_changes` hands over what
changed since the last call, to be stored in one transaction.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from actors.policy.model import (
    BatchEvent,
    BatchRecord,
    BatchState,
    BatchView,
    BulkChange,
    FileError,
    FileRecord,
    FileState,
    all_counts,
    check_batch_transition,
    check_file_transition,
    warned_files,
)

__all__ = ["BatchBook", "Changes"]


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

    def __bool__(self) -> bool:
        return bool(self.events)


class BatchBook:
    """A batch's records, kept consistent with its state machine."""

    def __init__(self, view: BatchView) -> None:
        self._batch = view.batch
        self._files: dict[str, FileRecord] = {f.file_id: f for f in view.files}
        self._counts: Counter[FileState] = Counter(f.state for f in view.files)
        self._warned = warned_files(view.files)
        self._dirty: dict[str, FileRecord] = {}
        self._events: list[BatchEvent] = []

    @property
    def batch(self) -> BatchRecord:
        """The batch record as it is now."""
        return self._batch

    @property
    def total(self) -> int:
        """Number of files."""
        return len(self._files)

    def file(self, file_id: str) -> FileRecord:
        """The file's record. Raises ``KeyError`` for an unknown id."""
        return self._files[file_id]

    def files(self) -> list[FileRecord]:
        """Every file, in submission order."""
        return list(self._files.values())

    def count(self, state: FileState) -> int:
        """Files in ``state``."""
        return self._counts[state]

    @property
    def files_with_warnings(self) -> int:
        """Succeeded files whose result carries warnings."""
        return self._warned

    @property
    def unsettled(self) -> int:
        """Files not in a terminal state."""
        return sum(n for state, n in self._counts.items() if not state.terminal)

    @property
    def pending_events(self) -> int:
        """Events since the last :meth:`take_changes`."""
        return len(self._events)

    def view(self) -> BatchView:
        """A snapshot of the batch and its files."""
        return BatchView(self._batch, tuple(self._files.values()))

    def set_file(
        self, file_id: str, state: FileState, now: float, reason: str = "", **changes: Any
    ) -> FileRecord:
        """Move a file to ``state`` for ``reason``, applying ``changes``; log the event.

        Raises:
            IllegalTransitionError: The state machine does not allow the move.
        """
        current = self._files[file_id]
        check_file_transition(current.state, state)
        updated = dataclasses.replace(current, state=state, **changes)
        self._files[file_id] = updated
        self._dirty[file_id] = updated
        self._counts[current.state] -= 1
        self._counts[state] += 1
        self._warned += warned_files((updated,)) - warned_files((current,))
        self._announce(now, file=updated, reason=reason, previous=current.state)
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
        """Move many files to ``state`` with one :class:`BulkChange` event.

        Each file's ``next_attempt_at`` is cleared and its ``error`` set. Nothing
        happens for an empty list.

        Raises:
            IllegalTransitionError: The state machine does not allow a file's move;
                then no file was moved.
        """
        if not file_ids:
            return
        for previous in {self._files[file_id].state for file_id in file_ids}:
            check_file_transition(previous, state)
        for file_id in file_ids:
            current = self._files[file_id]
            updated = dataclasses.replace(current, state=state, next_attempt_at=None, error=error)
            self._files[file_id] = updated
            self._counts[current.state] -= 1
            self._warned += warned_files((updated,)) - warned_files((current,))
            # A change of the same file held back for this commit is now out of date;
            # the bulk change carries the rest.
            if file_id in self._dirty:
                self._dirty[file_id] = updated
        self._counts[state] += len(file_ids)
        self._announce(
            now, reason=reason, previous=None, bulk=BulkChange(tuple(file_ids), state, error)
        )

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
            all_counts(self._counts),
            self._warned,
        )
        self._dirty.clear()
        self._events.clear()
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
        self._batch = dataclasses.replace(self._batch, sequence=sequence, updated_at=now)
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
                counts=all_counts(self._counts),
            )
        )
