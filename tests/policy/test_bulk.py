"""A file's history tells whether a change by state moved the file, exactly when the rule
that applied the change (``moved_by``) moved it."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from actors.policy.book import moved_by
from actors.policy.bulk import moved_by_state
from actors.policy.catalogue import ErrorCode
from actors.policy.model import (
    Attempt,
    AttemptOutcome,
    BatchEvent,
    BatchState,
    BulkChange,
    FileError,
    FileRecord,
    FileState,
)
from actors.policy.rules import MAX_WRONG_PASSWORDS

ERROR = FileError.of(ErrorCode.CANCELLED, 1.0)
RETRY = BulkChange(
    (), FileState.PENDING, None, FileState.FAILED, 1, manual_retry=True, max_manual_retries=2
)
CANCEL = BulkChange((), FileState.CANCELLED, ERROR, FileState.PENDING, 1)
WRONG_PASSWORD = Attempt(1, 1.0, 2.0, AttemptOutcome.FAILED, ErrorCode.PDF_WRONG_PASSWORD)


def _file(state: FileState, manual_retries: int = 0, wrong_passwords: int = 0) -> FileRecord:
    attempts = tuple(
        dataclasses.replace(WRONG_PASSWORD, number=n) for n in range(1, wrong_passwords + 1)
    )
    return FileRecord(
        "f00001", "1.pdf", "ab" * 32, 10, state, attempts, manual_retries=manual_retries
    )


def _by_state(sequence: int, bulk: BulkChange) -> BatchEvent:
    return BatchEvent(sequence, "b1", float(sequence), BatchState.RUNNING, bulk=bulk)


def _own(sequence: int, previous: FileState) -> BatchEvent:
    """The file's own change from ``previous`` to running."""
    record = _file(FileState.RUNNING)
    return BatchEvent(
        sequence, "b1", float(sequence), BatchState.RUNNING, file=record, previous_state=previous
    )


def _nothing_later(after: int) -> BatchEvent | None:
    return None


@given(
    manual_retries=st.integers(0, 4),
    wrong_passwords=st.integers(0, MAX_WRONG_PASSWORDS + 1),
    state=st.sampled_from(FileState),
)
def test_the_history_tells_a_retry_moved_a_file_exactly_when_it_did(
    manual_retries: int, wrong_passwords: int, state: FileState
) -> None:
    record = _file(state, manual_retries, wrong_passwords)
    moved = moved_by(RETRY, record) is not None
    # What the history sees afterwards: the file's next own change starts where the
    # retry left it, or, with no change since, the file is still there.
    after = RETRY.state if moved else state
    following = _own(3, after)
    bulk = _by_state(2, RETRY)

    assert moved_by_state(bulk, state, [following], _nothing_later, FileState.RUNNING) is moved
    assert moved_by_state(bulk, state, [], lambda after: following, FileState.RUNNING) is moved
    assert moved_by_state(bulk, state, [], _nothing_later, after) is moved


def test_the_history_looks_past_changes_by_state_for_the_files_next_own_change() -> None:
    bulk = _by_state(2, RETRY)
    later = [_by_state(3, CANCEL), _own(4, FileState.PENDING)]

    assert moved_by_state(bulk, FileState.FAILED, later, _nothing_later, FileState.FAILED)


def test_a_change_by_state_moved_no_file_of_another_state_or_unknown_state() -> None:
    cancel = _by_state(2, CANCEL)

    assert moved_by_state(cancel, FileState.PENDING, [], _nothing_later, FileState.CANCELLED)
    assert not moved_by_state(cancel, FileState.RUNNING, [], _nothing_later, FileState.RUNNING)
    assert not moved_by_state(cancel, None, [], _nothing_later, FileState.CANCELLED)
    listed = _by_state(2, BulkChange(("f00001",), FileState.CANCELLED, ERROR))
    assert not moved_by_state(listed, FileState.PENDING, [], _nothing_later, FileState.CANCELLED)
