"""Where batches live: the storage interface and the in-memory implementation.

The supervisor writes each message's changes, the events that announce them and any
results in one :meth:`Store.commit`, so a reader never sees an event whose state was not
stored. Durable implementations (SQLite) keep this same interface.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from actors.policy.book import Changes, moved_by, retryable
from actors.policy.model import (
    AuditEntry,
    BatchEvent,
    BatchRecord,
    BatchState,
    BatchSummary,
    BatchView,
    BulkChange,
    ExtractionResult,
    FilePage,
    FileRecord,
    FileState,
    ResultSummary,
)
from actors.policy.sealed import SealedResult, as_sealed, details_from_json, info_from_json, unseal

__all__ = [
    "EventListener",
    "FileHistoryPage",
    "MemoryStore",
    "Store",
    "concerns_file",
    "each_event",
]

EventListener = Callable[[Sequence[BatchEvent]], None]
"""Hears each commit's events: once per commit, all of them, in sequence order."""


def each_event(observe: Callable[[BatchEvent], None]) -> EventListener:
    """A listener that calls ``observe`` with each event of a commit in turn."""

    def listener(events: Sequence[BatchEvent]) -> None:
        for event in events:
            observe(event)

    return listener


@dataclass(frozen=True, slots=True)
class FileHistoryPage:
    """What one page of a file's history is merged from: two streams, each in order.

    Attributes:
        events: The batch's events that changed the file (its own, and bulk changes
            that list it), oldest first.
        requests: ``(id, entry)`` of the audited requests about its batch by one
            caller that concern the file (every file, or a list naming it), in the
            order they were audited; ids only grow.
        newest_request: The id of the newest request audited (about any batch) when
            the page was read: a listing that goes no further than it does not chase
            the requests that read it.
    """

    events: tuple[BatchEvent, ...]
    requests: tuple[tuple[int, AuditEntry], ...]
    newest_request: int


def concerns_file(entry: AuditEntry, file_id: str) -> bool:
    """Whether an audited request is about ``file_id``: it named no file (the whole
    batch), or named this one among its comma-separated file ids."""
    return not entry.detail or file_id in entry.detail.split(",")


