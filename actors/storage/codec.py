"""Records to stored values and back, for stores that keep them outside the process.

Two forms: rows (tuples for the columns a relational store keeps, ``*_to_row``) and
JSON (``*_to_dict`` gives plain values :func:`json.dumps` takes as they are; events go
whole as JSON text). A state or code goes as its member, not its ``.value``: each is
a ``StrEnum``, a ``str`` whose text is its value, which JSON and SQLite write as
text, and ``.value`` is a Python call (eleven of them an event, in every commit).
Each ``*_from_*`` rebuilds the frozen record exactly (floats survive JSON unchanged).
The batch policy is a pydantic model and travels as its own JSON
(``model_dump_json``), validated again when read. A result's document information
and structure are encoded where it is sealed (:mod:`actors.policy.sealed`, often in a
worker) and decoded here by the same functions.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

from actors.policy.catalogue import ErrorCode
from actors.policy.model import (
    Attempt,
    AttemptOutcome,
    BatchEvent,
    BatchRecord,
    BatchState,
    BulkChange,
    FileError,
    FileRecord,
    FileState,
    ResultWarning,
    WarningCode,
)
from actors.policy.rules import BatchPolicy
from actors.policy.sealed import details_from_json, details_to_json, info_from_json, info_to_json

__all__ = [
    "ATTEMPT_COLUMNS",
    "BATCH_COLUMNS",
    "FILE_CHANGE_COLUMNS",
    "FILE_COLUMNS",
    "attempt_from_dict",
    "attempt_from_row",
    "attempt_to_dict",
    "attempt_to_row",
    "batch_from_row",
    "batch_to_row",
    "counts_from_json",
    "counts_to_json",
    "details_from_json",
    "details_to_json",
    "error_from_dict",
    "error_to_dict",
    "error_to_json",
    "event_from_json",
    "event_to_json",
    "file_change_to_row",
    "file_from_dict",
    "file_from_row",
    "file_to_dict",
    "file_to_row",
    "info_from_json",
    "info_to_json",
    "moves_from_json",
    "moves_to_json",
    "policy_from_json",
    "policy_to_json",
    "warned_from_json",
    "warnings_from_json",
    "warnings_to_json",
]

Json = dict[str, Any]

# Encoders made once: json.dumps with any argument of its own builds a new encoder per
# call, a fifth of an event's encoding.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
# A string as the encoder above writes it, quotes included.
_quoted = encode_basestring_ascii


# Rows: the column layout of a relational store. A store adds its own key columns
# (the batch id, a position) in front of these.

BATCH_COLUMNS = (
    "batch_id",
    "name",
    "policy",
    "state",
    "created_at",
    "updated_at",
    "sequence",
    "reason",
    "labels",
    "owner",
    "idempotency_key",
    "bytes_released_at",
)
FILE_COLUMNS = (
    "file_id",
    "name",
    "blob",
    "size",
    "state",
    "round_failures",
    "manual_retries",
    "next_attempt_at",
    "error",
    "encrypted_with_password",
    "warnings",
)
# What a file's change writes: every column but the four its upload wrote, which no
# change alters (and one of which, the blob, is indexed).
FILE_CHANGE_COLUMNS = FILE_COLUMNS[4:]
ATTEMPT_COLUMNS = (
    "number",
    "started_at",
    "ended_at",
    "outcome",
    "code",
    "worker_pid",
    "retry_delay",
)

Row = tuple[Any, ...]


def policy_to_json(policy: BatchPolicy) -> str:
    """The policy as JSON text."""
    return policy.model_dump_json()


@functools.lru_cache(maxsize=512)
def policy_from_json(text: str) -> BatchPolicy:
    """The policy stored as ``text``, validated again.

    Cached: most batches share a handful of policies, and a policy is frozen.

    Raises:
        pydantic.ValidationError: ``text`` is not a valid policy.
    """
    return BatchPolicy.model_validate_json(text)


def batch_to_row(batch: BatchRecord) -> Row:
    """A batch record as values for :data:`BATCH_COLUMNS`."""
    return (
        batch.batch_id,
        batch.name,
        policy_to_json(batch.policy),
        batch.state,
        batch.created_at,
        batch.updated_at,
        batch.sequence,
        batch.reason,
        json.dumps(dict(batch.labels)),
        batch.owner,
        batch.idempotency_key,
        batch.bytes_released_at,
    )


def batch_from_row(row: Sequence[Any]) -> BatchRecord:
    """The batch record :func:`batch_to_row` made."""
    (bid, name, policy, state, created, updated, seq, reason, labels, owner, key, released) = row
    return BatchRecord(
        batch_id=bid,
        name=name,
        policy=policy_from_json(policy),
        state=BatchState(state),
        created_at=created,
        updated_at=updated,
        sequence=seq,
        reason=reason,
        labels=json.loads(labels),
        owner=owner,
        idempotency_key=key,
        bytes_released_at=released,
    )


def file_to_row(record: FileRecord) -> Row:
    """A file record, without its attempts, as values for :data:`FILE_COLUMNS`."""
    return (record.file_id, record.name, record.blob, record.size, *file_change_to_row(record))


def file_change_to_row(record: FileRecord) -> Row:
    """A file record's values for :data:`FILE_CHANGE_COLUMNS`: what :func:`file_to_row`
    gives, less its first four."""
    return (
        record.state,
        record.round_failures,
        record.manual_retries,
        record.next_attempt_at,
        error_to_json(record.error),
        int(record.encrypted_with_password),
        warnings_to_json(record.warnings),
    )


def file_from_row(row: Sequence[Any], attempts: Sequence[Attempt] = ()) -> FileRecord:
    """The file record :func:`file_to_row` made, with ``attempts``."""
    (file_id, name, blob, size, state, failures, retries, next_at, error, encrypted, warned) = row
    return FileRecord(
        file_id=file_id,
        name=name,
        blob=blob,
        size=size,
        state=FileState(state),
        attempts=tuple(attempts),
        round_failures=failures,
        manual_retries=retries,
        next_attempt_at=next_at,
        error=None if error is None else error_from_dict(json.loads(error)),
        encrypted_with_password=bool(encrypted),
        warnings=warnings_from_json(warned),
    )


def attempt_to_row(attempt: Attempt) -> Row:
    """An attempt as values for :data:`ATTEMPT_COLUMNS`."""
    return (
        attempt.number,
        attempt.started_at,
        attempt.ended_at,
        None if attempt.outcome is None else attempt.outcome,
        None if attempt.code is None else attempt.code,
        attempt.worker_pid,
        attempt.retry_delay,
    )


def attempt_from_row(row: Sequence[Any]) -> Attempt:
    """The attempt :func:`attempt_to_row` made."""
    number, started, ended, outcome, code, pid, delay = row
    return Attempt(
        number=number,
        started_at=started,
        ended_at=ended,
        outcome=None if outcome is None else AttemptOutcome(outcome),
        code=None if code is None else ErrorCode(code),
        worker_pid=pid,
        retry_delay=delay,
    )


# JSON: errors inside rows, and events whole, file records and attempts included.


def error_to_dict(error: FileError) -> Json:
    """A file's error as plain values."""
    return {
        "code": error.code,
        "at": error.at,
        "message": error.message,
        "retryable": error.retryable,
    }


