"""Domain records: batches, files, attempts, events, and the states they move through.

Records are frozen; the batch supervisor replaces a file's record on every change, so a
snapshot handed to a caller can never change under it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from actors.policy.catalogue import ErrorCode, spec_for
from actors.policy.document import DocumentDetails
from actors.policy.rules import BatchPolicy

__all__ = [
    "BATCH_TRANSITIONS",
    "DOCUMENT_INFO_FIELDS",
    "DOCUMENT_PARTS",
    "FILE_TRANSITIONS",
    "Attempt",
    "AttemptOutcome",
    "AuditEntry",
    "BatchEvent",
    "BatchRecord",
    "BatchState",
    "BatchSummary",
    "BatchView",
    "BulkChange",
    "DocumentInfo",
    "ExtractionResult",
    "FileError",
    "FilePage",
    "FileRecord",
    "FileState",
    "IllegalTransitionError",
    "ResultSummary",
    "ResultWarning",
    "WarningCode",
    "all_counts",
    "check_batch_transition",
    "check_file_transition",
    "ended_attempt",
    "settled_batch_state",
    "warned_files",
]


class _Keep(enum.Enum):
    """The default of a field :meth:`FileRecord.moved` keeps (``None`` is a value)."""

    KEEP = enum.auto()


_KEEP: Final = _Keep.KEEP


class FileState(enum.StrEnum):
    """Where a file is in its life."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """Whether the file stays in this state until someone retries it."""
        return self in _TERMINAL_FILE_STATES


_TERMINAL_FILE_STATES = frozenset({FileState.SUCCEEDED, FileState.FAILED, FileState.CANCELLED})


class BatchState(enum.StrEnum):
    """Where a batch is in its life."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    PARTIALLY_SUCCEEDED = "PARTIALLY_SUCCEEDED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """Whether nothing of the batch runs until someone retries files."""
        return self in _TERMINAL_BATCH_STATES


_TERMINAL_BATCH_STATES = frozenset(
    {
        BatchState.SUCCEEDED,
        BatchState.PARTIALLY_SUCCEEDED,
        BatchState.FAILED,
        BatchState.CANCELLED,
    }
)

_F = FileState
FILE_TRANSITIONS: Mapping[FileState, frozenset[FileState]] = {
    _F.PENDING: frozenset({_F.RUNNING, _F.FAILED, _F.CANCELLED}),
    # RUNNING -> PENDING is an attempt cut short by a restart: not a failure.
    _F.RUNNING: frozenset({_F.SUCCEEDED, _F.FAILED, _F.BACKOFF, _F.CANCELLED, _F.PENDING}),
    _F.BACKOFF: frozenset({_F.PENDING, _F.RUNNING, _F.FAILED, _F.CANCELLED}),
    _F.SUCCEEDED: frozenset(),
    _F.FAILED: frozenset({_F.PENDING}),
    _F.CANCELLED: frozenset({_F.PENDING}),
}

_B = BatchState
BATCH_TRANSITIONS: Mapping[BatchState, frozenset[BatchState]] = {
    _B.PENDING: frozenset({_B.RUNNING, _B.CANCELLING, _B.CANCELLED, _B.FAILED}),
    _B.RUNNING: frozenset(
        {_B.SUCCEEDED, _B.PARTIALLY_SUCCEEDED, _B.FAILED, _B.CANCELLING, _B.CANCELLED}
    ),
    _B.CANCELLING: frozenset({_B.CANCELLED}),
    _B.SUCCEEDED: frozenset(),
    _B.PARTIALLY_SUCCEEDED: frozenset({_B.RUNNING}),
    _B.FAILED: frozenset({_B.RUNNING}),
    _B.CANCELLED: frozenset({_B.RUNNING}),
}


class IllegalTransitionError(Exception):
    """A state change the state machine does not allow: a bug, never user input."""


def check_file_transition(current: FileState, target: FileState) -> None:
    """Raise :class:`IllegalTransitionError` unless ``current -> target`` is allowed."""
    if target not in FILE_TRANSITIONS[current]:
        raise IllegalTransitionError(f"file cannot go from {current} to {target}")


def check_batch_transition(current: BatchState, target: BatchState) -> None:
    """Raise :class:`IllegalTransitionError` unless ``current -> target`` is allowed."""
    if target not in BATCH_TRANSITIONS[current]:
        raise IllegalTransitionError(f"batch cannot go from {current} to {target}")


