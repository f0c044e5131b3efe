"""The batch manager restarts batch supervisors that die, within an intensity limit."""

from __future__ import annotations

from pathlib import Path

from actors.model import AttemptOutcome, BatchState, FileState
from tests.harness import FlakyStore, build_harness


def test_a_supervisor_that_dies_is_restarted_from_the_stored_state(tmp_path: Path) -> None:
    # Commit 1 starts the attempt; commit 2 would record its success, and fails.
    store = FlakyStore(fail=lambda n: n == 2)
    for h in build_harness(tmp_path, store=store):
        batch_id = h.runtime.submit(h.files(b"ok")).batch.batch_id
        view = h.settled(batch_id)
        assert view.batch.state is BatchState.SUCCEEDED
        outcomes = [a.outcome for a in view.files[0].attempts]
        assert outcomes == [AttemptOutcome.INTERRUPTED, AttemptOutcome.SUCCEEDED]
        assert view.files[0].round_failures == 0, "an interrupted attempt is not a failure"
        sequences = [e.sequence for e in store.events_after(batch_id, 0)]
        assert sequences == list(range(1, len(sequences) + 1))


def test_a_supervisor_that_keeps_dying_fails_its_batch_with_a_reason(tmp_path: Path) -> None:
    # Every restart's start commits; every attempt's outcome fails to commit.
    store = FlakyStore(fail=lambda n: n % 2 == 0 and n <= 8)
    for h in build_harness(tmp_path, store=store):
        batch_id = h.runtime.submit(h.files(b"ok")).batch.batch_id
        view = h.settled(batch_id)
        assert view.batch.state is BatchState.FAILED
        assert "supervisor failed 4 times" in view.batch.reason
        assert view.files[0].state is FileState.FAILED
        assert store.commits == 9


def test_other_batches_are_untouched_by_a_dying_supervisor(tmp_path: Path) -> None:
    store = FlakyStore(fail=lambda n: n == 3)
    for h in build_harness(tmp_path, store=store):
        first = h.runtime.submit(h.files(b"ok")).batch.batch_id
        h.settled(first)
        second = h.runtime.submit(h.files(b"ok", b"ok")).batch.batch_id
        assert h.settled(second).batch.state is BatchState.SUCCEEDED
        assert h.runtime.get(first).batch.state is BatchState.SUCCEEDED