def error_to_json(error: FileError | None) -> str | None:
    """A file's error as the JSON text of its column, ``None`` for none."""
    return None if error is None else json.dumps(error_to_dict(error))


def error_from_dict(data: Mapping[str, Any]) -> FileError:
    """The error :func:`error_to_dict` made."""
    return FileError(
        code=ErrorCode(data["code"]),
        at=data["at"],
        message=data["message"],
        retryable=data["retryable"],
    )


def attempt_to_dict(attempt: Attempt) -> Json:
    """An attempt as plain values, keyed by :data:`ATTEMPT_COLUMNS`."""
    return dict(zip(ATTEMPT_COLUMNS, attempt_to_row(attempt), strict=True))


def attempt_from_dict(data: Mapping[str, Any]) -> Attempt:
    """The attempt :func:`attempt_to_dict` made."""
    return attempt_from_row([data[column] for column in ATTEMPT_COLUMNS])


def file_to_dict(record: FileRecord) -> Json:
    """A file record, attempts included, as plain values."""
    return {
        "file_id": record.file_id,
        "name": record.name,
        "blob": record.blob,
        "size": record.size,
        "state": record.state,
        "attempts": [attempt_to_dict(a) for a in record.attempts],
        "round_failures": record.round_failures,
        "manual_retries": record.manual_retries,
        "next_attempt_at": record.next_attempt_at,
        "error": None if record.error is None else error_to_dict(record.error),
        "encrypted_with_password": record.encrypted_with_password,
        "warnings": _warnings_to_lists(record.warnings),
    }


