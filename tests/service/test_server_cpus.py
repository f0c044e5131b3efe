"""``pdfbatch serve`` keeps its own threads on the CPUs ``server_cpus`` names while few
watches are open (``server_cpus_max_watches``), and its workers on every CPU it was
started with, even those started again from a pinned thread."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from server.client.api import UploadFile
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.service.affinity import ThreadPlacement, server_cpus
from tests.helpers.crash_fixtures import ServerLauncher
from tests.helpers.processes import eventually
from tests.helpers.reliability_checks import server_workers

ALLOWED = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()
WORKERS = 2  # as ServerLauncher starts them

needs_two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="pinning to one CPU needs two")


def _thread_cpus(pid: int) -> dict[int, frozenset[int]]:
    return {
        thread.id: frozenset(os.sched_getaffinity(thread.id))
        for thread in psutil.Process(pid).threads()
    }


def _workers_cpus(pid: int) -> list[frozenset[int]]:
    return [frozenset(worker.cpu_affinity()) for worker in server_workers(pid)]


@needs_two_cpus
def test_threads_run_on_the_last_cpu_and_workers_on_all(tmp_path: Path) -> None:
    launcher = ServerLauncher(tmp_path / "data", tmp_path / "server.log")
    try:
        life = launcher.start()
        pid = life.process.pid
        eventually(lambda: _workers_cpus(pid) == [ALLOWED] * WORKERS)
        pinned = frozenset({max(ALLOWED)})
        threads = _thread_cpus(pid)
        assert len(threads) > 5  # the loop, the monitor, the timers, gRPC's own...
        assert set(threads.values()) == {pinned}

        # A fork server that dies (its workers with it) is started again by the pool's
        # monitor, a pinned thread: the workers it forks still take every CPU back.
        (forkserver,) = {worker.ppid() for worker in server_workers(pid)}
        os.kill(forkserver, signal.SIGKILL)
        eventually(
            lambda: (
                len(workers := server_workers(pid)) == WORKERS
                and all(worker.ppid() != forkserver for worker in workers)
            )
        )
        (again,) = {worker.ppid() for worker in server_workers(pid)}
        assert frozenset(psutil.Process(again).cpu_affinity()) == pinned
        # Forked with the fork server's CPU, each moves as it sets its limits.
        eventually(lambda: _workers_cpus(pid) == [ALLOWED] * WORKERS)
        assert set(_thread_cpus(pid).values()) == {pinned}
        life.stop()
    finally:
        launcher.close()


@needs_two_cpus
def test_zero_leaves_every_thread_on_every_cpu(tmp_path: Path) -> None:
    launcher = ServerLauncher(tmp_path / "data", tmp_path / "server.log", server_cpus="0")
    try:
        life = launcher.start()
        pid = life.process.pid
        eventually(lambda: _workers_cpus(pid) == [ALLOWED] * WORKERS)
        assert set(_thread_cpus(pid).values()) == {ALLOWED}
        life.stop()
    finally:
        launcher.close()


@needs_two_cpus
def test_many_watches_spread_the_threads_and_few_bring_them_back(tmp_path: Path) -> None:
    launcher = ServerLauncher(
        tmp_path / "data", tmp_path / "server.log", server_cpus_max_watches="2"
    )
    pinned = frozenset({max(ALLOWED)})
    try:
        life = launcher.start()
        pid = life.process.pid
        (tmp_path / "a.pdf").write_bytes(b"%PDF-ok")
        batch = life.client.submit([UploadFile(tmp_path / "a.pdf", "a.pdf")])
        streams = []
        for count in (1, 2, 3):
            stream = life.stub.WatchBatch(
                pb.WatchBatchRequest(batch_id=batch.batch_id, follow=True), timeout=60
            )
            assert next(stream).WhichOneof("change") == "snapshot"  # registered
            streams.append(stream)
            if count == 2:
                # At the bound: still on one CPU.
                assert set(_thread_cpus(pid).values()) == {pinned}
        # One more than the bound: every thread on every CPU.
        eventually(lambda: set(_thread_cpus(pid).values()) == {ALLOWED})

        for stream in streams:
            stream.cancel()
        eventually(lambda: set(_thread_cpus(pid).values()) == {pinned})
        life.stop()
    finally:
        launcher.close()


def test_threads_move_past_the_bound_and_back_at_half_of_it() -> None:
    moves: list[frozenset[int]] = []
    placement = ThreadPlacement(frozenset({1}), frozenset({0, 1}), max_watches=4, pin=moves.append)
    placement.place()

    for count in (1, 2, 3, 4):
        placement.watches(count)
    assert (moves, placement.spread) == ([{1}], False)
    placement.watches(5)
    assert (moves[-1], placement.spread) == ({0, 1}, True)
    for count in (4, 3, 6, 3):  # above half the bound: they stay
        placement.watches(count)
    assert len(moves) == 2
    placement.watches(2)
    assert (moves[-1], placement.spread) == ({1}, False)
    assert len(moves) == 3


def test_released_threads_stay_on_every_cpu_whatever_the_watches_do() -> None:
    moves: list[frozenset[int]] = []
    placement = ThreadPlacement(frozenset({1}), frozenset({0, 1}), max_watches=4, pin=moves.append)
    placement.place()
    placement.watches(5)

    placement.release()
    placement.watches(0)  # the service's last watch ends after the release

    assert (moves, placement.spread) == ([{1}, {0, 1}, {0, 1}], True)


def test_without_a_bound_the_threads_stay_however_many_watch() -> None:
    moves: list[frozenset[int]] = []
    placement = ThreadPlacement(frozenset({1}), frozenset({0, 1}), max_watches=0, pin=moves.append)
    placement.place()

    placement.watches(10_000)

    assert (moves, placement.spread) == ([{1}], False)


def test_the_cpus_chosen_are_the_highest_numbered() -> None:
    allowed = frozenset({0, 2, 5, 7})
    assert server_cpus(1, allowed) == {7}
    assert server_cpus(2, allowed) == {5, 7}
    # Nothing to pin: as many CPUs as allowed or more, none asked, or no affinity here.
    assert server_cpus(4, allowed) is None
    assert server_cpus(9, allowed) is None
    assert server_cpus(0, allowed) is None
    assert server_cpus(1, None) is None
    with pytest.raises(ValueError, match="count must not be negative, got -1"):
        server_cpus(-1, allowed)
