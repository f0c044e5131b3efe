"""Domain records to protobuf messages and back; request validation at the edge.

Times are seconds since the epoch in the domain and ``Timestamp``/``Duration`` on the
wire. Enum values map by name: ``BatchState.RUNNING`` is ``BATCH_STATE_RUNNING``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from pydantic import ValidationError

from actors.policy.catalogue import has_hidden_characters
from actors.policy.document import DocumentDetails, ExtractionMode, PageInfo
from actors.policy.model import (
    Attempt,
    AttemptOutcome,
    AuditEntry,
    BatchEvent,
    BatchState,
    BatchSummary,
    BatchView,
    FileError,
    FileRecord,
    FileState,
    ResultSummary,
    ResultWarning,
)
from actors.policy.results import TEXT_PIECE_CHARS
from actors.policy.rules import BatchPolicy
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.wire.errors import FieldViolation, WireError

__all__ = [
    "BatchSpec",
    "batch_state_from_proto",
    "batch_state_to_proto",
    "batch_to_proto",
    "coalesced_event_frame",
    "details_to_proto",
    "event_to_proto",
    "exported_file",
    "file_state_from_proto",
    "file_to_proto",
    "page_details_to_proto",
    "policy_from_proto",
    "policy_to_proto",
    "result_chunks",
    "snapshot_to_proto",
    "spec_from_proto",
    "summary_to_proto",
    "warning_to_proto",
]

MAX_DISPLAY_NAME_CHARS = 200
MAX_LABELS = 64
MAX_LABEL_KEY_CHARS = 63
MAX_LABEL_VALUE_CHARS = 256
MAX_IDEMPOTENCY_KEY_CHARS = 128

_KEY_CHARS = re.compile(r"[\x21-\x7e]+")
_JITTER = {pb.JITTER_FULL: "full", pb.JITTER_NONE: "none"}
# Domain field names that differ from the proto's.
_FIELD_NAMES = {"within_seconds": "within"}


_NANOS = 1_000_000_000
_BATCH_STATES = {state: pb.BatchState.Value(f"BATCH_STATE_{state.value}") for state in BatchState}
_FILE_STATES = {state: pb.FileState.Value(f"FILE_STATE_{state.value}") for state in FileState}
_OUTCOMES = {
    outcome: pb.AttemptOutcome.Value(f"ATTEMPT_OUTCOME_{outcome.value}")
    for outcome in AttemptOutcome
}


# Scalars -----------------------------------------------------------------------------


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    # What Timestamp.FromNanoseconds sets, without its Python-level method: a watch
    # converts three or four times an event.
    nanos = round(seconds * 1e9)
    return timestamp_pb2.Timestamp(seconds=nanos // _NANOS, nanos=nanos % _NANOS)


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def batch_state_to_proto(state: BatchState) -> pb.BatchState.ValueType:
    """``BatchState.RUNNING`` -> ``BATCH_STATE_RUNNING``."""
    return _BATCH_STATES[state]


def batch_state_from_proto(value: pb.BatchState.ValueType, field_path: str) -> BatchState:
    """``BATCH_STATE_RUNNING`` -> ``BatchState.RUNNING``.

    Raises:
        WireError: ``INVALID_ARGUMENT`` for ``UNSPECIFIED`` or an unknown value.
    """
    name = pb.BatchState.Name(value) if value in pb.BatchState.values() else ""
    if not name or value == pb.BATCH_STATE_UNSPECIFIED:
        raise _invalid("INVALID_STATE", [FieldViolation(field_path, "Name a batch state.")])
    return BatchState(name.removeprefix("BATCH_STATE_"))


def file_state_from_proto(value: pb.FileState.ValueType, field_path: str) -> FileState:
    """``FILE_STATE_FAILED`` -> ``FileState.FAILED``.

    Raises:
        WireError: ``INVALID_ARGUMENT`` for ``UNSPECIFIED`` or an unknown value.
    """
    name = pb.FileState.Name(value) if value in pb.FileState.values() else ""
    if not name or value == pb.FILE_STATE_UNSPECIFIED:
        raise _invalid("INVALID_STATE", [FieldViolation(field_path, "Name a file state.")])
    return FileState(name.removeprefix("FILE_STATE_"))


def _file_state(state: FileState) -> pb.FileState.ValueType:
    return _FILE_STATES[state]


# Records -----------------------------------------------------------------------------


def _attempt_to_proto(attempt: Attempt) -> pb.Attempt:
    # One constructor call with every field set: each CopyFrom or assignment after it
    # is a call of its own into the protobuf runtime.
    fields: dict[str, Any] = {
        "number": attempt.number,
        "start_time": _timestamp(attempt.started_at),
    }
    if attempt.ended_at is not None:
        fields["end_time"] = _timestamp(attempt.ended_at)
    if attempt.outcome is not None:
        fields["outcome"] = _OUTCOMES[attempt.outcome]
    if attempt.code is not None:
        fields["code"] = attempt.code.value
    if attempt.worker_pid is not None:
        fields["worker_pid"] = attempt.worker_pid
    if attempt.retry_delay is not None:
        fields["retry_delay"] = _duration(attempt.retry_delay)
    return pb.Attempt(**fields)


def file_to_proto(record: FileRecord) -> pb.FileStatus:
    """A file's status, every attempt included."""
    return pb.FileStatus(
        file_id=record.file_id,
        name=record.name,
        state=_FILE_STATES[record.state],
        attempt_count=len(record.attempts),
        attempts=[_attempt_to_proto(a) for a in record.attempts],
        size_bytes=record.size,
        sha256=record.blob,
        manual_retries=record.manual_retries,
        password_supplied=record.encrypted_with_password,
        warnings=[warning_to_proto(w) for w in record.warnings] if record.warnings else None,
        error=None if record.error is None else _error_to_proto(record.error),
        next_attempt_time=(
            None if record.next_attempt_at is None else _timestamp(record.next_attempt_at)
        ),
    )


