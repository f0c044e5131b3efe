"""The batch book: state machine, counts and events stay consistent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.policy.book import BatchBook
from actors.policy.catalogue import ErrorCode
from actors.policy.model import (
    FILE_TRANSITIONS,
    Attempt,
    AttemptOutcome,
    BatchRecord,
    BatchState,
    BatchSummary,
    BatchView,
    BulkChange,
    FileError,
    FileRecord,
    FileState,
    IllegalTransitionError,
    ResultWarning,
    WarningCode,
    settled_batch_state,
)
from actors.policy.rules import BatchPolicy


def _book(files: int) -> BatchBook:
    batch = BatchRecord("b1", "demo", BatchPolicy(), BatchState.PENDING, 0.0, 0.0)
    records = tuple(FileRecord(f"f{i}", f"{i}.pdf", "0" * 64, 1) for i in range(files))
    return BatchBook(BatchView(batch, records))


def test_every_change_is_announced_with_the_next_sequence() -> None:
    book = _book(2)
    book.set_batch(BatchState.RUNNING, 1.0)
    book.set_file("f0", FileState.RUNNING, 2.0)
    book.set_file("f0", FileState.SUCCEEDED, 3.0)
    changes = book.take_changes()
    assert [e.sequence for e in changes.events] == [1, 2, 3]
    assert [e.file.state if e.file else None for e in changes.events] == [
        None,
        FileState.RUNNING,
        FileState.SUCCEEDED,
    ]
    assert changes.batch.sequence == 3
    assert [f.file_id for f in changes.files] == ["f0"]
    assert not book.take_changes()


def test_illegal_transition_is_refused_and_changes_nothing() -> None:
    book = _book(1)
    with pytest.raises(IllegalTransitionError, match="from PENDING to SUCCEEDED"):
        book.set_file("f0", FileState.SUCCEEDED, 1.0)
    with pytest.raises(IllegalTransitionError, match="from PENDING to PARTIALLY_SUCCEEDED"):
        book.set_batch(BatchState.PARTIALLY_SUCCEEDED, 1.0)
    assert book.count(FileState.PENDING) == 1
    assert not book.take_changes()


def test_a_move_via_a_state_is_the_unannounced_step_and_the_move() -> None:
    started = Attempt(number=1, started_at=2.0)
    ended = started.ended(3.0, AttemptOutcome.SUCCEEDED, worker_pid=7)
    two_steps, one_move = _book(2), _book(2)
    for book in (two_steps, one_move):
        book.set_batch(BatchState.RUNNING, 1.0)
        book.take_changes()
    two_steps.set_file("f0", FileState.RUNNING, 2.5, announce=False, attempts=(started,))
    two_steps.set_file("f0", FileState.SUCCEEDED, 3.0, "done", attempts=(ended,))
    one_move.set_file(
        "f0", FileState.SUCCEEDED, 3.0, "done", via=FileState.RUNNING, attempts=(ended,)
    )
    changes = one_move.take_changes()
    assert changes == two_steps.take_changes()
    (event,) = changes.events
    assert event.previous_state is FileState.PENDING
    assert event.counts[FileState.RUNNING] == 0
    assert event.counts[FileState.SUCCEEDED] == 1
    assert one_move.count(FileState.PENDING) == 1


def test_a_move_via_a_state_checks_both_steps() -> None:
    book = _book(1)
    book.set_file("f0", FileState.FAILED, 1.0)
    book.take_changes()
    # The first step is allowed, the second is not; then the other way round.
    with pytest.raises(IllegalTransitionError, match="from PENDING to SUCCEEDED"):
        book.set_file("f0", FileState.SUCCEEDED, 2.0, via=FileState.PENDING)
    with pytest.raises(IllegalTransitionError, match="from FAILED to RUNNING"):
        book.set_file("f0", FileState.PENDING, 2.0, via=FileState.RUNNING)
    assert book.file("f0").state is FileState.FAILED
    assert book.count(FileState.FAILED) == 1
    assert not book.take_changes()


def test_succeeded_is_final() -> None:
    assert FILE_TRANSITIONS[FileState.SUCCEEDED] == frozenset()


@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(list(FileState))), max_size=60))
def test_counts_always_match_the_files(moves: list[tuple[int, FileState]]) -> None:
    book = _book(5)
    for index, target in moves:
        file_id = f"f{index}"
        if target in FILE_TRANSITIONS[book.file(file_id).state]:
            book.set_file(file_id, target, 1.0)
            assert book.file(file_id).state is target
        else:
            with pytest.raises(IllegalTransitionError):
                book.set_file(file_id, target, 1.0)
        view = book.view()
        assert dict(view.counts) == {s: book.count(s) for s in FileState}
        assert sum(view.counts.values()) == 5
    events = book.take_changes().events
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize(
    ("succeeded", "failed", "cancelled", "expected"),
    [
        (3, 0, 0, BatchState.SUCCEEDED),
        (0, 3, 0, BatchState.FAILED),
        (0, 1, 2, BatchState.FAILED),
        (1, 2, 0, BatchState.PARTIALLY_SUCCEEDED),
        (2, 0, 1, BatchState.PARTIALLY_SUCCEEDED),
    ],
)
def test_settled_state(succeeded: int, failed: int, cancelled: int, expected: BatchState) -> None:
    counts = {
        FileState.SUCCEEDED: succeeded,
        FileState.FAILED: failed,
        FileState.CANCELLED: cancelled,
    }
    assert settled_batch_state(counts) is expected


def test_many_files_move_in_one_event_that_names_them() -> None:
    book = _book(4)
    book.set_batch(BatchState.RUNNING, 1.0)
    book.set_file("f1", FileState.RUNNING, 2.0)
    book.set_file("f1", FileState.BACKOFF, 3.0, next_attempt_at=9.0)
    error = FileError.of(ErrorCode.CANCELLED, 4.0)
    book.set_files(["f0", "f1", "f3"], FileState.CANCELLED, 4.0, "cancelled", error=error)
    changes = book.take_changes()
    bulk = changes.events[-1]
    assert bulk.bulk == BulkChange(("f0", "f1", "f3"), FileState.CANCELLED, error)
    assert (bulk.sequence, bulk.file, bulk.reason) == (4, None, "cancelled")
    assert book.count(FileState.CANCELLED) == 3
    assert book.count(FileState.PENDING) == 1
    f1 = book.file("f1")
    assert (f1.state, f1.next_attempt_at, f1.error) == (FileState.CANCELLED, None, error)
    # f1's own record, held for the same commit, is brought up to date with the bulk.
    assert [f.file_id for f in changes.files] == ["f1"]
    assert changes.files[0] == f1


def test_a_bulk_move_with_one_illegal_file_moves_none() -> None:
    book = _book(2)
    book.set_file("f1", FileState.RUNNING, 1.0)
    book.take_changes()
    with pytest.raises(IllegalTransitionError, match="from PENDING to SUCCEEDED"):
        book.set_files(["f0", "f1"], FileState.SUCCEEDED, 2.0, "", error=None)
    assert book.count(FileState.PENDING) == 1
    assert book.count(FileState.RUNNING) == 1
    assert not book.take_changes()
    book.set_files([], FileState.CANCELLED, 3.0, "nothing waits", error=None)
    assert not book.take_changes(), "an empty bulk move is no event"


def test_succeeded_files_with_warnings_are_counted_and_handed_over() -> None:
    warned = (ResultWarning(WarningCode.NO_TEXT_LAYER, "text", 1, 1),)
    book = _book(3)
    book.set_batch(BatchState.RUNNING, 1.0)
    for file_id in ("f0", "f1", "f2"):
        book.set_file(file_id, FileState.RUNNING, 2.0)
    book.set_file("f0", FileState.SUCCEEDED, 3.0, warnings=warned)
    book.set_file("f1", FileState.SUCCEEDED, 3.0)
    book.set_file("f2", FileState.FAILED, 3.0)

    changes = book.take_changes()

    assert book.files_with_warnings == changes.files_with_warnings == 1
    assert changes.events[-1].counts[FileState.SUCCEEDED] == 2
    # A book rebuilt from the stored files counts the same.
    assert BatchBook(book.view()).files_with_warnings == 1
    assert book.view().summary().files_with_warnings == 1


def test_a_change_by_state_moves_held_files_and_counts_the_others() -> None:
    book = _book(5)
    book.set_file("f0", FileState.RUNNING, 1.0)
    summary = book.summary()
    # A book holding only f0 and f1 of the five, as a supervisor would.
    partial = BatchBook(summary, [book.file("f0"), book.file("f1")])
    error = FileError.of(ErrorCode.CANCELLED, 2.0)
    with pytest.raises(ValueError, match="5 files cannot leave PENDING: 4 are in it"):
        partial.set_state(FileState.PENDING, FileState.CANCELLED, 2.0, "", error=error, count=5)

    partial.set_state(FileState.PENDING, FileState.CANCELLED, 2.0, "stop", error=error, count=4)

    assert partial.count(FileState.CANCELLED) == 4
    assert partial.count(FileState.RUNNING) == 1
    assert partial.file("f1").state is FileState.CANCELLED
    assert partial.file("f0").state is FileState.RUNNING
    event = partial.take_changes().events[-1]
    assert event.bulk == BulkChange(
        (), FileState.CANCELLED, error, from_state=FileState.PENDING, count=4
    )
    assert event.counts[FileState.CANCELLED] == 4
    # Stored, a settled file is let go; the running one stays.
    partial.forget_settled()
    assert [f.file_id for f in partial.files()] == ["f0"]
    assert not partial.holds("f1")


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(list(FileState)), st.booleans()),
        max_size=40,
    )
)
def test_only_settled_files_whose_changes_were_handed_over_are_let_go(
    steps: list[tuple[int, FileState, bool]],
) -> None:
    stored = {f.file_id: f for f in _book(4).files()}
    book = BatchBook(_book(4).summary(), stored.values())
    changed: set[str] = set()
    for index, target, hand_over in steps:
        file_id = f"f{index}"
        # A file let go is read from the store again, as a supervisor does.
        book.hold(stored[file_id])
        if target in FILE_TRANSITIONS[book.file(file_id).state]:
            stored[file_id] = book.set_file(file_id, target, 1.0)
            changed.add(file_id)
        if hand_over:
            book.take_changes()
            changed.clear()
        expected = [f.file_id for f in book.files() if not f.state.terminal or f.file_id in changed]

        book.forget_settled()

        assert [f.file_id for f in book.files()] == expected


def test_events_count_every_state_in_order_whatever_the_stored_counts() -> None:
    batch = BatchRecord("b1", "demo", BatchPolicy(), BatchState.PENDING, 0.0, 0.0)
    # Stored counts leave out empty states, in any order.
    summary = BatchSummary(batch, {FileState.FAILED: 1, FileState.PENDING: 2})
    book = BatchBook(summary, [FileRecord("f0", "0.pdf", "0" * 64, 1)])

    book.set_batch(BatchState.RUNNING, 1.0)
    book.set_file("f0", FileState.RUNNING, 2.0)
    changes = book.take_changes()

    def in_order(**counts: int) -> list[tuple[FileState, int]]:
        return [(state, counts.get(state.name.lower(), 0)) for state in FileState]

    # The order is stored too (in an event's JSON), so it is checked with the numbers.
    started, moved = changes.events
    assert list(started.counts.items()) == in_order(pending=2, failed=1)
    now = in_order(pending=1, running=1, failed=1)
    assert list(moved.counts.items()) == now
    assert list(changes.counts.items()) == now
    assert list(book.summary().counts.items()) == now
