"""An executor whose attempts end only when a test says so, a clock whose timers are
known, and a way to wait until the orchestration has nothing left to do.

The state-machine tests drive the real runtime (manager, supervisors, file actors,
store) and stand in only for the worker processes: :class:`ScriptedExecutor` keeps
every submitted attempt until the test starts it, ends it with an outcome of its
choice, or the runtime cancels it. :class:`ObservedClock` is a
:class:`~actors.orchestration.clock.FakeScheduler` that also says which timers are armed,
so the test can tell when every deadline and backoff the runtime meant to arm is armed, and every
one it meant to drop is dropped. :class:`Quiet` waits on both and on the store's events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from actors.execution.contract import (
    AttemptCallbacks,
    AttemptFailure,
    AttemptJob,
    AttemptOutcomeReport,
    OnDone,
    OnStarted,
)
from actors.orchestration.clock import FakeScheduler, Timer, wait_by_timer
from actors.policy.catalogue import ErrorCode

__all__ = ["AttemptKey", "ObservedClock", "Quiet", "ScriptedAttempt", "ScriptedExecutor"]


class Quiet:
    """Wakes a waiting test whenever anything it watches changes.

    Every source of change (an event committed, an attempt submitted or ended, a timer
    armed, fired or cancelled) calls :meth:`changed`; :meth:`wait` re-checks its
    condition after each change, with no lock held while it reads, so a store that
    calls its listeners under its own lock cannot deadlock with it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    def changed(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, problem: Callable[[], str | None], timeout: float) -> None:
        """Wait until ``problem()`` returns ``None``.

        Raises:
            AssertionError: After ``timeout`` seconds, with the last problem reported.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._generation
            found = problem()
            if found is None:
                return
            with self._cond:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"not quiet after {timeout:g} s: {found}")
                self._cond.wait_for(lambda seen=seen: self._generation != seen, remaining)


@dataclass(frozen=True, order=True, slots=True)
class AttemptKey:
    """Which attempt: batch, file and the attempt's number."""

    batch_id: str
    file_id: str
    attempt: int

    @classmethod
    def of(cls, job: AttemptJob) -> AttemptKey:
        return cls(job.batch_id, job.file_id, job.attempt)


class ScriptedAttempt(AttemptCallbacks):
    """One submitted attempt; started and ended by the test, or cancelled."""

    def __init__(
        self, executor: ScriptedExecutor, job: AttemptJob, on_started: OnStarted, on_done: OnDone
    ) -> None:
        super().__init__(on_started, on_done)
        self.key = AttemptKey.of(job)
        self.job = job
        self.pid: int | None = None
        self.started_at: float | None = None
        self.cancelled_with: ErrorCode | None = None
        self._executor = executor

    def cancel(self, code: ErrorCode) -> None:
        self._executor.end(self.key, AttemptFailure(code, self.pid, "Cancelled"), cancel=code)


class ScriptedExecutor:
    """An :class:`~actors.execution.contract.Executor` in which the test decides every outcome.

    Args:
        changed: Called after every submit, start and end.
    """

    def __init__(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        self._lock = threading.Lock()
        self._live: dict[AttemptKey, ScriptedAttempt] = {}
        self.submitted: list[AttemptKey] = []
        # Attempts a worker picked up, in order.
        self.started: list[AttemptKey] = []
        self.ended: list[tuple[AttemptKey, AttemptOutcomeReport]] = []
        self.closed = False
        # What queued_seconds answers: workers' worth of queued work, as a test sets it.
        self.queued = 0.0

    # The Executor protocol ------------------------------------------------------------

    def submit(self, job: AttemptJob, on_started: OnStarted, on_done: OnDone) -> ScriptedAttempt:
        attempt = ScriptedAttempt(self, job, on_started, on_done)
        with self._lock:
            if self.closed:
                raise RuntimeError("executor is closed")
            self._live[attempt.key] = attempt
            self.submitted.append(attempt.key)
        self._changed()
        return attempt

    def queued_seconds(self) -> float:
        return self.queued

    def cancel_batch(self, batch_id: str, code: ErrorCode) -> None:
        with self._lock:
            doomed = [a for key, a in self._live.items() if key.batch_id == batch_id]
        for attempt in doomed:
            attempt.cancel(code)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            doomed = list(self._live.values())
        for attempt in doomed:
            attempt.cancel(ErrorCode.CANCELLED)

    # The test's side ------------------------------------------------------------------

    def live(self) -> dict[AttemptKey, ScriptedAttempt]:
        """Attempts submitted and not ended, by key."""
        with self._lock:
            return dict(self._live)

    def start(self, key: AttemptKey, pid: int, now: float) -> None:
        """A worker with ``pid`` picks the attempt up at ``now``."""
        with self._lock:
            attempt = self._live[key]
            attempt.pid = pid
            attempt.started_at = now
            self.started.append(key)
        attempt.deliver_started(pid)
        self._changed()

    def end(
        self, key: AttemptKey, outcome: AttemptOutcomeReport, *, cancel: ErrorCode | None = None
    ) -> bool:
        """End the attempt with ``outcome``; ``False`` if it had ended already."""
        with self._lock:
            attempt = self._live.pop(key, None)
            if attempt is None:
                return False
            attempt.cancelled_with = cancel
            self.ended.append((key, outcome))
        attempt.deliver_done(outcome)
        self._changed()
        return True


class _ObservedTimer:
    def __init__(self, clock: ObservedClock, due: float) -> None:
        self.due = due
        self.inner: Timer | None = None
        self._clock = clock

    def cancel(self) -> None:
        if self.inner is not None:
            self.inner.cancel()
        self._clock.forget(self)


class ObservedClock:
    """A :class:`~actors.orchestration.clock.Scheduler`: a FakeScheduler whose timers are known.

    Time and timers are the FakeScheduler's; this only keeps the due time of every
    timer armed and neither fired nor cancelled, and reports each change.

    Args:
        fake: Keeps the time and fires the timers.
        changed: Called after every arm, fire and cancel.
    """

    def __init__(self, fake: FakeScheduler, changed: Callable[[], None]) -> None:
        self.fake = fake
        self._changed = changed
        self._lock = threading.Lock()
        self._live: dict[int, _ObservedTimer] = {}

    def now(self) -> float:
        return self.fake.now()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        # The same sum as FakeScheduler's: the two due times are equal to the bit.
        timer = _ObservedTimer(self, self.fake.now() + max(0.0, delay))
        with self._lock:
            self._live[id(timer)] = timer

        def fire() -> None:
            self.forget(timer)
            callback()

        timer.inner = self.fake.call_later(delay, fire)
        self._changed()
        return timer

    def wait(self, wake: threading.Event, until: float) -> None:
        wait_by_timer(self, wake, until)

    def forget(self, timer: _ObservedTimer) -> None:
        with self._lock:
            gone = self._live.pop(id(timer), None)
        if gone is not None:
            self._changed()

    def live_dues(self) -> list[float]:
        """Due times of the timers armed and neither fired nor cancelled, soonest first."""
        with self._lock:
            return sorted(t.due for t in self._live.values())

    def advance_to(self, when: float) -> None:
        """Move the time to ``when``, firing every timer due by then."""
        self.fake.advance(when - self.fake.now())

    def close(self) -> None:
        self.fake.close()
        with self._lock:
            self._live.clear()
