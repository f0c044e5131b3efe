"""The records' own updates build what ``dataclasses.replace`` builds, every field kept."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from actors.policy.catalogue import ErrorCode
from actors.policy.model import (
    Attempt,
    AttemptOutcome,
    BatchEvent,
    BatchRecord,
    BatchState,
    FileRecord,
    FileState,
    ended_attempt,
)


def _distinct(record_type: type[Any]) -> Any:
    """A record whose every field holds an object of its own: a field an update forgot
    to carry over, or took from the wrong field, shows."""
    return record_type(**{f.name: object() for f in dataclasses.fields(record_type)})


# What a file's update may change: all but what names the file and its bytes (and its
# state, which every update names).
_FILE_CHANGES = [
    f.name
    for f in dataclasses.fields(FileRecord)
    if f.name not in {"file_id", "name", "blob", "size", "state"}
]


def test_a_moved_file_keeps_every_field_it_is_not_given() -> None:
    record = _distinct(FileRecord)

    moved = record.moved(FileState.RUNNING)

    assert moved == dataclasses.replace(record, state=FileState.RUNNING)


@pytest.mark.parametrize("name", _FILE_CHANGES)
def test_a_moved_file_takes_each_field_it_is_given(name: str) -> None:
    record = _distinct(FileRecord)
    value = object()

    moved = record.moved(FileState.FAILED, **{name: value})

    assert moved == dataclasses.replace(record, state=FileState.FAILED, **{name: value})


@pytest.mark.parametrize("name", ["next_attempt_at", "error"])
def test_none_is_a_value_a_moved_file_takes(name: str) -> None:
    record = _distinct(FileRecord)

    assert getattr(record.moved(FileState.PENDING, **{name: None}), name) is None


def test_a_moved_file_refuses_a_field_it_does_not_have() -> None:
    with pytest.raises(TypeError, match="unknown"):
        FileRecord("f", "f.pdf", "0" * 64, 1).moved(FileState.RUNNING, unknown=1)  # type: ignore[call-arg]


def test_an_announced_batch_keeps_every_field_but_its_sequence_and_time() -> None:
    batch = _distinct(BatchRecord)

    announced = batch.announced(7, 12.5)

    assert announced == dataclasses.replace(batch, sequence=7, updated_at=12.5)


@pytest.mark.parametrize("pid", [None, 4321])
def test_an_ended_attempt_keeps_its_number_start_and_known_worker(pid: int | None) -> None:
    attempt = _distinct(Attempt)

    ended = attempt.ended(
        3.0, AttemptOutcome.FAILED, code=ErrorCode.PDF_MALFORMED, worker_pid=pid, retry_delay=2.0
    )

    assert ended == dataclasses.replace(
        attempt,
        ended_at=3.0,
        outcome=AttemptOutcome.FAILED,
        code=ErrorCode.PDF_MALFORMED,
        worker_pid=attempt.worker_pid if pid is None else pid,
        retry_delay=2.0,
    )


def _event(previous: FileState, state: FileState, at: float, *attempts: Attempt) -> BatchEvent:
    record = FileRecord(file_id="f1", name="a.pdf", blob="b", size=1, state=state)
    return BatchEvent(
        sequence=2,
        batch_id="b",
        at=at,
        batch_state=BatchState.RUNNING,
        file=dataclasses.replace(record, attempts=attempts),
        previous_state=previous,
    )


def test_an_event_tells_the_end_of_an_attempt_from_running_or_straight_from_pending() -> None:
    first = Attempt(1, 1.0, 2.0, AttemptOutcome.FAILED)
    second = Attempt(2, 5.0, 6.0, AttemptOutcome.SUCCEEDED)
    interrupted = Attempt(2, 5.0, 6.0, AttemptOutcome.INTERRUPTED)
    assert ended_attempt(_event(FileState.RUNNING, FileState.SUCCEEDED, 6.0, first, second)) == (
        second
    )
    assert ended_attempt(_event(FileState.RUNNING, FileState.PENDING, 6.0, first, interrupted)) == (
        interrupted
    )
    # Started and ended between two commits: told by its end, from PENDING.
    assert ended_attempt(_event(FileState.PENDING, FileState.SUCCEEDED, 6.0, first, second)) == (
        second
    )
    # Moves that end no attempt.
    assert ended_attempt(_event(FileState.BACKOFF, FileState.PENDING, 4.0, first)) is None
    assert ended_attempt(_event(FileState.PENDING, FileState.CANCELLED, 7.0, first)) is None
    assert ended_attempt(_event(FileState.PENDING, FileState.SUCCEEDED, 6.0)) is None
