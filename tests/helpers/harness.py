"""A runtime wired to real worker processes, a fake clock and a waiting helper."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from actors.execution.local.pool import WorkerPool
from actors.orchestration.clock import FakeScheduler
from actors.orchestration.runtime import NewFile, Runtime
from actors.policy.book import Changes
from actors.policy.catalogue import StorageUnavailableError
from actors.policy.model import BatchEvent, BatchView, ExtractionResult, FileState
from actors.policy.sealed import SealedResult
from actors.storage.blobs import BlobStore
from actors.storage.retention import RetentionPolicy
from actors.storage.store import MemoryStore, Store, each_event

SCRIPTED = "tests.helpers.processors:scripted"


class Waiter:
    """Blocks until a batch, as stored, satisfies a condition; woken by every commit."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._changed = threading.Condition()
        self.events: list[BatchEvent] = []
        self._unsubscribe = store.subscribe(each_event(self._on_event))

    def _on_event(self, event: BatchEvent) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def until(
        self, batch_id: str, condition: Callable[[BatchView], bool], timeout: float = 30.0
    ) -> BatchView:
        """Wait until ``condition(view)`` holds; fail the test after ``timeout`` seconds."""
        with self._changed:
            ok = self._changed.wait_for(lambda: self._holds(batch_id, condition), timeout)
        view = self._store.load(batch_id)
        assert view is not None
        assert ok, f"condition not reached; batch is {view.batch.state}: {view.counts}"
        return view

    def _holds(self, batch_id: str, condition: Callable[[BatchView], bool]) -> bool:
        view = self._store.load(batch_id)
        return view is not None and condition(view)

    def close(self) -> None:
        self._unsubscribe()


@dataclass
class Harness:
    """Everything a supervisor test drives."""

    runtime: Runtime
    clock: FakeScheduler
    pool: WorkerPool
    store: Store
    blobs: BlobStore
    waiter: Waiter
    temp_root: Path

    def files(self, *contents: bytes) -> list[NewFile]:
        """Store ``contents`` as uploads named 0.pdf, 1.pdf, ..."""
        return [
            NewFile(name=f"{index}.pdf", blob=self.blobs.put(data), size=len(data))
            for index, data in enumerate(contents)
        ]

    def settled(self, batch_id: str, timeout: float = 30.0) -> BatchView:
        """Wait until the batch is in a terminal state."""
        return self.waiter.until(batch_id, lambda v: v.batch.state.terminal, timeout)


def build_harness(
    tmp_path: Path,
    *,
    workers: int = 2,
    memory_limit_bytes: int | None = 1 << 30,
    rand: Callable[[], float] = lambda: 0.5,
    store: Store | None = None,
    processor: str = SCRIPTED,
    retention: RetentionPolicy | None = None,
    commit_interval: float = 0.0,
) -> Iterator[Harness]:
    """Yield a harness; on exit close everything and check no temp file is left."""
    clock = FakeScheduler()
    store = store or MemoryStore()
    blobs = BlobStore(tmp_path / "blobs")
    temp_root = tmp_path / "work"
    temp_root.mkdir()
    pool = WorkerPool(
        workers=workers,
        processor=processor,
        memory_limit_bytes=memory_limit_bytes,
        temp_root=temp_root,
    )
    runtime = Runtime(
        store=store,
        blobs=blobs,
        executor=pool,
        scheduler=clock,
        rand=rand,
        retention=retention,
        commit_interval=commit_interval,
    )
    waiter = Waiter(store)
    try:
        yield Harness(runtime, clock, pool, store, blobs, waiter, temp_root)
    finally:
        waiter.close()
        runtime.close()
        pool.close()
        clock.close()
    left = sorted(str(p.relative_to(temp_root)) for p in temp_root.rglob("*"))
    assert left == [], f"worker temp files left behind: {left}"


class FlakyStore(MemoryStore):
    """A memory store whose n-th commits fail, as a full disk or a locked database would
    (``error``: ``StorageUnavailableError``), or as a bug would (any other error)."""

    def __init__(
        self,
        fail: Callable[[int], bool],
        error: Callable[[str], Exception] = StorageUnavailableError,
    ) -> None:
        super().__init__()
        self._fail = fail
        self._error = error
        self.commits = 0

    def commit(
        self, changes: Changes, results: Mapping[str, SealedResult | ExtractionResult]
    ) -> None:
        self.commits += 1
        if self._fail(self.commits):
            raise self._error(f"injected failure of commit {self.commits}")
        super().commit(changes, results)


class OutcomeFailingStore(MemoryStore):
    """A memory store whose first ``times`` commits that store how an attempt ended fail,
    with ``error``: as a bug in the supervisor's handling of outcomes would make them, or
    a store that fails whenever it matters."""

    def __init__(
        self, times: int, error: Callable[[str], Exception] = StorageUnavailableError
    ) -> None:
        super().__init__()
        self._times = times
        self._error = error
        self.failed = 0

    def commit(
        self, changes: Changes, results: Mapping[str, SealedResult | ExtractionResult]
    ) -> None:
        ends = any(
            e.file is not None and e.file.state is not FileState.RUNNING for e in changes.events
        )
        if ends and self.failed < self._times:
            self.failed += 1
            raise self._error(f"injected failure of outcome commit {self.failed}")
        super().commit(changes, results)
