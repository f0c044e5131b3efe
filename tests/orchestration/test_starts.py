"""A file runs once a worker has it: attempts handed over wait as their file's state,
and a start is stored with the first group commit once it is due (at once, or once the
worker has run the attempt for ``show_running_after``), or with the attempt's end.

The runtime is real (manager, supervisor, file actors, store); the executor is scripted,
so the test decides when a worker picks an attempt up and when it ends, and the clock is
the test's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from actors.execution.contract import AttemptFailure, AttemptSuccess
from actors.orchestration.clock import FakeScheduler
from actors.orchestration.runtime import NewFile, Runtime
from actors.orchestration.starts import StartNote, StartNotes
from actors.policy.catalogue import ErrorCode
from actors.policy.model import (
    AttemptOutcome,
    BatchEvent,
    BatchState,
    BatchView,
    DocumentInfo,
    ExtractionResult,
    FileState,
)
from actors.policy.rules import BatchPolicy
from actors.storage.blobs import BlobStore
from actors.storage.store import MemoryStore
from tests.helpers.scripted_execution import AttemptKey, Quiet, ScriptedExecutor

INTERVAL = 5.0
AFTER = 12.0


@dataclass
class Rig:
    runtime: Runtime
    executor: ScriptedExecutor
    clock: FakeScheduler
    store: MemoryStore
    quiet: Quiet
    events: list[BatchEvent]

    def submit(self, files: int, max_concurrency: int) -> str:
        new = [NewFile(name=f"{i}.pdf", blob="ab" * 32, size=1) for i in range(files)]
        policy = BatchPolicy(max_concurrency=max_concurrency)
        batch_id = self.runtime.submit(new, policy=policy).batch.batch_id
        self.quiet.wait(
            lambda: None if len(self.executor.live()) == max_concurrency else "hand-overs", 30
        )
        # The commit that started the batch: the next one waits an interval from it.
        self.until(batch_id, "started", lambda v: v.batch.state is BatchState.RUNNING)
        return batch_id

    def view(self, batch_id: str) -> BatchView:
        view = self.store.load(batch_id)
        assert view is not None
        return view

    def until(self, batch_id: str, what: str, check: object) -> BatchView:
        def problem() -> str | None:
            return None if check(self.view(batch_id)) else what  # type: ignore[operator]

        self.quiet.wait(problem, 30)
        return self.view(batch_id)

    def first_end_stored(self, batch_id: str, since_commit: float) -> BatchView:
        """Let the group commit held since the last one (``since_commit`` seconds ago)
        happen; the view once it stored the first file's end."""
        self.clock.wait_for_timer(INTERVAL - since_commit, timeout=30)
        self.clock.advance(INTERVAL - since_commit)
        return self.until(batch_id, "stored", lambda v: v.counts[FileState.SUCCEEDED] == 1)

    def keys(self) -> list[AttemptKey]:
        return sorted(self.executor.live())


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from _rig(tmp_path, show_running_after=0.0)


@pytest.fixture
def rig_later(tmp_path: Path) -> Iterator[Rig]:
    """Files are stored as running once their worker has run them for ``AFTER``."""
    yield from _rig(tmp_path, show_running_after=AFTER)


def _rig(tmp_path: Path, *, show_running_after: float) -> Iterator[Rig]:
    quiet = Quiet()
    clock = FakeScheduler()
    store = MemoryStore()
    executor = ScriptedExecutor(quiet.changed)
    runtime = Runtime(
        store=store,
        blobs=BlobStore(tmp_path / "blobs"),
        executor=executor,
        scheduler=clock,
        commit_interval=INTERVAL,
        show_running_after=show_running_after,
    )
    events: list[BatchEvent] = []

    def heard(committed: Sequence[BatchEvent]) -> None:
        events.extend(committed)
        quiet.changed()

    unsubscribe = store.subscribe(heard)
    try:
        yield Rig(runtime, executor, clock, store, quiet, events)
    finally:
        unsubscribe()
        runtime.close()
        executor.close()
        clock.close()


def _result() -> ExtractionResult:
    return ExtractionResult(page_count=1, encrypted=False, info=DocumentInfo(), pages=("t",))


def _file_events(rig: Rig, file_id: str) -> list[tuple[FileState | None, FileState]]:
    return [
        (e.previous_state, e.file.state)  # type: ignore[misc]
        for e in rig.events
        if e.file is not None and e.file.file_id == file_id
    ]