def warning_to_proto(warning: ResultWarning) -> pb.ResultWarning:
    """A warning with its message for people."""
    return pb.ResultWarning(
        code=warning.code.value,
        message=warning.message,
        place=warning.place,
        count=warning.count,
        total=warning.total,
    )


def details_to_proto(details: DocumentDetails) -> pb.DocumentDetails:
    """The document's structure without its pages (see :func:`page_details_to_proto`)."""
    message = pb.DocumentDetails(
        outline=[
            pb.OutlineEntry(title=e.title, page_number=e.page_number, depth=e.depth)
            for e in details.outline
        ],
        attachments=[
            pb.Attachment(name=a.name, size_bytes=a.size_bytes) for a in details.attachments
        ],
        has_xmp=details.has_xmp,
    )
    if details.pdf_version is not None:
        message.pdf_version = details.pdf_version
    return message


def page_details_to_proto(page: PageInfo) -> pb.PageDetails:
    """One page's size, rotation and character count; unknown sizes left unset."""
    return pb.PageDetails(
        width=page.width, height=page.height, rotation=page.rotation, characters=page.characters
    )


def _error_to_proto(error: FileError) -> pb.FileError:
    return pb.FileError(
        code=error.code.value,
        message=error.message,
        retryable=error.retryable,
        time=_timestamp(error.at),
    )


