"""The supervision core, driven through the runtime with real worker processes.

Time is a fake clock: backoffs and deadlines move only when a test advances it, so
delays are checked exactly and no test sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pykka
import pytest

from actors.execution.contract import AttemptSuccess
from actors.orchestration.clock import FakeScheduler
from actors.orchestration.file_actor import FileActor
from actors.orchestration.messages import BackoffElapsed
from actors.orchestration.runtime import NewFile, Runtime
from actors.orchestration.supervisor import BatchSupervisor
from actors.policy.book import Changes
from actors.policy.catalogue import ErrorCode
from actors.policy.document import DocumentDetails, PageInfo
from actors.policy.model import (
    AttemptOutcome,
    BatchEvent,
    BatchState,
    BatchView,
    DocumentInfo,
    ExtractionResult,
    FileState,
)
from actors.policy.refusals import FileNotFound, RetryRefused
from actors.policy.rules import BatchPolicy, FailureThreshold, RestartIntensity, RetryPolicy
from actors.storage.blobs import BlobStore
from actors.storage.store import MemoryStore
from tests.helpers.harness import Harness, build_harness
from tests.helpers.processes import eventually
from tests.helpers.scripted_execution import Quiet, ScriptedExecutor


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from build_harness(tmp_path)


def _policy(**retry: object) -> BatchPolicy:
    defaults: dict[str, object] = {"jitter": "none", "initial_backoff": 1.0, "multiplier": 2.0}
    return BatchPolicy(max_concurrency=4, retry=RetryPolicy(**(defaults | retry)))


def _states(view: BatchView) -> list[FileState]:
    return [f.state for f in view.files]


def _in_state(state: FileState, count: int = 1) -> object:
    return lambda view: view.counts[state] >= count


def test_retryable_failures_back_off_exactly_as_the_policy_says(h: Harness) -> None:
    batch = h.runtime.submit(
        h.files(b"crash-until:4"),
        policy=_policy(max_attempts=5, initial_backoff=2.0, multiplier=3.0, jitter="full"),
    ).batch
    expected_delays = [1.0, 3.0, 9.0]  # rand() = 0.5 of caps 2, 6, 18
    for attempt, delay in enumerate(expected_delays, start=1):
        view = h.waiter.until(
            batch.batch_id,
            lambda v, n=attempt: (
                v.files[0].state is FileState.BACKOFF and len(v.files[0].attempts) == n
            ),
        )
        record = view.files[0]
        assert record.attempts[-1].retry_delay == pytest.approx(delay)
        assert record.attempts[-1].code is ErrorCode.WORKER_CRASHED
        assert record.next_attempt_at == pytest.approx(h.clock.now() + delay)
        h.clock.advance(delay - 0.001)
        assert h.store.load(batch.batch_id).files[0].state is FileState.BACKOFF  # type: ignore[union-attr]
        h.clock.advance(0.001)
    view = h.settled(batch.batch_id)
    assert view.batch.state is BatchState.SUCCEEDED
    assert [a.outcome for a in view.files[0].attempts] == [
        AttemptOutcome.FAILED,
        AttemptOutcome.FAILED,
        AttemptOutcome.FAILED,
        AttemptOutcome.SUCCEEDED,
    ]
    assert view.files[0].round_failures == 3


def test_retries_stop_when_attempts_run_out(h: Harness) -> None:
    batch = h.runtime.submit(h.files(b"segv"), policy=_policy(max_attempts=2)).batch
    h.waiter.until(batch.batch_id, _in_state(FileState.BACKOFF))  # type: ignore[arg-type]
    h.clock.advance(1.0)
    view = h.settled(batch.batch_id)
    assert view.batch.state is BatchState.FAILED
    assert len(view.files[0].attempts) == 2
    assert view.files[0].error is not None
    assert view.files[0].error.code is ErrorCode.WORKER_CRASHED


def test_restart_intensity_trips_and_fails_the_batch_with_a_reason(h: Harness) -> None:
    policy = BatchPolicy(
        max_concurrency=3,
        retry=RetryPolicy(max_attempts=10, jitter="none"),
        restart_intensity=RestartIntensity(max_restarts=2, within_seconds=60),
    )
    batch = h.runtime.submit(h.files(b"exit:9", b"exit:9", b"exit:9", b"hang"), policy=policy)
    view = h.settled(batch.batch.batch_id)
    assert view.batch.state is BatchState.FAILED
    assert "More than 2 automatic restarts within 60 s" in view.batch.reason
    assert view.counts[FileState.FAILED] == 1
    assert view.counts[FileState.CANCELLED] == 3
    assert sum(len(f.attempts) for f in view.files[:3]) == 3


def test_tolerated_failure_threshold_fails_fast(h: Harness) -> None:
    policy = BatchPolicy(
        max_concurrency=1,
        retry=RetryPolicy(max_attempts=1),
        tolerated_failures=FailureThreshold(max_failed_files=1),
    )
    files = h.files(b"pdf-error", b"bug", b"ok", b"ok", b"ok")
    view = h.settled(h.runtime.submit(files, policy=policy).batch.batch_id)
    assert view.batch.state is BatchState.FAILED
    assert "2 of 5 files failed" in view.batch.reason
    assert _states(view) == [FileState.FAILED, FileState.FAILED] + [FileState.CANCELLED] * 3
    assert all(not f.attempts for f in view.files[2:])


def test_cancel_moves_every_waiting_file_in_one_event(h: Harness) -> None:
    contents = [b"hang", b"hang", *[b"ok"] * 6]
    policy = BatchPolicy(max_concurrency=2)
    batch_id = h.runtime.submit(h.files(*contents), policy=policy).batch.batch_id
    before = h.waiter.until(batch_id, _in_state(FileState.RUNNING, 2))  # type: ignore[arg-type]
    cancelled = h.runtime.cancel(batch_id)
    assert cancelled.counts[FileState.CANCELLED] == 8
    events = h.store.events_after(batch_id, before.batch.sequence)
    bulk = [e for e in events if e.bulk is not None]
    assert len(bulk) == 1, "the six waiting files are cancelled by one event"
    waiting = tuple(f.file_id for f in before.files[2:])
    assert bulk[0].bulk is not None
    assert bulk[0].bulk.file_ids == waiting
    assert bulk[0].reason == "cancelled before its next attempt: Cancelled (client)."
    stopped = [(e.previous_state, e.file.state) for e in events if e.file is not None]
    assert stopped == [(FileState.RUNNING, FileState.CANCELLED)] * 2
    assert len(events) == 1 + 1 + 2 + 1, "CANCELLING, the bulk, the two running, CANCELLED"
    stored = h.store.load(batch_id)
    assert stored is not None
    assert all(f.error is not None and f.error.code is ErrorCode.CANCELLED for f in stored.files)


def test_manual_retry_reruns_failed_files_with_a_fresh_budget(h: Harness) -> None:
    policy = BatchPolicy(max_manual_retries=2, retry=RetryPolicy(max_attempts=1))
    batch_id = h.runtime.submit(h.files(b"fail-until:3", b"ok"), policy=policy).batch.batch_id
    view = h.settled(batch_id)
    assert view.batch.state is BatchState.PARTIALLY_SUCCEEDED
    failed, done = view.files

    with pytest.raises(RetryRefused) as refused:
        h.runtime.retry(batch_id, [done.file_id])
    assert refused.value.reason == "FILE_ALREADY_SUCCEEDED"
    with pytest.raises(FileNotFound):
        h.runtime.retry(batch_id, ["nope"])

    reopened = h.runtime.retry(batch_id, [failed.file_id])
    assert reopened.batch.state is BatchState.RUNNING
    view = h.settled(batch_id)
    assert view.files[0].state is FileState.FAILED
    assert view.files[0].manual_retries == 1

    h.runtime.retry(batch_id)  # no ids: every failed and cancelled file
    view = h.settled(batch_id)
    assert view.batch.state is BatchState.SUCCEEDED
    assert view.files[0].manual_retries == 2
    assert [a.number for a in view.files[0].attempts] == [1, 2, 3]
    assert len(view.files[1].attempts) == 1, "a succeeded file is never processed again"


def test_manual_retry_cap_and_in_flight_refusals(h: Harness) -> None:
    policy = BatchPolicy(max_manual_retries=1, retry=RetryPolicy(max_attempts=1))
    batch_id = h.runtime.submit(h.files(b"pdf-error", b"hang"), policy=policy).batch.batch_id
    view = h.waiter.until(batch_id, _in_state(FileState.FAILED))  # type: ignore[arg-type]
    with pytest.raises(RetryRefused) as refused:
        h.runtime.retry(batch_id, [view.files[1].file_id])
    assert refused.value.reason == "FILE_IN_FLIGHT"
    h.runtime.retry(batch_id, [view.files[0].file_id])
    view = h.waiter.until(
        batch_id, lambda v: v.files[0].state is FileState.FAILED and v.files[0].manual_retries
    )
    with pytest.raises(RetryRefused) as refused:
        h.runtime.retry(batch_id, [view.files[0].file_id])
    assert refused.value.reason == "MANUAL_RETRY_LIMIT"
    h.runtime.cancel(batch_id)


def test_events_count_up_without_gaps(h: Harness) -> None:
    batch_id = h.runtime.submit(h.files(b"ok", b"pdf-error", b"ok")).batch.batch_id
    h.settled(batch_id)
    sequences = [e.sequence for e in h.store.events_after(batch_id, 0)]
    assert sequences == list(range(1, len(sequences) + 1))
    assert h.store.load(batch_id).batch.sequence == sequences[-1]  # type: ignore[union-attr]


def test_every_file_transition_says_from_where_and_why(h: Harness) -> None:
    policy = BatchPolicy(retry=RetryPolicy(max_attempts=2, jitter="none", initial_backoff=4))
    batch_id = h.runtime.submit(h.files(b"crash-until:2"), policy=policy).batch.batch_id
    h.waiter.until(batch_id, _in_state(FileState.BACKOFF))  # type: ignore[arg-type]
    h.clock.advance(4)
    h.settled(batch_id)
    history = [
        (e.previous_state, e.file.state, e.reason)
        for e in h.store.events_after(batch_id, 0)
        if e.file is not None
    ]
    # A start is told if the attempt still ran at the next commit; otherwise its end
    # tells both, from the state before the start.
    for number in (1, 2):
        started = (FileState.PENDING, FileState.RUNNING, f"attempt {number} started")
        if started in history:
            at = history.index(started)
            history[at : at + 2] = [(FileState.PENDING, *history[at + 1][1:])]
    assert history == [
        (
            FileState.PENDING,
            FileState.BACKOFF,
            "attempt 1 failed with WORKER_CRASHED; next attempt in 4 s",
        ),
        (FileState.BACKOFF, FileState.PENDING, "backoff over"),
        (FileState.PENDING, FileState.SUCCEEDED, "attempt 2 succeeded"),
    ]
    batch_changes = [
        (e.previous_state, e.batch_state) for e in h.store.events_after(batch_id, 0) if not e.file
    ]
    assert batch_changes == [
        (BatchState.PENDING, BatchState.RUNNING),
        (BatchState.RUNNING, BatchState.SUCCEEDED),
    ]


class _GatedStore(MemoryStore):
    """Holds the batch's first commit until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.held = threading.Event()
        self.gate = threading.Event()
        self.committed: list[list[FileState | None]] = []

    def commit(self, changes: Changes, results: Mapping[str, ExtractionResult]) -> None:
        states = [e.file.state if e.file else None for e in changes.events]
        if not self.held.is_set():
            self.held.set()
            assert self.gate.wait(30)
        super().commit(changes, results)
        self.committed.append(states)


