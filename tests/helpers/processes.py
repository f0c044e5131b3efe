"""Waiting for what announces itself through no event: a process gone, a cleanup done."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil

__all__ = ["eventually", "process_gone"]


def eventually(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait until ``condition()`` holds; fail the test after ``timeout`` seconds.

    Only where nothing offers a way to wait (a process's exit, an actor thread's end, a
    handler's cleanup after its client vanished); everything else waits on a stream,
    an event or a future.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        pause.wait(0.02)


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie has)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