def policy_to_proto(policy: BatchPolicy) -> pb.BatchPolicy:
    """The policy with every field set."""
    retry = policy.retry
    tolerated = policy.tolerated_failures
    threshold = pb.FailureThreshold()
    if tolerated.max_failed_files is not None:
        threshold.max_failed_files = tolerated.max_failed_files
    if tolerated.max_failed_percent is not None:
        threshold.max_failed_percent = tolerated.max_failed_percent
    return pb.BatchPolicy(
        retry=pb.RetryPolicy(
            max_attempts=retry.max_attempts,
            initial_backoff=_duration(retry.initial_backoff),
            max_backoff=_duration(retry.max_backoff),
            multiplier=retry.multiplier,
            jitter=pb.JITTER_FULL if retry.jitter == "full" else pb.JITTER_NONE,
            non_retryable_codes=sorted(code.value for code in retry.non_retryable_codes),
        ),
        max_concurrency=policy.max_concurrency,
        file_timeout=_duration(policy.file_timeout),
        tolerated_failures=threshold,
        restart_intensity=pb.RestartIntensity(
            max_restarts=policy.restart_intensity.max_restarts,
            within=_duration(policy.restart_intensity.within_seconds),
        ),
        max_manual_retries=policy.max_manual_retries,
        extraction_mode=_EXTRACTION_MODES_TO_PROTO[policy.extraction_mode],
    )


_EXTRACTION_MODES_TO_PROTO = {
    ExtractionMode.PLAIN: pb.EXTRACTION_MODE_PLAIN,
    ExtractionMode.LAYOUT: pb.EXTRACTION_MODE_LAYOUT,
}
_EXTRACTION_MODES = {value: mode for mode, value in _EXTRACTION_MODES_TO_PROTO.items()}


def batch_to_proto(view: BatchView, *, with_files: bool = True) -> pb.Batch:
    """The batch, with its files unless ``with_files`` is false."""
    batch = summary_to_proto(view.summary())
    if with_files:
        batch.files.extend(file_to_proto(f) for f in view.files)
    return batch


def summary_to_proto(summary: BatchSummary) -> pb.Batch:
    """The batch and its counts, without files (listings, the basic view)."""
    batch, counts = summary.batch, summary.counts
    return pb.Batch(
        batch_id=batch.batch_id,
        display_name=batch.name,
        state=batch_state_to_proto(batch.state),
        counts=_counts_to_proto(counts),
        policy=policy_to_proto(batch.policy),
        create_time=_timestamp(batch.created_at),
        update_time=_timestamp(batch.updated_at),
        sequence=batch.sequence,
        reason=batch.reason,
        labels=dict(batch.labels),
        idempotency_key=batch.idempotency_key,
        file_count=summary.file_count,
        files_with_warnings=summary.files_with_warnings,
    )


def _counts_to_proto(counts: Mapping[FileState, int]) -> pb.FileCounts:
    return pb.FileCounts(
        pending=counts.get(FileState.PENDING, 0),
        running=counts.get(FileState.RUNNING, 0),
        backoff=counts.get(FileState.BACKOFF, 0),
        succeeded=counts.get(FileState.SUCCEEDED, 0),
        failed=counts.get(FileState.FAILED, 0),
        cancelled=counts.get(FileState.CANCELLED, 0),
    )


def wants_files(view: pb.BatchView.ValueType, *, default: bool) -> bool:
    """Whether a reply in ``view`` carries the first page of the batch's files;
    ``default`` for ``BATCH_VIEW_UNSPECIFIED``.

    Raises:
        WireError: ``view`` is no value of the enum (INVALID_ARGUMENT).
    """
    if view == pb.BATCH_VIEW_UNSPECIFIED:
        return default
    if view == pb.BATCH_VIEW_FULL:
        return True
    if view == pb.BATCH_VIEW_BASIC:
        return False
    raise _invalid(
        "INVALID_VIEW",
        [FieldViolation("view", f"{view} is not a BatchView; use BATCH_VIEW_BASIC or _FULL.")],
    )


def snapshot_to_proto(summary: BatchSummary) -> pb.WatchBatchResponse:
    """The event that opens a watch from sequence 0: the batch and its counts."""
    batch = summary_to_proto(summary)
    return pb.WatchBatchResponse(
        sequence=batch.sequence,
        batch_id=batch.batch_id,
        event_time=batch.update_time,
        batch_state=batch.state,
        snapshot=batch,
        counts=batch.counts,
    )


