"""The batch manager restarts batch supervisors that die, within an intensity limit."""

from __future__ import annotations

import os
from pathlib import Path

import pykka
import pytest

from actors.orchestration.manager import BatchManager
from actors.orchestration.supervisor import BatchSupervisor
from actors.policy.model import AttemptOutcome, BatchState, FileState
from actors.policy.rules import BatchPolicy, RetryPolicy
from tests.helpers.harness import FlakyStore, OutcomeFailingStore, build_harness
from tests.helpers.processes import eventually


def test_a_supervisor_that_dies_is_restarted_from_the_stored_state(tmp_path: Path) -> None:
    # The attempt is stored as running while its worker waits on the gate; the commit of
    # its success fails, and the supervisor with it.
    store = OutcomeFailingStore(times=1)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    for h in build_harness(tmp_path, store=store):
        batch_id = h.runtime.submit(h.files(b"gate:" + str(gate).encode())).batch.batch_id
        for attempt in (1, 2):
            h.waiter.until(
                batch_id,
                lambda v, n=attempt: (
                    v.files[0].state is FileState.RUNNING and len(v.files[0].attempts) == n
                ),
            )
            gate.write_text("open")
        view = h.settled(batch_id)
        assert view.batch.state is BatchState.SUCCEEDED
        assert store.failed == 1
        outcomes = [a.outcome for a in view.files[0].attempts]
        assert outcomes == [AttemptOutcome.INTERRUPTED, AttemptOutcome.SUCCEEDED]
        assert view.files[0].round_failures == 0, "an interrupted attempt is not a failure"
        sequences = [e.sequence for e in store.events_after(batch_id, 0)]
        assert sequences == list(range(1, len(sequences) + 1))


def test_a_supervisor_that_keeps_dying_fails_its_batch_with_a_reason(tmp_path: Path) -> None:
    # Every attempt's outcome fails to commit, as a bug in the supervisor's own work
    # would make it.
    store = OutcomeFailingStore(times=4, error=RuntimeError)
    for h in build_harness(tmp_path, store=store):
        batch_id = h.runtime.submit(h.files(b"ok")).batch.batch_id
        # The first restart is immediate; the next ones back off 0.5 s, then 1 s.
        for delay in (0.5, 1.0):
            h.clock.wait_for_timer(delay, timeout=30)
            h.clock.advance(delay)
        view = h.settled(batch_id)
        assert view.batch.state is BatchState.FAILED
        assert "supervisor failed 4 times" in view.batch.reason
        assert view.files[0].state is FileState.FAILED
        assert store.failed == 4


def test_other_batches_are_untouched_by_a_dying_supervisor(tmp_path: Path) -> None:
    store = FlakyStore(fail=lambda n: n == 3)
    for h in build_harness(tmp_path, store=store):
        first = h.runtime.submit(h.files(b"ok")).batch.batch_id
        h.settled(first)
        second = h.runtime.submit(h.files(b"ok", b"ok")).batch.batch_id
        assert h.settled(second).batch.state is BatchState.SUCCEEDED
        assert h.runtime.get(first).batch.state is BatchState.SUCCEEDED


def test_settled_batches_free_their_supervisor_and_a_retry_brings_one_back(
    tmp_path: Path,
) -> None:
    for h in build_harness(tmp_path):
        policy = BatchPolicy(retry=RetryPolicy(max_attempts=1))
        batch_ids = [
            h.runtime.submit(h.files(b"fail-until:2", b"ok"), policy=policy).batch.batch_id
            for _ in range(5)
        ]
        for batch_id in batch_ids:
            h.settled(batch_id)
        eventually(lambda: not pykka.ActorRegistry.get_by_class(BatchSupervisor))
        h.runtime.retry(batch_ids[0])
        view = h.settled(batch_ids[0])
        assert view.batch.state is BatchState.SUCCEEDED
        assert [len(f.attempts) for f in view.files] == [2, 1]


def test_a_store_outage_is_waited_out_however_long_it_lasts(tmp_path: Path) -> None:
    # Commits 2 to 7 fail: six restarts, more than the intensity (3 in 60 s) allows a
    # supervisor that fails on its own; the store's outage is no fault of the batch.
    store = FlakyStore(fail=lambda n: 2 <= n <= 7)
    for h in build_harness(tmp_path, store=store):
        batch_id = h.runtime.submit(h.files(b"ok")).batch.batch_id
        # The first restart is immediate; the next ones back off, doubling.
        for delay in (0.5, 1.0, 2.0, 4.0, 8.0):
            h.clock.wait_for_timer(delay, timeout=30)
            h.clock.advance(delay)
        view = h.settled(batch_id)
        assert view.batch.state is BatchState.SUCCEEDED
        assert view.files[0].state is FileState.SUCCEEDED
        (manager,) = pykka.ActorRegistry.get_by_class(BatchManager)
        assert manager.is_alive()


def test_the_manager_survives_a_store_that_stays_down(tmp_path: Path) -> None:
    store = FlakyStore(fail=lambda n: n >= 2)
    for h in build_harness(tmp_path, store=store):
        batch_id = h.runtime.submit(h.files(b"ok")).batch.batch_id
        for delay in (0.5, 1.0, 2.0):
            h.clock.wait_for_timer(delay, timeout=30)
            h.clock.advance(delay)
        # Still trying, later and later; the batch stays as last stored.
        h.clock.wait_for_timer(4.0, timeout=30)
        assert store.commits >= 5
        assert h.runtime.record(batch_id).state is BatchState.RUNNING
        (manager,) = pykka.ActorRegistry.get_by_class(BatchManager)
        assert manager.is_alive()


def test_cancelling_a_settled_batch_starts_no_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    original = BatchSupervisor.on_start

    def counted(self: BatchSupervisor) -> None:
        started.append(self.actor_urn)
        original(self)

    monkeypatch.setattr(BatchSupervisor, "on_start", counted)
    for h in build_harness(tmp_path):
        batch_id = h.runtime.submit(h.files(b"ok")).batch.batch_id
        settled = h.settled(batch_id)
        assert len(started) == 1
        assert h.runtime.cancel(batch_id) == settled.summary()
        assert len(started) == 1, "a supervisor was started from the store for nothing"