def _first_outcome_handled(h: Harness) -> None:
    """Wait until the supervisor handled the first of two files (one at a time) that
    ended: it handed the second one to the pool then."""
    eventually(lambda: h.pool.stats().handovers == 2)


def _until_second_runs(h: Harness, batch_id: str, committed: BatchView) -> None:
    """From the commit that stored the first file's outcome, advance the clock until
    the second file is stored as running: its start was in that commit, or its own
    waits for the interval."""
    if committed.files[1].state is not FileState.RUNNING:
        h.clock.wait_for_timer(5.0, timeout=30)
        h.clock.advance(5.0)
    h.waiter.until(batch_id, lambda v: v.files[1].state is FileState.RUNNING)


def test_a_report_that_finds_the_inbox_empty_waits_for_the_commit_interval(
    tmp_path: Path,
) -> None:
    for h in build_harness(tmp_path, commit_interval=5.0):
        files = h.files(b"ok", b"hang")
        policy = BatchPolicy(max_concurrency=1)
        batch_id = h.runtime.submit(files, policy=policy).batch.batch_id
        # The first file's start and outcome came alone, just after the commit that
        # started the batch: their commit waits for the interval (the clock is the
        # test's), while the second file is handed over.
        _first_outcome_handled(h)
        h.clock.wait_for_timer(5.0, timeout=30)
        view = h.store.load(batch_id)
        assert view is not None
        assert [f.state for f in view.files] == [FileState.PENDING, FileState.PENDING]

        h.clock.advance(5.0)

        done = h.waiter.until(batch_id, lambda v: v.files[0].state is FileState.SUCCEEDED)
        (attempt,) = done.files[0].attempts
        assert attempt.outcome is AttemptOutcome.SUCCEEDED
        _until_second_runs(h, batch_id, done)
        h.runtime.cancel(batch_id)
        assert h.settled(batch_id).batch.state is BatchState.CANCELLED


