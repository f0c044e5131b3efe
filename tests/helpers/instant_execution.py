"""An executor that ends each attempt as it is submitted, with an outcome chosen per job.

For tests of the orchestration at sizes worker processes would make slow (tens of
thousands of files): the supervisor, file actors and store are real; only the
worker's work is skipped. An attempt whose outcome is ``None`` runs until cancelled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from actors.execution.contract import (
    AttemptCallbacks,
    AttemptFailure,
    AttemptJob,
    AttemptOutcomeReport,
    AttemptSuccess,
    OnDone,
    OnStarted,
)
from actors.policy.catalogue import ErrorCode
from actors.policy.model import DocumentInfo, ExtractionResult

__all__ = ["InstantExecutor", "failing", "succeeding"]

Decide = Callable[[AttemptJob], AttemptOutcomeReport | None]
_PID = 4242


def succeeding(job: AttemptJob) -> AttemptOutcomeReport:
    """Every attempt succeeds with a one-page result."""
    return AttemptSuccess(ExtractionResult(1, False, DocumentInfo(), ("text",)), _PID)


def failing(code: ErrorCode) -> Decide:
    """Every attempt fails with ``code``."""
    return lambda job: AttemptFailure(code, _PID, "Scripted", "scripted")


class _Attempt(AttemptCallbacks):
    def __init__(self, owner: InstantExecutor, job: AttemptJob, started: OnStarted, done: OnDone):
        super().__init__(started, done)
        self.job = job
        self._owner = owner

    def cancel(self, code: ErrorCode) -> None:
        if self._owner.forget(self):
            self.deliver_done(AttemptFailure(code, _PID, "Cancelled"))


class InstantExecutor:
    """An :class:`~actors.execution.contract.Executor` whose attempts end at once.

    Args:
        decide: Each job's outcome; ``None`` leaves the attempt running until cancelled.
    """

    def __init__(self, decide: Decide = succeeding) -> None:
        self.decide = decide
        self.submitted = 0
        self._lock = threading.Lock()
        self._running: set[_Attempt] = set()

    def submit(self, job: AttemptJob, on_started: OnStarted, on_done: OnDone) -> _Attempt:
        attempt = _Attempt(self, job, on_started, on_done)
        outcome = self.decide(job)
        with self._lock:
            self.submitted += 1
            if outcome is None:
                self._running.add(attempt)
        attempt.deliver_started(_PID)
        if outcome is not None:
            attempt.deliver_done(outcome)
        return attempt

    def running(self) -> int:
        """Attempts left running."""
        with self._lock:
            return len(self._running)

    def forget(self, attempt: _Attempt) -> bool:
        """Drop a running attempt; whether it was running."""
        with self._lock:
            if attempt not in self._running:
                return False
            self._running.discard(attempt)
            return True

    def release(self) -> None:
        """End every running attempt as ``decide`` now says (``None``: keep it running)."""
        with self._lock:
            running = list(self._running)
        for attempt in running:
            outcome = self.decide(attempt.job)
            if outcome is not None and self.forget(attempt):
                attempt.deliver_done(outcome)

    def queued_seconds(self) -> float:
        return 0.0

    def cancel_batch(self, batch_id: str, code: ErrorCode) -> None:
        with self._lock:
            doomed = [a for a in self._running if a.job.batch_id == batch_id]
        for attempt in doomed:
            attempt.cancel(code)

    def close(self) -> None:
        with self._lock:
            doomed = list(self._running)
        for attempt in doomed:
            attempt.cancel(ErrorCode.CANCELLED)