def event_to_proto(event: BatchEvent) -> pb.WatchBatchResponse:
    """One change: a file's new status, or the batch's new state."""
    message = pb.WatchBatchResponse(
        sequence=event.sequence,
        batch_id=event.batch_id,
        event_time=_timestamp(event.at),
        batch_state=_BATCH_STATES[event.batch_state],
        counts=_counts_to_proto(event.counts) if event.counts else None,
        file=None if event.file is None else file_to_proto(event.file),
    )
    if event.file is not None:
        return message
    if event.bulk is not None:
        bulk = event.bulk
        change = message.files
        change.file_ids.extend(bulk.file_ids)
        change.state = _file_state(bulk.state)
        change.reason = event.reason
        change.count = bulk.count
        if bulk.from_state is not None:
            change.from_state = _file_state(bulk.from_state)
        if bulk.error is not None:
            change.error.CopyFrom(_error_to_proto(bulk.error))
    else:
        message.batch_state_change.CopyFrom(
            pb.BatchStateChange(state=message.batch_state, reason=event.reason)
        )
    return message


# `earlier_events` as it lies on the wire: its field number, length-delimited.
_EARLIER_EVENTS_TAG = bytes(
    [pb.WatchBatchResponse.DESCRIPTOR.fields_by_name["earlier_events"].number << 3 | 2]
)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def coalesced_event_frame(frames: Sequence[bytes]) -> bytes:
    """One serialized ``pb.WatchBatchResponse`` carrying several, from their serialized forms.

    The last of ``frames`` is the message; the others, in order, become its
    ``earlier_events``. A repeated field may follow the others on the wire, so the
    message is the frames joined with a field header before each earlier one: nothing
    is parsed or serialized again, and every watcher of a batch reuses the frames each
    event was serialized to once.

    Args:
        frames: Serialized ``pb.WatchBatchResponse`` messages, oldest first, none with
            ``earlier_events`` of its own; at least one.
    """
    *earlier, last = frames
    if not earlier:
        return last
    parts = [last]
    for frame in earlier:
        parts += (_EARLIER_EVENTS_TAG, _varint(len(frame)), frame)
    return b"".join(parts)


def result_chunks(
    batch_id: str,
    record: FileRecord,
    summary: ResultSummary,
    pieces: Iterable[tuple[int, str]],
) -> Iterator[pb.GetFileResultResponse]:
    """The file's metadata, then its text as ``pieces`` come, each piece in one message.

    A piece longer than :data:`actors.policy.results.TEXT_PIECE_CHARS` (a page stored whole
    before results were kept in pieces) is cut here, so that no message grows with it.
    """
    info = {k: v for k, v in dataclasses.asdict(summary.info).items() if v is not None}
    yield pb.GetFileResultResponse(
        metadata=pb.FileResultMetadata(
            batch_id=batch_id,
            file_id=record.file_id,
            name=record.name,
            page_count=summary.page_count,
            encrypted=summary.encrypted,
            info=pb.DocumentInfo(**info),
            warnings=[warning_to_proto(w) for w in summary.warnings],
            details=details_to_proto(summary.details),
        )
    )
    page_infos = summary.details.pages
    described = 0
    for number, text in pieces:
        for start in range(0, max(len(text), 1), TEXT_PIECE_CHARS):
            piece = pb.PageText(page_number=number, text=text[start : start + TEXT_PIECE_CHARS])
            # The page's details go with its first piece, whatever its length.
            if described < number <= len(page_infos):
                piece.details.CopyFrom(page_details_to_proto(page_infos[number - 1]))
                described = number
            yield pb.GetFileResultResponse(page=piece)