def test_a_commit_leaves_no_timer_behind_when_nothing_waits_to_be_stored(
    tmp_path: Path,
) -> None:
    for h in build_harness(tmp_path, commit_interval=5.0):
        policy = BatchPolicy(max_concurrency=1)
        batch_id = h.runtime.submit(h.files(b"ok", b"hang"), policy=policy).batch.batch_id
        # The first outcome waits for the interval; the second file's start with it, or
        # for the next one.
        _first_outcome_handled(h)
        h.clock.wait_for_timer(5.0, timeout=30)
        h.clock.advance(5.0)
        done = h.waiter.until(batch_id, lambda v: v.files[0].state is FileState.SUCCEEDED)
        _until_second_runs(h, batch_id, done)
        (supervisor,) = pykka.ActorRegistry.get_by_class(BatchSupervisor)
        for _ in range(3):
            # Whatever commit waited is due. A stale timer's message (a file that
            # left its backoff long ago) changes nothing, stores nothing, and is
            # answered once the supervisor has handled what came before it.
            h.clock.advance(5.0)
            supervisor.ask(BackoffElapsed("gone", 1), timeout=30)

        # A timer armed after a commit that stored everything would tick every
        # interval for as long as the file runs.
        soon = h.clock.now() + 5.0
        assert [due for due in h.clock.pending() if due <= soon] == []
        h.runtime.cancel(batch_id)
        assert h.settled(batch_id).batch.state is BatchState.CANCELLED