def test_a_file_handed_over_waits_until_a_worker_starts_it(rig: Rig) -> None:
    batch_id = rig.submit(files=3, max_concurrency=2)
    # Both attempts are with the executor; no worker has either.
    view = rig.view(batch_id)
    assert view.counts[FileState.PENDING] == 3
    assert view.counts[FileState.RUNNING] == 0
    assert all(not f.attempts for f in view.files)

    first, second = rig.keys()
    began = rig.clock.now()
    rig.clock.advance(1.0)
    rig.executor.start(first, 4242, rig.clock.now())
    # Stored with the next group commit, an interval after the last one.
    rig.clock.wait_for_timer(INTERVAL - 1.0, timeout=30)
    assert rig.view(batch_id).counts[FileState.RUNNING] == 0
    rig.clock.advance(INTERVAL - 1.0)
    view = rig.until(batch_id, "the start stored", lambda v: v.counts[FileState.RUNNING] == 1)
    running = view.file(first.file_id)
    assert running is not None
    assert running.state is FileState.RUNNING
    (attempt,) = running.attempts
    assert attempt.number == 1
    assert attempt.started_at == began + 1.0, "an attempt counts from its worker's start"
    assert _file_events(rig, first.file_id) == [(FileState.PENDING, FileState.RUNNING)]
    assert view.file(second.file_id).state is FileState.PENDING  # type: ignore[union-attr]
    rig.runtime.cancel(batch_id)


def test_an_attempt_that_ends_before_the_next_commit_is_stored_once(rig: Rig) -> None:
    # Two files, one at a time: the first one's end does not settle the batch (which
    # would commit at once).
    batch_id = rig.submit(files=2, max_concurrency=1)
    (key,) = rig.keys()
    began = rig.clock.now()
    rig.clock.advance(1.0)
    rig.executor.start(key, 4242, rig.clock.now())
    rig.clock.advance(1.0)
    assert rig.executor.end(key, AttemptSuccess(_result(), 4242))
    view = rig.first_end_stored(batch_id, since_commit=2.0)
    (attempt,) = view.files[0].attempts
    assert (attempt.started_at, attempt.ended_at) == (began + 1.0, began + 2.0)
    assert attempt.outcome is AttemptOutcome.SUCCEEDED
    assert attempt.worker_pid == 4242
    # One event for the file: its end, from the state last told.
    assert _file_events(rig, key.file_id) == [(FileState.PENDING, FileState.SUCCEEDED)]
    rig.runtime.cancel(batch_id)


def test_an_attempt_no_worker_took_is_stored_from_its_hand_over(rig: Rig) -> None:
    batch_id = rig.submit(files=2, max_concurrency=1)
    (key,) = rig.keys()
    began = rig.clock.now()
    rig.clock.advance(1.0)
    # Refused before any worker had it (as screening refuses a file that is no PDF).
    assert rig.executor.end(key, AttemptSuccess(_result(), None))
    view = rig.first_end_stored(batch_id, since_commit=1.0)
    (attempt,) = view.files[0].attempts
    assert (attempt.started_at, attempt.ended_at) == (began, began + 1.0)
    rig.runtime.cancel(batch_id)


def test_a_cancel_stops_what_runs_as_running_and_what_waits_as_waiting(rig: Rig) -> None:
    batch_id = rig.submit(files=4, max_concurrency=3)
    started, *handed = rig.keys()
    rig.executor.start(started, 4242, rig.clock.now())
    # Not stored yet: the cancel stores it first, then stops it as a running attempt.
    assert rig.view(batch_id).counts[FileState.RUNNING] == 0
    rig.runtime.cancel(batch_id)
    view = rig.until(batch_id, "cancelled", lambda v: v.batch.state is BatchState.CANCELLED)
    assert view.counts[FileState.CANCELLED] == 4
    assert rig.executor.live() == {}
    by_id = {f.file_id: f for f in view.files}
    (stopped,) = by_id[started.file_id].attempts
    assert stopped.outcome is AttemptOutcome.CANCELLED
    assert stopped.worker_pid == 4242
    for key in handed:
        cancelled = by_id[key.file_id]
        assert cancelled.attempts == (), "no worker had it: no attempt is counted"
        assert cancelled.error is not None
        assert cancelled.error.code is ErrorCode.CANCELLED


def test_notes_wake_the_supervisor_once_until_a_commit_takes_them() -> None:
    now = [0.0]
    woken = threading.Semaphore(0)
    notes = StartNotes(lambda: now[0], woken.release)
    notes.note("f1", 1)
    now[0] = 2.0
    notes.note("f2", 3)
    assert woken.acquire(timeout=0)
    assert not woken.acquire(timeout=0), "one wake for both"
    assert notes.due
    # Read for an attempt that ended: a commit is still due, and no new wake comes.
    assert notes.take(rearm=False) == [StartNote("f1", 1, 0.0), StartNote("f2", 3, 2.0)]
    notes.note("f3", 1)
    assert notes.due
    assert not woken.acquire(timeout=0)
    # Taken for a commit: the next note wakes the supervisor again.
    assert notes.take(rearm=True) == [StartNote("f3", 1, 2.0)]
    assert not notes.due
    notes.note("f4", 1)
    assert woken.acquire(timeout=0)