def exported_file(
    batch_id: str,
    record: FileRecord,
    summary: ResultSummary | None,
    pieces: Iterable[tuple[int, str]] = (),
) -> Iterator[pb.ExportResultsResponse]:
    """One file of an export: its status and, given its result's ``summary``, the
    result's metadata, then its text as ``pieces`` come, in bounded messages.

    The messages are :func:`result_chunks`' own, so an export carries exactly what
    ``GetFileResult`` does.
    """
    status = file_to_proto(record)
    if summary is None:
        yield pb.ExportResultsResponse(file=pb.ExportedFile(status=status))
        return
    for chunk in result_chunks(batch_id, record, summary, pieces):
        if chunk.HasField("metadata"):
            yield pb.ExportResultsResponse(
                file=pb.ExportedFile(status=status, result=chunk.metadata)
            )
        else:
            yield pb.ExportResultsResponse(page=chunk.page)


# Requests ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """A validated ``BatchSpec``: what the runtime's ``submit`` takes besides files."""

    name: str
    policy: BatchPolicy
    labels: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str = ""


def _invalid(reason: str, violations: list[FieldViolation]) -> WireError:
    # Descriptions are sentences; the summary ends with its own full stop.
    summary = "; ".join(f"{v.field}: {v.description.rstrip('.')}" for v in violations[:3])
    more = f" (and {len(violations) - 3} more)" if len(violations) > 3 else ""
    return WireError(
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
        f"The request is invalid: {summary}{more}.",
        violations=violations,
    )


def _text_violations(path: str, value: str, max_chars: int) -> list[FieldViolation]:
    if len(value) > max_chars:
        return [FieldViolation(path, f"At most {max_chars} characters.")]
    if has_hidden_characters(value):
        return [
            FieldViolation(
                path, "Control, format and separator characters (such as U+202E) are not allowed."
            )
        ]
    return []


def spec_from_proto(spec: pb.BatchSpec, path: str = "spec") -> BatchSpec:
    """Validate a submitted spec, reporting every bad field at once.

    Raises:
        WireError: ``INVALID_ARGUMENT`` with reason ``INVALID_BATCH_SPEC`` and field
            violations.
    """
    violations = _text_violations(f"{path}.display_name", spec.display_name, MAX_DISPLAY_NAME_CHARS)
    key = spec.idempotency_key
    if key and (len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not _KEY_CHARS.fullmatch(key)):
        violations.append(
            FieldViolation(
                f"{path}.idempotency_key",
                f"Use 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters, no spaces.",
            )
        )
    if len(spec.labels) > MAX_LABELS:
        violations.append(FieldViolation(f"{path}.labels", f"At most {MAX_LABELS} labels."))
    for name, value in sorted(spec.labels.items()):
        where = f"{path}.labels[{name!r}]"
        if not name:
            violations.append(FieldViolation(where, "A label needs a key."))
        violations += _text_violations(where, name, MAX_LABEL_KEY_CHARS)
        violations += _text_violations(where, value, MAX_LABEL_VALUE_CHARS)
    policy: BatchPolicy | None = None
    try:
        policy = policy_from_proto(spec.policy, f"{path}.policy")
    except WireError as error:
        violations += error.violations
    if violations or policy is None:
        raise _invalid("INVALID_BATCH_SPEC", violations)
    return BatchSpec(spec.display_name, policy, dict(spec.labels), key)


