"""A batch supervisor's memory follows its concurrency, not its batch; cancels and
retries of many files move whole states at once. Real runtime, supervisors, file
actors and stores (memory and SQLite); attempts end at once (no worker processes), so
that batches of tens of thousands of files run in seconds."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from actors.orchestration.clock import FakeScheduler
from actors.orchestration.file_actor import FileActor
from actors.orchestration.runtime import NewFile, Runtime
from actors.policy.book import BatchBook
from actors.policy.catalogue import ErrorCode
from actors.policy.model import BatchEvent, BatchState, BatchSummary, FileRecord, FileState
from actors.policy.refusals import RetryRefused
from actors.policy.rules import BatchPolicy
from actors.storage.blobs import BlobStore
from actors.storage.sqlite_store import SQLiteStore
from actors.storage.store import MemoryStore, Store, each_event
from tests.helpers.instant_execution import InstantExecutor, failing, succeeding

WAIT = 120.0
POLICY = BatchPolicy(max_concurrency=4)


class Rig:
    """A runtime over an instant executor, and a way to wait on a batch's counts."""

    def __init__(self, store: Store, blobs: BlobStore) -> None:
        self.store = store
        self.executor = InstantExecutor()
        self.clock = FakeScheduler()
        self.runtime = Runtime(
            store=store, blobs=blobs, executor=self.executor, scheduler=self.clock
        )
        self.blob = blobs.put(b"%PDF-1.4 not parsed here")
        self._changed = threading.Condition()
        # The last event of each batch: its state and counts, as committed.
        self._last: dict[str, tuple[BatchState, Mapping[FileState, int]]] = {}
        self._unsubscribe = store.subscribe(each_event(self._on_event))

    def _on_event(self, event: BatchEvent) -> None:
        with self._changed:
            self._last[event.batch_id] = (event.batch_state, event.counts)
            self._changed.notify_all()

    def submit(self, count: int) -> str:
        files = [NewFile(f"{n}.pdf", self.blob, 10) for n in range(count)]
        return self.runtime.submit(files, policy=POLICY).batch.batch_id

    def until(
        self, batch_id: str, condition: Callable[[BatchState, Mapping[FileState, int]], bool]
    ) -> BatchSummary:
        """Wait until the batch's state and counts satisfy ``condition``; then the
        batch as stored (checked on each event, not by reading the batch each time)."""
        stored = self.store.batch_summary(batch_id)
        assert stored is not None
        with self._changed:
            self._last.setdefault(batch_id, (stored.batch.state, stored.counts))
            reached = self._changed.wait_for(lambda: condition(*self._last[batch_id]), WAIT)
            last = self._last[batch_id]
        assert reached, f"not reached: {last}"
        summary = self.store.batch_summary(batch_id)
        assert summary is not None
        return summary

    def settled(self, batch_id: str) -> BatchSummary:
        return self.until(batch_id, lambda state, _: state.terminal)

    def files(self, batch_id: str) -> list[FileRecord]:
        view = self.store.load(batch_id)
        assert view is not None
        return list(view.files)

    def close(self) -> None:
        self._unsubscribe()
        self.runtime.close()
        self.executor.close()


