"""Fixtures and helpers for tests that run real worker pools.

``pool_factory`` closes every pool it made and then fails the test if a worker process
or a worker's temporary directory outlived it. It checks grandchildren of the test
process: workers are children of the fork server, and share its command line, so a
check by command line cannot tell them apart.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from actors.execution.contract import AttemptHandle, AttemptJob, AttemptOutcomeReport
from actors.execution.local.pool import WorkerPool
from tests.helpers.processors import SCRIPTED

CALLBACK_TIMEOUT = 15.0

PoolFactory = Callable[..., WorkerPool]


def worker_processes() -> list[psutil.Process]:
    """Live grandchildren of the test process: worker processes, wherever they hang."""
    me = os.getpid()
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.ppid() != me and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture
def pool_factory(tmp_path: Path) -> Iterator[PoolFactory]:
    """Make pools (two scripted workers by default); close them and check for leaks."""
    pools: list[tuple[WorkerPool, Path]] = []

    def make(**kwargs: Any) -> WorkerPool:
        temp_root = tmp_path / f"work-{len(pools)}"
        temp_root.mkdir()
        kwargs.setdefault("workers", 2)
        kwargs.setdefault("processor", SCRIPTED)
        pool = WorkerPool(temp_root=temp_root, **kwargs)
        pools.append((pool, temp_root))
        return pool

    yield make
    for pool, _ in pools:
        pool.close()
    assert worker_processes() == [], "worker processes outlived their pool"
    for _, temp_root in pools:
        assert list(temp_root.iterdir()) == [], "worker temp directories left behind"


@pytest.fixture
def blob(tmp_path: Path) -> Callable[[bytes], str]:
    """Write a blob file and return its path."""
    directory = tmp_path / "blobs"
    directory.mkdir()
    counter = iter(range(1_000_000))

    def write(content: bytes) -> str:
        path = directory / f"blob-{next(counter)}"
        path.write_bytes(content)
        return str(path)

    return write


class Recorder:
    """Submits jobs and records every callback they get, per job key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: dict[str, list[tuple[str, object]]] = defaultdict(list)
        self._started: dict[str, queue.Queue[int | None]] = defaultdict(queue.Queue)
        self._done: dict[str, queue.Queue[AttemptOutcomeReport]] = defaultdict(queue.Queue)
        self.all_done: queue.Queue[tuple[str, AttemptOutcomeReport]] = queue.Queue()
        # Keys in the order their attempts started, over every job.
        self.start_order: list[str] = []

    def submit(
        self,
        pool: WorkerPool,
        key: str,
        blob_path: str,
        *,
        attempt: int = 1,
        password: str | None = None,
        batch: str = "batch",
        tenant: str = "",
    ) -> AttemptHandle:
        """Submit a job whose callbacks are recorded under ``key``."""
        job = AttemptJob(batch, key, attempt, blob_path, password, tenant=tenant)
        with self._lock:
            queues = (self._started[key], self._done[key])
        return pool.submit(
            job,
            lambda pid: self._record(key, "started", pid, queues[0]),
            lambda outcome: self._on_done(key, outcome, queues[1]),
        )

    def _record(self, key: str, kind: str, value: Any, target: queue.Queue[Any]) -> None:
        with self._lock:
            self.events[key].append((kind, value))
            if kind == "started":
                self.start_order.append(key)
        target.put(value)

    def _on_done(
        self, key: str, outcome: AttemptOutcomeReport, target: queue.Queue[AttemptOutcomeReport]
    ) -> None:
        self._record(key, "done", outcome, target)
        self.all_done.put((key, outcome))

    def started(self, key: str, timeout: float = CALLBACK_TIMEOUT) -> int | None:
        """The pid ``on_started`` got; fails the test after ``timeout``."""
        return self._started[key].get(timeout=timeout)

    def done(self, key: str, timeout: float = CALLBACK_TIMEOUT) -> AttemptOutcomeReport:
        """The outcome ``on_done`` got; fails the test after ``timeout``."""
        return self._done[key].get(timeout=timeout)

    def done_now(self, key: str) -> AttemptOutcomeReport:
        """The outcome, which must already be there."""
        return self._done[key].get_nowait()

    def done_counts(self) -> Counter[str]:
        """How many times ``on_done`` ran, per key."""
        with self._lock:
            return Counter(
                {
                    key: sum(kind == "done" for kind, _ in events)
                    for key, events in self.events.items()
                }
            )