def test_reports_wait_for_the_group_commit_while_the_executor_has_work_queued(
    tmp_path: Path,
) -> None:
    quiet = Quiet()
    clock = FakeScheduler()
    store = MemoryStore()
    executor = ScriptedExecutor(quiet.changed)
    # Queued work for far longer than the interval: the workers stay busy meanwhile.
    executor.queued = 60.0
    runtime = Runtime(
        store=store,
        blobs=BlobStore(tmp_path / "blobs"),
        executor=executor,
        scheduler=clock,
        commit_interval=5.0,
    )
    commits: list[list[tuple[str, FileState]]] = []

    def heard(events: Sequence[BatchEvent]) -> None:
        commits.append([(e.file.file_id, e.file.state) for e in events if e.file is not None])
        quiet.changed()

    unsubscribe = store.subscribe(heard)
    try:
        files = [NewFile(name=f"{i}.pdf", blob="ab" * 32, size=1) for i in range(4)]
        batch_id = runtime.submit(files, policy=BatchPolicy(max_concurrency=2)).batch.batch_id
        quiet.wait(lambda: None if len(executor.live()) == 2 else "two attempts to queue", 30)
        first, second = sorted(executor.live())
        # Handled at once: the supervisor waited for nothing. It starts the third file,
        # then holds what changed for the interval, in its inbox.
        assert executor.end(first, AttemptSuccess(_one_page(first.file_id), 4242))
        clock.wait_pending(1, timeout=30)
        assert len(executor.submitted) == 3
        assert executor.end(second, AttemptSuccess(_one_page(second.file_id), 4242))
        (supervisor,) = pykka.ActorRegistry.get_by_class(BatchSupervisor)

        # The report waits in the inbox, unread: the fourth file waits for it (a woken
        # supervisor would start it within microseconds; this waits far longer).
        with pytest.raises(AssertionError, match="still waits"):
            quiet.wait(lambda: None if len(executor.submitted) > 3 else "still waits", 0.5)
        assert supervisor.actor_inbox.qsize() == 1
        clock.advance(5.0)

        quiet.wait(lambda: None if len(executor.submitted) > 3 else "the fourth file", 30)
        second_done = ("f00002", FileState.SUCCEEDED)
        quiet.wait(lambda: None if any(second_done in c for c in commits) else "its commit", 30)
        # Handled at the commit's moment, and stored with what was held. The third and
        # fourth files wait for a worker: no start of theirs is stored.
        (together,) = [c for c in commits if second_done in c]
        assert together == [("f00001", FileState.SUCCEEDED), second_done]
        runtime.cancel(batch_id)
    finally:
        unsubscribe()
        runtime.close()
        executor.close()
        clock.close()