@pytest.fixture(params=["memory", "sqlite"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    store: Store = (
        MemoryStore()
        if request.param == "memory"
        else SQLiteStore(tmp_path / "db.sqlite3", synchronous="NORMAL")
    )
    made = Rig(store, BlobStore(tmp_path / "blobs"))
    try:
        yield made
    finally:
        made.close()
        if isinstance(store, SQLiteStore):
            store.close()


@pytest.fixture
def most_held(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The most file records any book held at once, recorded at every file change.

    Read from the book's record dictionary, which has held every file of the batch
    for as long as books have existed: what this measures is what grows with a batch.
    """
    peak = {"files": 0}
    original = BatchBook.set_file

    def recorded(self: BatchBook, *args: Any, **kwargs: Any) -> Any:
        peak["files"] = max(peak["files"], len(self._files))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BatchBook, "set_file", recorded)
    return peak


def test_a_supervisor_holds_as_many_files_for_a_big_batch_as_for_a_small_one(
    tmp_path: Path, most_held: dict[str, int]
) -> None:
    # SQLite only: the memory store keeps every file by design (and pages by copying).
    store = SQLiteStore(tmp_path / "db.sqlite3", synchronous="NORMAL")
    rig = Rig(store, BlobStore(tmp_path / "blobs"))
    try:
        peaks = _peaks(rig, most_held)
    finally:
        rig.close()
        store.close()
    # The working set: the running files, a window of waiting ones, what awaits its
    # commit. The same for both sizes, within a page of waiting files.
    assert peaks[1_000] > 0
    assert peaks[10_000] <= peaks[1_000] + 2 * max(2 * POLICY.max_concurrency, 64), peaks
    assert peaks[10_000] < 500, peaks


def _peaks(rig: Rig, most_held: dict[str, int]) -> dict[int, int]:
    peaks = {}
    for count in (1_000, 10_000):
        most_held["files"] = 0
        batch_id = rig.submit(count)
        summary = rig.settled(batch_id)
        assert summary.batch.state is BatchState.SUCCEEDED
        assert summary.counts[FileState.SUCCEEDED] == count
        peaks[count] = most_held["files"]
    return peaks


def test_a_waiting_file_read_for_a_refused_retry_still_runs(rig: Rig) -> None:
    rig.executor.decide = lambda job: None  # the first files hold every slot
    batch_id = rig.submit(100)
    rig.until(batch_id, lambda _, counts: counts[FileState.RUNNING] == POLICY.max_concurrency)
    # f00080 lies beyond the supervisor's first window of waiting files: the retry reads
    # it into the book, then is refused (a waiting file cannot be retried).
    with pytest.raises(RetryRefused):
        rig.runtime.retry(batch_id, ["f00080", "f99999"])
    rig.executor.decide = succeeding
    rig.executor.release()

    summary = rig.settled(batch_id)

    assert summary.batch.state is BatchState.SUCCEEDED
    assert summary.counts[FileState.SUCCEEDED] == 100


def test_a_cancel_of_many_waiting_files_is_one_change_per_state(rig: Rig) -> None:
    rig.executor.decide = lambda job: None  # every attempt runs until cancelled
    batch_id = rig.submit(500)
    rig.until(batch_id, lambda _, counts: counts[FileState.RUNNING] == POLICY.max_concurrency)

    summary = rig.runtime.cancel(batch_id)

    assert summary.batch.state is BatchState.CANCELLED
    assert summary.counts[FileState.CANCELLED] == 500
    assert rig.executor.running() == 0
    bulk = [e.bulk for e in rig.store.events_after(batch_id, 0) if e.bulk is not None]
    assert [(b.from_state, b.state, b.count, b.file_ids) for b in bulk] == [
        (FileState.PENDING, FileState.CANCELLED, 500 - POLICY.max_concurrency, ())
    ]
    files = rig.files(batch_id)
    assert {f.state for f in files} == {FileState.CANCELLED}
    assert all(f.error is not None and f.error.code is ErrorCode.CANCELLED for f in files)
    assert rig.store.batch_summary(batch_id) == summary


def test_a_retry_of_every_failed_file_moves_them_by_state_then_runs_them(rig: Rig) -> None:
    rig.executor.decide = failing(ErrorCode.PDF_MALFORMED)  # not retried automatically
    batch_id = rig.submit(300)
    assert rig.settled(batch_id).counts[FileState.FAILED] == 300
    rig.executor.decide = succeeding

    summary = rig.runtime.retry(batch_id, requested_by="ops")

    assert summary.counts[FileState.FAILED] == 0
    settled = rig.settled(batch_id)
    assert settled.batch.state is BatchState.SUCCEEDED
    bulk = [e for e in rig.store.events_after(batch_id, 0) if e.bulk is not None]
    assert len(bulk) == 1
    change = bulk[0].bulk
    assert change is not None
    assert (change.from_state, change.state, change.count) == (
        FileState.FAILED,
        FileState.PENDING,
        300,
    )
    assert bulk[0].reason == "retried by ops"
    files = rig.files(batch_id)
    assert {f.manual_retries for f in files} == {1}
    assert {len(f.attempts) for f in files} == {2}
    assert rig.store.batch_summary(batch_id) == settled


def test_a_retry_of_every_file_with_none_left_to_retry_changes_nothing(rig: Rig) -> None:
    rig.executor.decide = failing(ErrorCode.PDF_MALFORMED)
    batch_id = rig.submit(150)
    rig.settled(batch_id)
    rig.runtime.retry(batch_id)
    rig.settled(batch_id)
    # The default policy allows this many manual retries.
    for _ in range(POLICY.max_manual_retries - 1):
        rig.runtime.retry(batch_id)
        rig.settled(batch_id)
    before = rig.store.batch_summary(batch_id)

    with pytest.raises(Exception, match="No file of this batch can be retried"):
        rig.runtime.retry(batch_id)

    assert rig.store.batch_summary(batch_id) == before


def test_resume_reads_the_working_set_not_the_batch(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3", synchronous="NORMAL")
    blobs = BlobStore(tmp_path / "blobs")
    first = Rig(store, blobs)
    first.executor.decide = lambda job: None
    batch_id = first.submit(5_000)
    first.until(batch_id, lambda _, counts: counts[FileState.RUNNING] == POLICY.max_concurrency)
    # Closing leaves the running files RUNNING in the store, as a crash would.
    first.close()
    loaded: list[str] = []
    original = store.load

    def counted(wanted: str) -> Any:
        loaded.append(wanted)
        return original(wanted)

    store.load = counted  # type: ignore[method-assign]
    second = Rig(store, blobs)
    try:
        assert second.runtime.resume() == [batch_id]
        settled = second.settled(batch_id)
        assert loaded == [], "resume read the whole batch"
        assert settled.counts[FileState.SUCCEEDED] == 5_000
        interrupted = [
            e for e in store.events_after(batch_id, 0) if e.file and "cut short" in e.reason
        ]
        assert len(interrupted) == POLICY.max_concurrency
    finally:
        second.close()
        store.close()


def test_file_actors_are_freed_as_they_stop_without_the_cycle_collector(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3", synchronous="NORMAL")
    rig = Rig(store, BlobStore(tmp_path / "blobs"))
    gc.collect()
    gc.disable()  # freed by reference counting, or not at all
    try:
        try:
            batch_id = rig.submit(300)
            assert rig.settled(batch_id).counts[FileState.SUCCEEDED] == 300
        finally:
            rig.close()  # every actor's last turn has ended
            store.close()
        alive = sum(isinstance(thing, FileActor) for thing in gc.get_objects())
        assert alive == 0, f"{alive} stopped file actors wait for the cycle collector"
    finally:
        gc.enable()