def settled_batch_state(counts: Mapping[FileState, int]) -> BatchState:
    """The terminal state of a batch whose files are all terminal.

    All succeeded is ``SUCCEEDED``; none succeeded is ``FAILED``; a mix is
    ``PARTIALLY_SUCCEEDED``, a result in its own right rather than an error.
    """
    succeeded = counts.get(FileState.SUCCEEDED, 0)
    total = sum(counts.values())
    if succeeded == total:
        return BatchState.SUCCEEDED
    if succeeded == 0:
        return BatchState.FAILED
    return BatchState.PARTIALLY_SUCCEEDED


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    # Cut short by a restart of the service or of a supervisor; not the file's fault.
    INTERRUPTED = "INTERRUPTED"


@dataclass(frozen=True, slots=True)
class FileError:
    """The last error of a file, as users see it."""

    code: ErrorCode
    at: float
    message: str = ""
    retryable: bool = False

    @classmethod
    def of(cls, code: ErrorCode, at: float) -> FileError:
        """The error for ``code`` with the catalogue's message."""
        spec = spec_for(code)
        return cls(code=code, at=at, message=spec.message, retryable=spec.retryable)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt at processing a file.

    Attributes:
        number: 1-based over the file's whole life, manual retries included.
        started_at: When it was handed to the executor.
        ended_at: When its outcome was known; ``None`` while running.
        outcome: How it ended; ``None`` while running.
        code: The failure's code, when it failed or was cancelled.
        worker_pid: The process that ran it, once known.
        retry_delay: The backoff chosen after it failed, when a retry was scheduled.
    """

    number: int
    started_at: float
    ended_at: float | None = None
    outcome: AttemptOutcome | None = None
    code: ErrorCode | None = None
    worker_pid: int | None = None
    retry_delay: float | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from start to end, once ended."""
        return None if self.ended_at is None else self.ended_at - self.started_at

    def ended(
        self,
        at: float,
        outcome: AttemptOutcome,
        *,
        code: ErrorCode | None = None,
        worker_pid: int | None = None,
        retry_delay: float | None = None,
    ) -> Attempt:
        """This attempt ended at ``at`` with ``outcome``; its worker's pid kept unless
        ``worker_pid`` names one. Built directly: see :meth:`FileRecord.moved`."""
        return Attempt(
            self.number,
            self.started_at,
            at,
            outcome,
            code,
            self.worker_pid if worker_pid is None else worker_pid,
            retry_delay,
        )


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One file of a batch.

    Attributes:
        file_id: Unique within the batch.
        name: The uploader's label for the file; never used as a path.
        blob: Content digest of the stored bytes.
        size: Size in bytes.
        state: Current state.
        attempts: Every attempt so far, oldest first.
        round_failures: Failures since the last (re)start; spends the retry budget.
        manual_retries: Manual retries so far.
        next_attempt_at: When a file in ``BACKOFF`` is due.
        error: The last error, cleared when the file succeeds or is retried.
        encrypted_with_password: Whether a password was supplied at submit or retry.
        warnings: What users should know about the file's result (no text layer, a
            damaged outline...), set when it succeeds; a file with warnings succeeded.
    """

    file_id: str
    name: str
    blob: str
    size: int
    state: FileState = FileState.PENDING
    attempts: tuple[Attempt, ...] = ()
    round_failures: int = 0
    manual_retries: int = 0
    next_attempt_at: float | None = None
    error: FileError | None = None
    encrypted_with_password: bool = False
    warnings: tuple[ResultWarning, ...] = ()

    def moved(
        self,
        state: FileState,
        *,
        attempts: tuple[Attempt, ...] | _Keep = _KEEP,
        round_failures: int | _Keep = _KEEP,
        manual_retries: int | _Keep = _KEEP,
        next_attempt_at: float | _Keep | None = _KEEP,
        error: FileError | _Keep | None = _KEEP,
        encrypted_with_password: bool | _Keep = _KEEP,
        warnings: tuple[ResultWarning, ...] | _Keep = _KEEP,
    ) -> FileRecord:
        """This record in ``state``, with the fields given changed and the others kept.

        What ``dataclasses.replace`` makes, built directly: ``replace`` looks every
        field up by name (4.3 µs here against 1.5 µs), and a batch's supervisor makes
        two of these a file (issue 16). The record checks nothing on construction, so
        nothing is skipped. A field added to the record must be added here too (a test
        walks the fields to make sure).
        """
        return FileRecord(
            self.file_id,
            self.name,
            self.blob,
            self.size,
            state,
            self.attempts if attempts is _KEEP else attempts,
            self.round_failures if round_failures is _KEEP else round_failures,
            self.manual_retries if manual_retries is _KEEP else manual_retries,
            self.next_attempt_at if next_attempt_at is _KEEP else next_attempt_at,
            self.error if error is _KEEP else error,
            (
                self.encrypted_with_password
                if encrypted_with_password is _KEEP
                else encrypted_with_password
            ),
            self.warnings if warnings is _KEEP else warnings,
        )


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A batch without its files.

    Attributes:
        batch_id: Unique id.
        name: Display name.
        policy: The batch's policy.
        state: Current state.
        created_at: Creation time (wall clock, seconds since the epoch).
        updated_at: Time of the last change.
        sequence: Sequence number of the last event; events only count up.
        reason: Why the batch failed or was cancelled, for people.
        labels: The uploader's labels.
        owner: Who submitted it.
        idempotency_key: The submitter's key; the same key from the same owner names
            the same batch.
        bytes_released_at: When retention removed the batch's uploaded bytes (its
            files can no longer be retried); ``None`` while they are kept. Set by the
            store only, never by the batch's supervisor.
    """

    batch_id: str
    name: str
    policy: BatchPolicy
    state: BatchState
    created_at: float
    updated_at: float
    sequence: int = 0
    reason: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    owner: str = ""
    idempotency_key: str = ""
    bytes_released_at: float | None = None

    def announced(self, sequence: int, at: float) -> BatchRecord:
        """This record once its event ``sequence`` happened at ``at``: each change of the
        batch or of its files. Built directly: see :meth:`FileRecord.moved`."""
        return BatchRecord(
            self.batch_id,
            self.name,
            self.policy,
            self.state,
            self.created_at,
            at,
            sequence,
            self.reason,
            self.labels,
            self.owner,
            self.idempotency_key,
            self.bytes_released_at,
        )