def _one_page(file_id: str) -> ExtractionResult:
    text = f"the text of {file_id}"
    return ExtractionResult(
        page_count=1,
        encrypted=False,
        info=DocumentInfo(),
        pages=(text,),
        details=DocumentDetails(pages=(PageInfo(characters=len(text)),)),
    )


def test_reports_that_queue_up_during_a_commit_are_stored_in_one_commit(
    tmp_path: Path,
) -> None:
    store = _GatedStore()
    for h in build_harness(tmp_path, store=store):
        files = h.files(b"ok", b"ok", b"ok", b"ok")
        batch_id = h.runtime.submit(files, policy=BatchPolicy(max_concurrency=4)).batch.batch_id
        # The attempts are handed to the workers before the commit that starts the batch.
        assert store.held.wait(30)
        # A file actor stops right after it told the supervisor its outcome: once none
        # is left, every outcome waits in the supervisor's inbox behind the held commit.
        deadline = time.monotonic() + 30
        while pykka.ActorRegistry.get_by_class(FileActor):
            assert time.monotonic() < deadline, "the attempts did not finish"
            time.sleep(0.01)
        store.gate.set()
        assert h.settled(batch_id).batch.state is BatchState.SUCCEEDED
        assert store.committed[-1] == [FileState.SUCCEEDED] * 4 + [None], (
            "the four outcomes that queued up, and the batch's end, in one commit"
        )
        assert len(store.committed) == 2, "the batch's start, then everything that queued"