def test_a_start_is_stored_once_its_worker_has_run_it_long_enough(rig_later: Rig) -> None:
    rig = rig_later
    batch_id = rig.submit(files=3, max_concurrency=2)
    first, second = rig.keys()
    began = rig.clock.now()
    rig.clock.advance(1.0)
    rig.executor.start(first, 4242, rig.clock.now())
    # The commit due an interval after the last one has nothing to store: it is not
    # even held for; the start is due AFTER from the worker's start.
    rig.clock.wait_for_timer(AFTER, timeout=30)
    assert began + INTERVAL not in rig.clock.pending()
    rig.clock.advance(AFTER - 0.5)
    rig.executor.start(second, 4343, rig.clock.now())
    assert rig.view(batch_id).counts[FileState.RUNNING] == 0
    rig.clock.advance(0.5)
    view = rig.until(batch_id, "the start stored", lambda v: v.counts[FileState.RUNNING] == 1)
    (attempt,) = view.file(first.file_id).attempts  # type: ignore[union-attr]
    assert attempt.started_at == began + 1.0
    # The second one's start is due AFTER from its own.
    rig.clock.wait_for_timer(AFTER - 0.5, timeout=30)
    assert rig.view(batch_id).file(second.file_id).state is FileState.PENDING  # type: ignore[union-attr]
    rig.clock.advance(AFTER - 0.5)
    view = rig.until(batch_id, "both stored", lambda v: v.counts[FileState.RUNNING] == 2)
    assert _file_events(rig, second.file_id) == [(FileState.PENDING, FileState.RUNNING)]
    rig.runtime.cancel(batch_id)


def test_an_attempt_shorter_than_the_wait_is_stored_by_its_end_alone(rig_later: Rig) -> None:
    rig = rig_later
    batch_id = rig.submit(files=3, max_concurrency=2)
    short, other = rig.keys()
    began = rig.clock.now()
    rig.executor.start(short, 4242, began)
    rig.executor.start(other, 4343, began)
    rig.clock.advance(1.0)
    # The other file's end is stored by the next commit; the short one's start is not
    # due yet, so that commit leaves it.
    assert rig.executor.end(other, AttemptSuccess(_result(), 4343))
    rig.first_end_stored(batch_id, since_commit=1.0)
    assert rig.view(batch_id).file(short.file_id).state is FileState.PENDING  # type: ignore[union-attr]
    assert rig.executor.end(short, AttemptSuccess(_result(), 4242))
    rig.clock.wait_for_timer(INTERVAL, timeout=30)
    rig.clock.advance(INTERVAL)
    view = rig.until(batch_id, "stored", lambda v: v.counts[FileState.SUCCEEDED] == 2)
    (attempt,) = view.file(short.file_id).attempts  # type: ignore[union-attr]
    assert (attempt.started_at, attempt.ended_at) == (began, began + INTERVAL)
    assert _file_events(rig, short.file_id) == [(FileState.PENDING, FileState.SUCCEEDED)]
    rig.runtime.cancel(batch_id)


def test_a_start_waiting_to_be_stored_outlasts_a_request_that_commits(rig_later: Rig) -> None:
    rig = rig_later
    batch_id = rig.submit(files=2, max_concurrency=1)
    (failing,) = rig.keys()
    assert rig.executor.end(failing, AttemptFailure(ErrorCode.PDF_ENCRYPTED, 4141))
    rig.clock.wait_for_timer(INTERVAL, timeout=30)
    rig.clock.advance(INTERVAL)
    rig.until(batch_id, "failed", lambda v: v.counts[FileState.FAILED] == 1)
    rig.quiet.wait(lambda: None if len(rig.executor.live()) == 1 else "the next file", 30)
    (key,) = rig.keys()
    began = rig.clock.now()
    rig.executor.start(key, 4242, began)
    # A request answered after a commit of its own (a retry): the commit takes the
    # start's note, and leaves the start to be stored when it is due.
    rig.runtime.retry(batch_id, [failing.file_id])
    rig.clock.wait_for_timer(AFTER, timeout=30)
    rig.clock.advance(AFTER)
    view = rig.until(batch_id, "the start stored", lambda v: v.counts[FileState.RUNNING] == 1)
    (attempt,) = view.file(key.file_id).attempts  # type: ignore[union-attr]
    assert attempt.started_at == began
    rig.runtime.cancel(batch_id)