class Store(Protocol):
    """Batch, file, event and result records."""

    def create_batch(self, view: BatchView) -> None:
        """Store a new batch and its files."""
        ...

    # An upload stores its batch as the files arrive (issue 15): begin_upload, then
    # add_upload_files a group at a time, then end_upload makes it visible, or
    # drop_upload removes it. Until its end, no other method sees the batch: not by
    # id, not in a list, count or usage (its bytes count only in blob_in_use).

    def begin_upload(self, batch: BatchRecord) -> None:
        """Store ``batch``, without files, as still uploading.

        Raises:
            ValueError: A batch with this id exists.
        """
        ...

    def add_upload_files(
        self, batch_id: str, first_position: int, files: Sequence[FileRecord]
    ) -> None:
        """Add ``files`` to an uploading batch, at ``first_position`` on, all or nothing.

        Raises:
            KeyError: No batch with this id is uploading.
        """
        ...

    def end_upload(self, batch_id: str, *, contents: str, at: float) -> str:
        """Make an uploading batch visible, created at ``at``, with its idempotency key
        and ``contents`` (its :func:`~actors.policy.contents.contents_digest`): in one
        transaction. Its counts stay as its supervisor committed them: it processes the
        files as they arrive.

        Returns:
            ``batch_id``; or, when the owner's batch with the same idempotency key was
            stored first, that batch's id, and nothing changed (the upload is still
            hidden, for :meth:`drop_upload`).

        Raises:
            KeyError: No batch with this id is uploading.
        """
        ...

    def drop_upload(self, batch_id: str, *, limit: int) -> list[str] | None:
        """Delete up to ``limit`` files of an uploading batch, the last ones first.

        Returns:
            The blobs those files referred to that no batch whose bytes are kept
            refers to any more (uploads included); ``None`` once the batch had no file
            left, when the batch itself was deleted (and for no such uploading batch).
        """
        ...

    def uploads_in_progress(self) -> list[str]:
        """The ids of the batches still uploading (after a crash: left behind)."""
        ...

    def batch_contents(self, batch_id: str) -> str | None:
        """The ``contents`` :meth:`end_upload` stored with a batch; ``None`` for a batch
        stored otherwise (:meth:`create_batch`), or no such batch."""
        ...

    def commit(
        self, changes: Changes, results: Mapping[str, SealedResult | ExtractionResult]
    ) -> None:
        """Store ``changes`` and the ``results`` (by file id) together, all or nothing.

        A sealed result is stored as it came; a plain one (from tests and tools) is
        sealed first, in the same transaction.
        """
        ...

    def load(self, batch_id: str) -> BatchView | None:
        """The batch and its files as last committed, or ``None``."""
        ...

    def load_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch's record as last committed, without its files, or ``None``."""
        ...

    def list_batches(self) -> list[BatchRecord]:
        """Every batch, newest first."""
        ...

    def batch_summary(self, batch_id: str, *, uploading: bool = False) -> BatchSummary | None:
        """The batch with its counts, without loading its files, or ``None``.

        With ``uploading``, a batch whose upload has not ended too (marked so): for its
        supervisor only, which processes the files as they arrive.
        """
        ...

    def batch_state_counts(self) -> dict[BatchState, int]:
        """How many batches are in each state, every state present (one aggregate)."""
        ...

    def batches_in(
        self, states: Collection[BatchState], *, updated_by: float | None = None
    ) -> list[BatchRecord]:
        """The batches in ``states`` (last changed at ``updated_by`` or before, if given),
        oldest change first: what resume and retention look for, from an index."""
        ...

    def batch_summaries(
        self,
        *,
        owner: str | None,
        states: Collection[BatchState],
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[BatchSummary]:
        """Up to ``limit`` batches with their counts, newest first, without their files.

        Args:
            owner: Only this owner's batches; ``None`` for everyone's.
            states: Only batches in these states; empty for all.
            before: Only batches whose ``(created_at, batch_id)`` is below this key (the
                last one of the previous page).
            limit: The most batches to return.
        """
        ...

    def file_page(
        self,
        batch_id: str,
        *,
        states: Collection[FileState],
        after_position: int,
        limit: int,
        uploading: bool = False,
    ) -> FilePage | None:
        """Up to ``limit`` files after ``after_position``, in submission order, with their
        attempts; ``None`` for no such batch (with ``uploading``, an uploading batch's
        too: for its supervisor only).

        Args:
            batch_id: The batch.
            states: Only files in these states; empty for all.
            after_position: The position of the previous page's last file; -1 to start.
            limit: The most files to return.
        """
        ...

    # The batch supervisor's working set (issue 15): it holds only the files it works
    # on, reads the next waiting ones with file_page(states={PENDING}) as slots free up,
    # and moves whole states at once with BatchBook.set_state (applied by commit).

    def file_records(self, batch_id: str, file_ids: Collection[str]) -> dict[str, FileRecord]:
        """The named files of the batch with their attempts, by id; ids it does not
        have are left out (as is every id of a batch that does not exist)."""
        ...

    def count_files(
        self, batch_id: str, state: FileState, *, max_manual_retries: int | None = None
    ) -> int:
        """Files of the batch in ``state``; with ``max_manual_retries``, only those a
        manual retry may move (see :func:`actors.policy.book.retryable`). 0 for no batch."""
        ...

    def find_by_idempotency_key(self, owner: str, key: str) -> str | None:
        """The id of ``owner``'s batch submitted with ``key``, if any."""
        ...

    def events_after(self, batch_id: str, sequence: int) -> list[BatchEvent]:
        """The batch's events with a sequence above ``sequence``, oldest first."""
        ...

    def load_result(self, batch_id: str, file_id: str) -> ExtractionResult | None:
        """The whole result of a succeeded file, or ``None``: for tests and small results."""
        ...

    def result_summary(self, batch_id: str, file_id: str) -> ResultSummary | None:
        """The result of a succeeded file without its text, or ``None``."""
        ...

    def result_text(self, batch_id: str, file_id: str) -> Iterator[tuple[int, str]]:
        """The result's text as ``(page_number, piece)``, in order, in bounded memory.

        A page comes in one or more pieces of at most
        :data:`actors.policy.results.TEXT_PIECE_CHARS` characters, to be joined in order; an
        empty page is one empty piece. Nothing for a file without a result.
        """
        ...

    def delete_batch(self, batch_id: str) -> None:
        """Remove the batch, its files, events and results."""
        ...

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        """Call ``listener`` after each commit that has events, with all of them in
        sequence order (one batch's), on the committing thread; returns unsubscribe.

        One call per commit, not per event: a listener that wakes someone (a watch)
        wakes them once for the commit's events, which they then take together.
        """
        ...

    def append_audit(self, entry: AuditEntry) -> None:
        """Add ``entry`` to the append-only audit trail."""
        ...

    def tenant_usage(self, owner: str) -> tuple[int, int]:
        """``owner``'s batches not yet settled, and the bytes its batches still hold.

        The bytes are the uploads its batches keep (until retention releases them) and
        the results they keep (until the batch is deleted).
        """
        ...

    def audit_entries(self, batch_id: str) -> list[AuditEntry]:
        """The audit trail of requests about ``batch_id``, oldest first."""
        ...

    def oldest_sequence(self, batch_id: str) -> int | None:
        """The sequence of the batch's oldest retained event, or ``None`` for no batch.

        ``events_after(batch_id, n)`` is complete for every ``n >= oldest - 1``. With no
        event retained it is the batch's next sequence (its last one plus 1).
        """
        ...

    def blob_in_use(self, digest: str) -> bool:
        """Whether a stored batch whose bytes are kept, or an upload in progress, has a
        file with the blob ``digest``."""
        ...

    def release_bytes(self, batch_id: str, at: float) -> bool:
        """Mark a terminal batch's uploaded bytes as removed (retention), at time ``at``.

        Its blobs then no longer count as in use, and its files cannot be retried.

        Returns:
            Whether the batch was marked now (not: unknown, not terminal, or marked
            before).
        """
        ...

    def prune_events(self, before: float) -> int:
        """Forget each batch's events up to its newest one before ``before``.

        What is kept of a batch's history stays contiguous, even if the clock went
        back. Returns how many events were forgotten.
        """
        ...

    def file_position(self, batch_id: str, file_id: str) -> int | None:
        """Where the file is in its batch's submission order (from 0), as
        :meth:`file_page` counts it; ``None`` for no such batch or file."""
        ...

    def file_record(self, batch_id: str, file_id: str) -> FileRecord | None:
        """One file of the batch with its attempts, or ``None``: without reading the
        batch's other files."""
        ...

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
        """The next part of a file's history, at most ``limit`` of each kind.

        Args:
            batch_id: The batch.
            file_id: The file.
            caller: Only requests audited for this caller (the batch's owner).
            after_sequence: Only events after this sequence.
            after_request: Only requests whose audit id is above this one.
            until_request: Only requests whose audit id is this one or below; ``None``
                for no bound.
            limit: The most events, and the most requests, to return.
        """
        ...


class MemoryStore:
    """A :class:`Store` in memory: for tests and for runs that need no durability.

    Args:
        max_events_per_batch: Keep only this many newest events per batch (older ones
            are forgotten, as a durable store's retention would). Default ``None``:
            keep every event.

    Raises:
        ValueError: ``max_events_per_batch`` is negative.
    """

    def __init__(self, *, max_events_per_batch: int | None = None) -> None:
        if max_events_per_batch is not None and max_events_per_batch < 0:
            raise ValueError("max_events_per_batch must not be negative")
        self._max_events = max_events_per_batch
        self._lock = threading.Lock()
        self._batches: dict[str, BatchRecord] = {}
        self._files: dict[str, dict[str, FileRecord]] = {}
        self._events: dict[str, list[BatchEvent]] = {}
        self._results: dict[tuple[str, str], SealedResult] = {}
        self._listeners: list[EventListener] = []
        self._audit: list[AuditEntry] = []
        # Uploads in progress, apart from the batches every reader sees: their record
        # (as its supervisor last committed it), files and events.
        self._uploading: dict[str, tuple[BatchRecord, dict[str, FileRecord]]] = {}
        self._upload_events: dict[str, list[BatchEvent]] = {}
        self._contents: dict[str, str] = {}

    def create_batch(self, view: BatchView) -> None:
        with self._lock:
            batch_id = view.batch.batch_id
            if batch_id in self._batches or batch_id in self._uploading:
                raise ValueError(f"batch {batch_id} exists")
            self._batches[batch_id] = view.batch
            self._files[batch_id] = {f.file_id: f for f in view.files}
            self._events[batch_id] = []

    def begin_upload(self, batch: BatchRecord) -> None:
        with self._lock:
            batch_id = batch.batch_id
            if batch_id in self._batches or batch_id in self._uploading:
                raise ValueError(f"batch {batch_id} exists")
            self._uploading[batch_id] = (batch, {})

    def add_upload_files(
        self, batch_id: str, first_position: int, files: Sequence[FileRecord]
    ) -> None:
        with self._lock:
            _, stored = self._uploading[batch_id]
            if first_position != len(stored):
                raise ValueError(f"batch {batch_id} has {len(stored)} files, not {first_position}")
            if any(f.file_id in stored for f in files):
                raise ValueError(f"batch {batch_id} has one of these files already")
            stored.update((f.file_id, f) for f in files)

    def end_upload(self, batch_id: str, *, contents: str, at: float) -> str:
        with self._lock:
            batch, stored = self._uploading[batch_id]
            key = (batch.owner, batch.idempotency_key)
            if batch.idempotency_key:
                for other in self._batches.values():
                    if (other.owner, other.idempotency_key) == key:
                        return other.batch_id
            del self._uploading[batch_id]
            self._batches[batch_id] = dataclasses.replace(batch, created_at=at)
            self._files[batch_id] = stored
            self._events[batch_id] = self._upload_events.pop(batch_id, [])
            self._contents[batch_id] = contents
            return batch_id

    def drop_upload(self, batch_id: str, *, limit: int) -> list[str] | None:
        with self._lock:
            upload = self._uploading.get(batch_id)
            if upload is None:
                return None
            stored = upload[1]
            if not stored:
                del self._uploading[batch_id]
                self._upload_events.pop(batch_id, None)
                return None
            dropped = {stored.pop(file_id).blob for file_id in list(stored)[-limit:]}
        return sorted(digest for digest in dropped if not self.blob_in_use(digest))

    def uploads_in_progress(self) -> list[str]:
        with self._lock:
            return list(self._uploading)

    def batch_contents(self, batch_id: str) -> str | None:
        with self._lock:
            return self._contents.get(batch_id)

    def commit(
        self, changes: Changes, results: Mapping[str, SealedResult | ExtractionResult]
    ) -> None:
        batch_id = changes.batch.batch_id
        sealed = {file_id: as_sealed(result) for file_id, result in results.items()}
        with self._lock:
            upload = self._uploading.get(batch_id)
            if upload is not None:
                self._uploading[batch_id] = (changes.batch, upload[1])
                files = upload[1]
                events = self._upload_events.setdefault(batch_id, [])
            else:
                stored = self._batches.get(batch_id)
                if stored is None:
                    raise KeyError(batch_id)
                # Whether the bytes were released is the store's to say, not the writer's.
                self._batches[batch_id] = dataclasses.replace(
                    changes.batch, bytes_released_at=stored.bytes_released_at
                )
                files = self._files[batch_id]
                events = self._events[batch_id]
            # Bulk changes first: a file's own record in the same commit is newer.
            for bulk in (e.bulk for e in changes.events if e.bulk is not None):
                _apply_bulk(bulk, files)
            for record in changes.files:
                files[record.file_id] = record
            events.extend(changes.events)
            if self._max_events is not None and len(events) > self._max_events:
                del events[: len(events) - self._max_events]
            for file_id, result in sealed.items():
                self._results[(batch_id, file_id)] = result
            listeners = list(self._listeners)
        if changes.events:
            for listener in listeners:
                listener(changes.events)

    def load(self, batch_id: str) -> BatchView | None:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return None
            return BatchView(batch, tuple(self._files[batch_id].values()))

    def load_batch(self, batch_id: str) -> BatchRecord | None:
        with self._lock:
            return self._batches.get(batch_id)

    def batch_summary(self, batch_id: str, *, uploading: bool = False) -> BatchSummary | None:
        view = self._uploading_view(batch_id) if uploading else None
        if view is not None:
            return dataclasses.replace(view.summary(), uploading=True)
        view = self.load(batch_id)
        return None if view is None else view.summary()

    def _uploading_view(self, batch_id: str) -> BatchView | None:
        with self._lock:
            upload = self._uploading.get(batch_id)
            return None if upload is None else BatchView(upload[0], tuple(upload[1].values()))

    def batch_state_counts(self) -> dict[BatchState, int]:
        with self._lock:
            tally = Counter(batch.state for batch in self._batches.values())
        return {state: tally.get(state, 0) for state in BatchState}

    def batches_in(
        self, states: Collection[BatchState], *, updated_by: float | None = None
    ) -> list[BatchRecord]:
        with self._lock:
            chosen = [
                batch
                for batch in self._batches.values()
                if batch.state in states and (updated_by is None or batch.updated_at <= updated_by)
            ]
        return sorted(chosen, key=lambda batch: (batch.updated_at, batch.batch_id))

    def batch_summaries(
        self,
        *,
        owner: str | None,
        states: Collection[BatchState],
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[BatchSummary]:
        with self._lock:
            chosen = sorted(
                (
                    batch
                    for batch in self._batches.values()
                    if (owner is None or batch.owner == owner)
                    and (not states or batch.state in states)
                    and (before is None or (batch.created_at, batch.batch_id) < before)
                ),
                key=lambda batch: (batch.created_at, batch.batch_id),
                reverse=True,
            )[:limit]
        return [summary for b in chosen if (summary := self.batch_summary(b.batch_id))]

    def file_page(
        self,
        batch_id: str,
        *,
        states: Collection[FileState],
        after_position: int,
        limit: int,
        uploading: bool = False,
    ) -> FilePage | None:
        view = (self._uploading_view(batch_id) if uploading else None) or self.load(batch_id)
        if view is None:
            return None
        matching = [
            (position, record)
            for position, record in enumerate(view.files)
            if not states or record.state in states
        ]
        page = tuple((p, r) for p, r in matching if p > after_position)[:limit]
        return FilePage(page, len(matching), view.batch.sequence)

    def file_records(self, batch_id: str, file_ids: Collection[str]) -> dict[str, FileRecord]:
        with self._lock:
            files = self._files.get(batch_id, {})
            return {file_id: files[file_id] for file_id in file_ids if file_id in files}

    def count_files(
        self, batch_id: str, state: FileState, *, max_manual_retries: int | None = None
    ) -> int:
        with self._lock:
            return sum(
                record.state is state
                and (max_manual_retries is None or retryable(record, max_manual_retries))
                for record in self._files.get(batch_id, {}).values()
            )

    def list_batches(self) -> list[BatchRecord]:
        with self._lock:
            return sorted(self._batches.values(), key=lambda b: b.created_at, reverse=True)

    def find_by_idempotency_key(self, owner: str, key: str) -> str | None:
        with self._lock:
            for batch in self._batches.values():
                if batch.owner == owner and batch.idempotency_key == key:
                    return batch.batch_id
            return None

    def events_after(self, batch_id: str, sequence: int) -> list[BatchEvent]:
        with self._lock:
            return [e for e in self._events.get(batch_id, ()) if e.sequence > sequence]

    def load_result(self, batch_id: str, file_id: str) -> ExtractionResult | None:
        with self._lock:
            result = self._results.get((batch_id, file_id))
        return None if result is None else unseal(result)

    def result_summary(self, batch_id: str, file_id: str) -> ResultSummary | None:
        with self._lock:
            result = self._results.get((batch_id, file_id))
        if result is None:
            return None
        return ResultSummary(
            result.page_count,
            result.encrypted,
            info_from_json(result.info_json),
            result.warnings,
            result.stored_bytes,
            details_from_json(result.details_json),
        )

    def result_text(self, batch_id: str, file_id: str) -> Iterator[tuple[int, str]]:
        with self._lock:
            result = self._results.get((batch_id, file_id))
        for number, pieces in enumerate(result.pages if result is not None else (), start=1):
            for piece in pieces:
                yield number, piece

    def delete_batch(self, batch_id: str) -> None:
        with self._lock:
            self._batches.pop(batch_id, None)
            self._files.pop(batch_id, None)
            self._events.pop(batch_id, None)
            self._contents.pop(batch_id, None)
            for key in [k for k in self._results if k[0] == batch_id]:
                del self._results[key]

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def oldest_sequence(self, batch_id: str) -> int | None:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return None
            events = self._events[batch_id]
            return events[0].sequence if events else batch.sequence + 1

    def blob_in_use(self, digest: str) -> bool:
        with self._lock:
            uploading = (files for _, files in self._uploading.values())
            kept = (
                files
                for batch_id, files in self._files.items()
                if self._batches[batch_id].bytes_released_at is None
            )
            return any(
                record.blob == digest for files in (*uploading, *kept) for record in files.values()
            )

    def release_bytes(self, batch_id: str, at: float) -> bool:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None or not batch.state.terminal or batch.bytes_released_at is not None:
                return False
            self._batches[batch_id] = dataclasses.replace(batch, bytes_released_at=at)
            return True

    def prune_events(self, before: float) -> int:
        with self._lock:
            pruned = 0
            for events in self._events.values():
                # Up to the newest old event, so what is kept never has a gap.
                old = max((i + 1 for i, e in enumerate(events) if e.at < before), default=0)
                del events[:old]
                pruned += old
            return pruned

    def append_audit(self, entry: AuditEntry) -> None:
        with self._lock:
            self._audit.append(entry)

    def audit_entries(self, batch_id: str) -> list[AuditEntry]:
        with self._lock:
            return [entry for entry in self._audit if entry.batch_id == batch_id]

    def tenant_usage(self, owner: str) -> tuple[int, int]:
        with self._lock:
            active = stored = 0
            for batch_id, batch in self._batches.items():
                if batch.owner != owner:
                    continue
                active += not batch.state.terminal
                if batch.bytes_released_at is None:
                    stored += sum(f.size for f in self._files[batch_id].values())
                stored += sum(
                    result.stored_bytes
                    for (owner_batch, _), result in self._results.items()
                    if owner_batch == batch_id
                )
            return active, stored

    def file_position(self, batch_id: str, file_id: str) -> int | None:
        with self._lock:
            files = self._files.get(batch_id, {})
            for position, known in enumerate(files):
                if known == file_id:
                    return position
            return None

    def file_record(self, batch_id: str, file_id: str) -> FileRecord | None:
        with self._lock:
            return self._files.get(batch_id, {}).get(file_id)

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
        with self._lock:
            events = tuple(
                event
                for event in self._events.get(batch_id, ())
                if event.sequence > after_sequence
                and (
                    (event.file is not None and event.file.file_id == file_id)
                    # A change by state, whichever files it moved: the history tells.
                    or (
                        event.bulk is not None
                        and (event.bulk.from_state is not None or file_id in event.bulk.file_ids)
                    )
                )
            )[:limit]
            requests = tuple(
                (number, entry)
                for number, entry in enumerate(self._audit, start=1)
                if after_request
                < number
                <= (len(self._audit) if until_request is None else until_request)
                and entry.batch_id == batch_id
                and entry.caller == caller
                and concerns_file(entry, file_id)
            )[:limit]
            newest = len(self._audit)
        return FileHistoryPage(events, requests, newest)


def _apply_bulk(bulk: BulkChange, files: dict[str, FileRecord]) -> None:
    """Move the files ``bulk`` moves, in place."""
    if bulk.from_state is None:
        for file_id in bulk.file_ids:
            files[file_id] = dataclasses.replace(
                files[file_id], state=bulk.state, next_attempt_at=None, error=bulk.error
            )
        return
    for file_id, record in list(files.items()):
        updated = moved_by(bulk, record)
        if updated is not None:
            files[file_id] = updated