# Iterating an enum class is a Python generator; every event counts over this tuple.
_FILE_STATES = tuple(FileState)


def all_counts(counts: Mapping[FileState, int]) -> dict[FileState, int]:
    """``counts`` with every state present, zero included."""
    get = counts.get
    return {state: get(state, 0) for state in _FILE_STATES}


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """A batch without its files, with how many of them are in each state.

    What listings and status answers need, read without loading a single file.

    Attributes:
        batch: The batch's record.
        counts: Files per state, every state present.
        files_with_warnings: Succeeded files whose result carries warnings.
        uploading: Its upload has not ended: only its supervisor reads such a batch
            (``Store.batch_summary(uploading=True)``), and it must not settle yet.
    """

    batch: BatchRecord
    counts: Mapping[FileState, int]
    files_with_warnings: int = 0
    uploading: bool = False

    @property
    def file_count(self) -> int:
        """Files in the batch."""
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class FilePage:
    """One page of a batch's files, in submission order.

    Attributes:
        files: ``(position, record)`` of each file of the page; positions count from 0
            in submission order and name where the next page starts.
        total: Files that match the page's filter, in the whole batch.
        sequence: The batch's last event when the page was read: the files already
            show every change up to it.
    """

    files: tuple[tuple[int, FileRecord], ...]
    total: int
    sequence: int


@dataclass(frozen=True, slots=True)
class BatchView:
    """A consistent snapshot of a batch and all of its files."""

    batch: BatchRecord
    files: tuple[FileRecord, ...]

    @property
    def counts(self) -> Mapping[FileState, int]:
        """Files per state; every state present, zero included."""
        return all_counts(Counter(f.state for f in self.files))

    def summary(self) -> BatchSummary:
        """The batch with its counts, without its files."""
        return BatchSummary(self.batch, self.counts, warned_files(self.files))

    def file(self, file_id: str) -> FileRecord | None:
        """The file with ``file_id``, or ``None``."""
        return next((f for f in self.files if f.file_id == file_id), None)


