"""Time for the actors: the current time, timers that fire later, and waits for a moment.

Actors never sleep in a handler. A backoff or a deadline is a timer whose callback
``tell``s an actor. :class:`ThreadScheduler` runs every timer of the process on one
thread (a 10,000-file batch in backoff holds 10,000 heap entries, not 10,000 threads);
:class:`FakeScheduler` fires timers only when a test advances it. An actor that owns its
thread may also wait in its inbox for a moment (:meth:`Scheduler.wait`, as a batch
supervisor waits for its next group commit), woken early by a message: no timer thread
then takes part.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

__all__ = ["FakeScheduler", "Scheduler", "ThreadScheduler", "Timer", "wait_by_timer"]

log = structlog.get_logger(__name__)

# The smallest heap of timers swept of cancelled ones (ThreadScheduler).
_SWEEP_MIN = 256


class Timer(Protocol):
    """A scheduled callback."""

    def cancel(self) -> None:
        """Stop the callback from running, if it has not run yet. Idempotent."""


class Scheduler(Protocol):
    """A clock with timers."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once, ``delay`` seconds from now, on the scheduler's thread.

        The callback must be quick and must not raise; it typically ``tell``s an actor.
        """
        ...

    def wait(self, wake: threading.Event, until: float) -> None:
        """Block the calling thread until ``wake`` is set or the clock reaches ``until``
        (seconds since the epoch), whichever comes first."""
        ...


def wait_by_timer(scheduler: Scheduler, wake: threading.Event, until: float) -> None:
    """:meth:`Scheduler.wait` for a clock whose time only moves by its timers (a test's):
    a timer due at ``until`` sets ``wake``, and is cancelled if something else did."""
    timer = scheduler.call_later(until - scheduler.now(), wake.set)
    try:
        wake.wait()
    finally:
        timer.cancel()


@dataclass(order=True, slots=True)
class _Entry:
    due: float
    order: int
    callback: Callable[[], None] | None = field(compare=False)

    def cancel(self) -> None:
        self.callback = None


def _run(entry: _Entry) -> None:
    callback = entry.callback
    entry.callback = None
    if callback is None:
        return
    try:
        callback()
    except Exception:
        # A timer callback only tells an actor; if that fails the actor is gone and the
        # timer has nobody left to wake. Logged in full so a bug cannot hide here.
        log.exception("timer_callback_failed")


class ThreadScheduler:
    """Real time; every timer runs on one daemon-free thread until :meth:`close`."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        # Cancelled timers stay in the heap until due (a file's deadline: minutes); it
        # is swept of them whenever it reaches this size, so that it grows with the
        # timers armed, not with those armed and cancelled (every attempt's deadline).
        self._sweep_at = _SWEEP_MIN
        self._thread = threading.Thread(target=self._loop, name="pdfbatch-timers")
        self._thread.start()

    def now(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        entry = _Entry(time.monotonic() + max(0.0, delay), next(self._order), callback)
        with self._cond:
            if self._closed:
                raise RuntimeError("scheduler is closed")
            if len(self._heap) >= self._sweep_at:
                self._heap = [armed for armed in self._heap if armed.callback is not None]
                heapq.heapify(self._heap)
                self._sweep_at = max(_SWEEP_MIN, 2 * len(self._heap))
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:
                self._cond.notify()
        return entry

    def wait(self, wake: threading.Event, until: float) -> None:
        # On the caller's thread alone: the timers' thread is not woken.
        wake.wait(max(0.0, until - self.now()))

    def close(self) -> None:
        """Drop every pending timer and stop the thread. Idempotent."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0].due > time.monotonic()):
                    timeout = self._heap[0].due - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                entry = heapq.heappop(self._heap)
            _run(entry)


class FakeScheduler:
    """Test time: starts at ``start`` and moves only when :meth:`advance` is called.

    Timers fire in due order, on the thread that calls :meth:`advance`.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._armed = threading.Condition(self._lock)

    def now(self) -> float:
        with self._lock:
            return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        with self._lock:
            entry = _Entry(self._now + max(0.0, delay), next(self._order), callback)
            heapq.heappush(self._heap, entry)
            self._armed.notify_all()
        return entry

    def wait(self, wake: threading.Event, until: float) -> None:
        wait_by_timer(self, wake, until)

    def pending(self) -> list[float]:
        """Due times of the timers not yet fired or cancelled, soonest first."""
        with self._lock:
            return self._pending()

    def wait_pending(self, count: int, timeout: float) -> list[float]:
        """Wait until at least ``count`` timers are pending; returns their due times.

        Raises:
            TimeoutError: Fewer timers were armed within ``timeout`` seconds.
        """
        with self._armed:
            if not self._armed.wait_for(lambda: len(self._pending()) >= count, timeout):
                raise TimeoutError(f"{len(self._pending())} timers pending, wanted {count}")
            return self._pending()

    def wait_for_timer(self, delay: float, timeout: float) -> None:
        """Wait until a timer due ``delay`` seconds from now is pending.

        Raises:
            TimeoutError: No such timer was armed within ``timeout`` seconds.
        """
        with self._armed:
            due = self._now + delay
            if not self._armed.wait_for(lambda: due in self._pending(), timeout):
                raise TimeoutError(f"no timer due at +{delay:g} s; pending: {self._pending()}")

    def _pending(self) -> list[float]:
        return sorted(e.due for e in self._heap if e.callback is not None)

    def advance(self, seconds: float) -> None:
        """Move time forward, firing every timer that falls due on the way."""
        with self._lock:
            target = self._now + seconds
        while True:
            with self._lock:
                if not self._heap or self._heap[0].due > target:
                    self._now = target
                    return
                entry = heapq.heappop(self._heap)
                self._now = max(self._now, entry.due)
            _run(entry)

    def close(self) -> None:
        """Drop every pending timer."""
        with self._lock:
            self._heap.clear()
