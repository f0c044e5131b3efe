"""``pdfbatch serve`` keeps its own threads on the CPUs ``server_cpus`` names, and its
workers on every CPU it was started with, even those started again from a pinned thread."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from server.service.affinity import server_cpus
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
    launcher = ServerLauncher(tmp_path / "data", tmp_path / "server.log", server_cpus="1")
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
@pytest.mark.parametrize("setting", [{}, {"server_cpus": "0"}], ids=["default", "zero"])
def test_by_default_and_at_zero_every_thread_runs_on_every_cpu(
    tmp_path: Path, setting: dict[str, str]
) -> None:
    launcher = ServerLauncher(tmp_path / "data", tmp_path / "server.log", **setting)
    try:
        life = launcher.start()
        pid = life.process.pid
        eventually(lambda: _workers_cpus(pid) == [ALLOWED] * WORKERS)
        assert set(_thread_cpus(pid).values()) == {ALLOWED}
        life.stop()
    finally:
        launcher.close()


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