@dataclass(frozen=True, slots=True)
class BulkChange:
    """Many files moved to one state by one decision (a cancel, a retry of every file).

    Either the files are listed (``file_ids``, when few changed), or the change covers
    every file that was in ``from_state`` (and, for a manual retry, could still be
    retried): then ``file_ids`` is empty and ``count`` says how many moved. The second
    form is stored as one statement and one event whatever the number of files, so no
    file is loaded into memory and no event is written per file; a watcher learns the
    count and reads the files again (``ListFiles``) if it keeps them.

    Each file's ``next_attempt_at`` is cleared and its ``error`` set; a manual retry
    also clears ``round_failures`` and adds one to ``manual_retries``. Nothing else of
    a file changes.

    Attributes:
        file_ids: The files, in submission order; empty for a change by state.
        state: Their new state.
        error: Their new error.
        from_state: For a change by state, the state every moved file was in.
        count: Files moved (``len(file_ids)`` for a listed change).
        manual_retry: A retry asked by a client: only files with manual retries left
            (fewer than ``max_manual_retries``) and password guesses left move.
        max_manual_retries: The batch's limit, for ``manual_retry``.
    """

    file_ids: tuple[str, ...]
    state: FileState
    error: FileError | None
    from_state: FileState | None = None
    count: int = -1
    manual_retry: bool = False
    max_manual_retries: int = 0

    def __post_init__(self) -> None:
        if self.count < 0:
            object.__setattr__(self, "count", len(self.file_ids))
        if (self.from_state is None) == (not self.file_ids) and self.count:
            raise ValueError("a bulk change lists its files or names the state they left")


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """One change of a batch, of one of its files, or of many files at once.

    Attributes:
        sequence: Per batch, starting at 1, without gaps.
        batch_id: The batch.
        at: When the change happened.
        batch_state: The batch's state after the change.
        file: The changed file's new record, for file changes.
        reason: Why, in words for people (never an exception's text).
        previous_state: The state the file or the batch left (the batch's for batch
            changes, the file's for file changes, ``None`` for bulk changes).
        bulk: The files changed together, for bulk changes.
        counts: The batch's files per state after the change, every state present;
            empty in events stored before counts were kept.
    """

    sequence: int
    batch_id: str
    at: float
    batch_state: BatchState
    file: FileRecord | None = None
    reason: str = ""
    previous_state: FileState | BatchState | None = None
    bulk: BulkChange | None = None
    counts: Mapping[FileState, int] = field(default_factory=dict)


def ended_attempt(event: BatchEvent) -> Attempt | None:
    """The attempt whose end ``event`` tells, if it tells one: the file's last attempt,
    when the file leaves RUNNING, or leaves PENDING by that attempt's end (an attempt a
    worker started and ended between two group commits is told by its end alone)."""
    file = event.file
    if file is None or not file.attempts:
        return None
    last = file.attempts[-1]
    if event.previous_state is FileState.RUNNING:
        return last
    if event.previous_state is FileState.PENDING and last.ended_at == event.at:
        return last
    return None


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """The document information dictionary, as far as the file has one."""

    title: str | None = None
    author: str | None = None
    subject: str | None = None
    creator: str | None = None
    producer: str | None = None
    creation_date: str | None = None
    modification_date: str | None = None


DOCUMENT_INFO_FIELDS = tuple(f.name for f in dataclasses.fields(DocumentInfo))
# The optional parts of a document's structure (see DocumentDetails), by the name a
# warning gives them.
DOCUMENT_PARTS = ("version", "pages", "outline", "attachments", "xmp")
# Where a warning applies: the pages' text, one field of the information dictionary,
# or one part of the document's structure.
_WARNING_PLACES = frozenset({"text", *DOCUMENT_INFO_FIELDS, *DOCUMENT_PARTS})
_PART_NAMES = {
    "version": "version header",
    "pages": "page sizes",
    "outline": "outline",
    "attachments": "attachment list",
    "xmp": "XMP metadata",
}


class WarningCode(enum.StrEnum):
    """Something users should know about a result that is otherwise whole."""

    # Characters no text store or wire can carry, replaced with U+FFFD.
    CHARACTERS_REPLACED = "CHARACTERS_REPLACED"
    # A metadata field longer than the limit, cut to it.
    METADATA_TRUNCATED = "METADATA_TRUNCATED"
    # No page has text: a scan or pictures of text, which needs OCR.
    NO_TEXT_LAYER = "NO_TEXT_LAYER"
    # Some pages, not all, have no text.
    PARTIAL_TEXT_LAYER = "PARTIAL_TEXT_LAYER"
    # An optional part of the document (its outline, attachments...) is damaged and
    # was left out; the text is whole.
    PART_UNREADABLE = "PART_UNREADABLE"
    # A part had more entries than a result keeps (or longer titles); the rest was cut.
    PART_TRUNCATED = "PART_TRUNCATED"