def file_from_dict(data: Mapping[str, Any]) -> FileRecord:
    """The file record :func:`file_to_dict` made."""
    error = data["error"]
    return FileRecord(
        file_id=data["file_id"],
        name=data["name"],
        blob=data["blob"],
        size=data["size"],
        state=FileState(data["state"]),
        attempts=tuple(attempt_from_dict(a) for a in data["attempts"]),
        round_failures=data["round_failures"],
        manual_retries=data["manual_retries"],
        next_attempt_at=data["next_attempt_at"],
        error=None if error is None else error_from_dict(error),
        encrypted_with_password=data["encrypted_with_password"],
        # Events stored before files kept their warnings have none.
        warnings=_warnings_from_lists(data.get("warnings", ())),
    )


def event_to_json(event: BatchEvent) -> str:
    """An event, with the file record it carries, as JSON text.

    The text is what ``json`` writes, compact and ASCII-only, for the event as plain
    values: the keys of :func:`file_to_dict` and :func:`attempt_to_dict`, in their
    order. It is written here directly rather than through dicts and the encoder: a
    batch's supervisor stores two events a file, and this takes a third of the time
    (issue 16). The tests check it byte for byte against ``json``'s.
    """
    file, previous, bulk = event.file, event.previous_state, event.bulk
    counts = ",".join([f"{_quoted(state)}:{n!r}" for state, n in event.counts.items()])
    return (
        f'{{"sequence":{event.sequence!r},"batch_id":{_quoted(event.batch_id)},'
        f'"at":{_float(event.at)},"batch_state":{_quoted(event.batch_state)},'
        f'"file":{"null" if file is None else _file_json(file)},'
        f'"reason":{_quoted(event.reason)},'
        f'"previous_state":{"null" if previous is None else _quoted(previous)},'
        f'"bulk":{"null" if bulk is None else _COMPACT.encode(_bulk_to_dict(bulk))},'
        f'"counts":{{{counts}}}}}'
    )


def _file_json(record: FileRecord) -> str:
    """:func:`file_to_dict` as compact JSON text."""
    error, warnings = record.error, record.warnings
    return (
        f'{{"file_id":{_quoted(record.file_id)},"name":{_quoted(record.name)},'
        f'"blob":{_quoted(record.blob)},"size":{record.size!r},'
        f'"state":{_quoted(record.state)},'
        f'"attempts":[{",".join([_attempt_json(a) for a in record.attempts])}],'
        f'"round_failures":{record.round_failures!r},'
        f'"manual_retries":{record.manual_retries!r},'
        f'"next_attempt_at":{_float(record.next_attempt_at)},'
        f'"error":{"null" if error is None else _COMPACT.encode(error_to_dict(error))},'
        f'"encrypted_with_password":{"true" if record.encrypted_with_password else "false"},'
        f'"warnings":{_COMPACT.encode(_warnings_to_lists(warnings)) if warnings else "[]"}}}'
    )


def _attempt_json(attempt: Attempt) -> str:
    """:func:`attempt_to_dict` as compact JSON text."""
    outcome, code, pid = attempt.outcome, attempt.code, attempt.worker_pid
    return (
        f'{{"number":{attempt.number!r},"started_at":{_float(attempt.started_at)},'
        f'"ended_at":{_float(attempt.ended_at)},'
        f'"outcome":{"null" if outcome is None else _quoted(outcome)},'
        f'"code":{"null" if code is None else _quoted(code)},'
        f'"worker_pid":{"null" if pid is None else repr(pid)},'
        f'"retry_delay":{_float(attempt.retry_delay)}}}'
    )


def _float(number: float | None) -> str:
    """A number as ``json`` writes it: ``repr`` when finite (an int's too), else as
    ``json`` spells infinities and NaN."""
    if number is None:
        return "null"
    return repr(number) if number - number == 0 else _COMPACT.encode(number)