def _overrides(message: pb.BatchPolicy, path: str) -> dict[str, Any]:
    """The fields the caller set, in :class:`BatchPolicy`'s shape."""
    out: dict[str, Any] = {}
    if message.HasField("retry"):
        retry = message.retry
        chosen: dict[str, Any] = {}
        if retry.HasField("max_attempts"):
            chosen["max_attempts"] = retry.max_attempts
        if retry.HasField("initial_backoff"):
            chosen["initial_backoff"] = _seconds(retry.initial_backoff)
        if retry.HasField("max_backoff"):
            chosen["max_backoff"] = _seconds(retry.max_backoff)
        if retry.HasField("multiplier"):
            chosen["multiplier"] = retry.multiplier
        if retry.jitter != pb.JITTER_UNSPECIFIED:
            if retry.jitter not in _JITTER:
                raise _invalid(
                    "INVALID_BATCH_SPEC",
                    [FieldViolation(f"{path}.retry.jitter", "Use JITTER_FULL or JITTER_NONE.")],
                )
            chosen["jitter"] = _JITTER[retry.jitter]
        if retry.non_retryable_codes:
            chosen["non_retryable_codes"] = list(retry.non_retryable_codes)
        out["retry"] = chosen
    if message.HasField("max_concurrency"):
        out["max_concurrency"] = message.max_concurrency
    if message.HasField("file_timeout"):
        out["file_timeout"] = _seconds(message.file_timeout)
    if message.HasField("tolerated_failures"):
        tolerated = message.tolerated_failures
        out["tolerated_failures"] = {
            name: getattr(tolerated, name)
            for name in ("max_failed_files", "max_failed_percent")
            if tolerated.HasField(name)
        }
    if message.HasField("restart_intensity"):
        intensity = message.restart_intensity
        chosen = {}
        if intensity.HasField("max_restarts"):
            chosen["max_restarts"] = intensity.max_restarts
        if intensity.HasField("within"):
            chosen["within_seconds"] = _seconds(intensity.within)
        out["restart_intensity"] = chosen
    if message.HasField("max_manual_retries"):
        out["max_manual_retries"] = message.max_manual_retries
    if message.extraction_mode != pb.EXTRACTION_MODE_UNSPECIFIED:
        if message.extraction_mode not in _EXTRACTION_MODES:
            raise _invalid(
                "INVALID_BATCH_SPEC",
                [
                    FieldViolation(
                        f"{path}.extraction_mode",
                        "Use EXTRACTION_MODE_PLAIN or EXTRACTION_MODE_LAYOUT.",
                    )
                ],
            )
        out["extraction_mode"] = _EXTRACTION_MODES[message.extraction_mode]
    return out


def policy_from_proto(message: pb.BatchPolicy, path: str = "policy") -> BatchPolicy:
    """The default policy with the fields the caller set.

    Raises:
        WireError: ``INVALID_ARGUMENT`` with a field violation per bad value.
    """
    try:
        return BatchPolicy.model_validate(_overrides(message, path))
    except ValidationError as error:
        violations = [
            FieldViolation(_field_path(path, e["loc"]), e["msg"].removeprefix("Value error, "))
            for e in error.errors()
        ]
        raise _invalid("INVALID_BATCH_SPEC", violations) from None


def _field_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{_FIELD_NAMES.get(part, part)}"
    return path


def history_to_proto(
    record: FileRecord,
    entries: Sequence[tuple[BatchEvent, FileState | None] | AuditEntry],
    next_page_token: str = "",
) -> pb.GetFileHistoryResponse:
    """One page of a file's history: its state changes (each event with the state the
    file left, ``None`` when unknown) and its batch's requests, as merged oldest first."""
    history = pb.GetFileHistoryResponse(file=file_to_proto(record), next_page_token=next_page_token)
    for entry in entries:
        if isinstance(entry, AuditEntry):
            request = pb.AuditRecord(
                request_id=entry.request_id,
                caller=entry.caller,
                action=entry.action,
                outcome=entry.outcome,
                detail=entry.detail,
            )
            history.entries.append(pb.HistoryEntry(time=_timestamp(entry.at), request=request))
            continue
        event, previous = entry
        state = event.file.state if event.file is not None else event.bulk.state  # type: ignore[union-attr]
        transition = pb.FileTransition(
            sequence=event.sequence, to_state=_file_state(state), reason=event.reason
        )
        if previous is not None:
            transition.from_state = _file_state(previous)
        history.entries.append(pb.HistoryEntry(time=_timestamp(event.at), transition=transition))
    return history