@dataclass(frozen=True, slots=True)
class ResultWarning:
    """One warning about a result: what, where, and how many characters.

    Built from plain values only (a code, a place among a fixed few, a count), so that
    the message users see is always composed here, whatever process reported it.

    Attributes:
        code: What happened.
        place: ``"text"`` for the pages, else the metadata field (``"title"``, ...) or
            the part of the document (``"outline"``, ...).
        count: Characters replaced or cut off; pages without text; entries left out;
            0 for a part that could not be read.
        total: Pages in the document, for the text-layer warnings; else 0.

    Raises:
        ValueError: An unknown place, or a negative count or total.
    """

    code: WarningCode
    place: str
    count: int
    total: int = 0

    def __post_init__(self) -> None:
        if self.place not in _WARNING_PLACES:
            raise ValueError(f"no such place for a warning: {self.place!r}")
        if self.count < 0 or self.total < 0:
            raise ValueError(
                f"a warning's count and total cannot be negative, got {self.count}, {self.total}"
            )

    @property
    def message(self) -> str:
        """The warning in a sentence for users."""
        where = "the text" if self.place == "text" else f"the document's {self.place}"
        match self.code:
            case WarningCode.CHARACTERS_REPLACED:
                return (
                    f"{_characters(self.count)} of {where} could not be kept (control "
                    "characters or invalid Unicode, from a broken font map usually) and "
                    "became U+FFFD."
                )
            case WarningCode.METADATA_TRUNCATED:
                return (
                    f"{where.capitalize()} was too long; its last {_characters(self.count)} "
                    "were cut off."
                )
            case WarningCode.NO_TEXT_LAYER:
                return (
                    f"No page has text ({_pages(self.total)}): the file is probably scanned "
                    "or made of images, and needs OCR to have its text read."
                )
            case WarningCode.PARTIAL_TEXT_LAYER:
                return (
                    f"{self.count:,} of {_pages(self.total)} have no text: they are probably "
                    "scanned or made of images, and need OCR to have their text read."
                )
            case WarningCode.PART_UNREADABLE:
                return (
                    f"The document's {_part(self.place)} could not be read (it is damaged) "
                    "and was left out; the text is not affected."
                )
            case WarningCode.PART_TRUNCATED:
                return (
                    f"The document's {_part(self.place)} was longer than a result keeps; "
                    f"{self.count:,} entries or characters were left out."
                )


def _characters(count: int) -> str:
    return "1 character" if count == 1 else f"{count:,} characters"


def _pages(count: int) -> str:
    return "1 page" if count == 1 else f"{count:,} pages"


def _part(place: str) -> str:
    return _PART_NAMES.get(place, place)


def warned_files(files: Iterable[FileRecord]) -> int:
    """Succeeded files whose result carries warnings."""
    return sum(1 for f in files if f.warnings and f.state is FileState.SUCCEEDED)


@dataclass(frozen=True, slots=True)
class ExtractionResult:
    """What processing one file produced.

    Attributes:
        page_count: Pages in the document.
        encrypted: Whether the document was encrypted.
        info: The document information dictionary.
        pages: Each page's text, in order.
        warnings: What users should know: what was changed to make the result safe
            to keep (see :mod:`actors.policy.results`), pages without text, parts of
            the document that could not be read.
        details: The document's structure: version, page sizes, outline, attachments.
    """

    page_count: int
    encrypted: bool
    info: DocumentInfo
    pages: tuple[str, ...]
    warnings: tuple[ResultWarning, ...] = ()
    details: DocumentDetails = field(default_factory=DocumentDetails)


@dataclass(frozen=True, slots=True)
class ResultSummary:
    """A stored result without its text, which is read piece by piece.

    Attributes:
        page_count: Pages in the document.
        encrypted: Whether the document was encrypted.
        info: The document information dictionary.
        warnings: What users should know about the result.
        stored_bytes: What the result takes in the store (its text and metadata in
            UTF-8); counts against its owner's storage quota.
        details: The document's structure.
    """

    page_count: int
    encrypted: bool
    info: DocumentInfo
    warnings: tuple[ResultWarning, ...]
    stored_bytes: int
    details: DocumentDetails = field(default_factory=DocumentDetails)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One request, as the audit trail keeps it: who did what to which batch, and how
    it ended. Append-only; it outlives the batch it names.

    Attributes:
        at: When the request ended.
        request_id: The request's id, as in the log.
        caller: The tenant that made it.
        action: What was asked (the RPC's name).
        batch_id: The batch concerned, if any.
        outcome: ``OK`` or the status code and reason it was refused with.
        detail: What else was asked (file ids of a retry, a cancel's reason).
    """

    at: float
    request_id: str
    caller: str
    action: str
    batch_id: str
    outcome: str
    detail: str = ""