def _bulk_to_dict(bulk: BulkChange) -> Json:
    data: Json = {
        "file_ids": list(bulk.file_ids),
        "state": bulk.state,
        "error": None if bulk.error is None else error_to_dict(bulk.error),
    }
    if bulk.from_state is not None:
        data.update(
            from_state=bulk.from_state,
            count=bulk.count,
            manual_retry=bulk.manual_retry,
            max_manual_retries=bulk.max_manual_retries,
        )
    return data


def _bulk_from_dict(data: Mapping[str, Any]) -> BulkChange:
    error, from_state = data["error"], data.get("from_state")
    return BulkChange(
        file_ids=tuple(data["file_ids"]),
        state=FileState(data["state"]),
        error=None if error is None else error_from_dict(error),
        from_state=None if from_state is None else FileState(from_state),
        count=data.get("count", -1),
        manual_retry=data.get("manual_retry", False),
        max_manual_retries=data.get("max_manual_retries", 0),
    )


def moves_to_json(moves: Sequence[tuple[int, BulkChange]]) -> str:
    """Numbered changes by state (a batch's pending moves) as JSON text."""
    return json.dumps(
        [{"n": number, **_bulk_to_dict(bulk)} for number, bulk in moves], separators=(",", ":")
    )


def moves_from_json(text: str) -> tuple[tuple[int, BulkChange], ...]:
    """The numbered changes :func:`moves_to_json` made."""
    if text == "[]":
        return ()
    return tuple((int(data["n"]), _bulk_from_dict(data)) for data in json.loads(text))


def event_from_json(text: str) -> BatchEvent:
    """The event :func:`event_to_json` made."""
    data = json.loads(text)
    file, previous, bulk = data["file"], data.get("previous_state"), data.get("bulk")
    # A file event's previous state is the file's, a batch event's the batch's.
    state_type: type[FileState | BatchState] = BatchState if file is None else FileState
    return BatchEvent(
        sequence=data["sequence"],
        batch_id=data["batch_id"],
        at=data["at"],
        batch_state=BatchState(data["batch_state"]),
        file=None if file is None else file_from_dict(file),
        reason=data["reason"],
        previous_state=None if previous is None else state_type(previous),
        bulk=None if bulk is None else _bulk_from_dict(bulk),
        counts={FileState(state): n for state, n in data.get("counts", {}).items()},
    )


def warnings_to_json(warnings: Sequence[ResultWarning]) -> str:
    """A result's or a file's warnings as JSON text."""
    # Most files have none.
    return json.dumps(_warnings_to_lists(warnings)) if warnings else "[]"


def warnings_from_json(text: str) -> tuple[ResultWarning, ...]:
    """The warnings :func:`warnings_to_json` made."""
    # Most files have none: a batch of many files loads without parsing them.
    return () if text == "[]" else _warnings_from_lists(json.loads(text))


def _warnings_to_lists(warnings: Sequence[ResultWarning]) -> list[list[Any]]:
    return [[w.code, w.place, w.count, w.total] for w in warnings]


def _warnings_from_lists(lists: Sequence[Sequence[Any]]) -> tuple[ResultWarning, ...]:
    # Warnings stored before they had a total are three items long.
    return tuple(
        ResultWarning(WarningCode(code), place, count, *total)
        for code, place, count, *total in lists
    )


# The key of the succeeded files with warnings, next to the per-state counts: no state
# is spelled this way.
_WARNED_KEY = "files_with_warnings"


def counts_to_json(counts: Mapping[FileState, int], files_with_warnings: int = 0) -> str:
    """Files per state as JSON text, states without files left out; with the number of
    succeeded files whose result has warnings, when there are any."""
    stored: dict[str, int] = {state: n for state, n in counts.items() if n}
    if files_with_warnings:
        stored[_WARNED_KEY] = files_with_warnings
    return json.dumps(stored)


def warned_from_json(text: str) -> int:
    """The succeeded files with warnings :func:`counts_to_json` stored."""
    return int(json.loads(text).get(_WARNED_KEY, 0))


def counts_from_json(text: str) -> dict[FileState, int]:
    """The counts :func:`counts_to_json` made, every state present."""
    stored = json.loads(text)
    return {state: int(stored.get(state.value, 0)) for state in FileState}
