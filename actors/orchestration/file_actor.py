"""The file actor: one attempt at one file, from hand-over to outcome.

It hands the job to the executor, arms the attempt's deadline when a worker picks the
job up, reports the outcome to its batch supervisor and stops itself. Stopped early (a
cancel, a fail-fast, a shutdown) it kills its worker before it goes.

A file costs the actor one message in (the outcome) and its supervisor one (the
report). The outcome is handled on the executor's thread that brings it, unless the
actor is busy (:meth:`~actors.orchestration.dispatch.DispatchedActor.tell_here`): no
dispatcher thread wakes for it. A worker's start is no message: the executor's callback
arms the deadline itself (the scheduler is thread-safe) and notes the start for the
supervisor (:class:`~actors.orchestration.starts.StartNotes`), and the pid travels with
the outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import pykka
import structlog

from actors.execution.contract import (
    AttemptFailure,
    AttemptHandle,
    AttemptJob,
    AttemptOutcomeReport,
    Executor,
)
from actors.orchestration.clock import Scheduler, Timer
from actors.orchestration.dispatch import DispatchedActor, Dispatcher
from actors.orchestration.messages import (
    AttemptFinished,
    DeadlineReached,
    FileActorStopped,
    WorkerDone,
)
from actors.policy.catalogue import ErrorCode

__all__ = ["FileActor", "tell_if_alive"]

log = structlog.get_logger(__name__)


def tell_if_alive(ref: pykka.ActorRef[Any], message: object) -> None:
    """``tell`` that treats a stopped recipient as news, not as an error.

    Callbacks from timers and workers may outlive the actor they report to; the actor
    stopping is how it says it no longer needs the message.
    """
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        log.debug("message_to_stopped_actor", message=type(message).__name__)


class FileActor(DispatchedActor):
    """Runs one attempt of one file, on a dispatcher's thread (it lives too briefly for
    a thread of its own).

    Args:
        dispatcher: Runs the actor.
        supervisor: The batch supervisor to report to.
        executor: Runs the attempt in a killable process.
        scheduler: Arms the attempt's deadline.
        job: The attempt.
        timeout: Wall-clock seconds the attempt may run once a worker has it.
        on_worker_started: Called with the file's id and the attempt's number, on the
            executor's thread, when a worker picks the attempt up.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        supervisor: pykka.ActorRef[Any],
        *,
        executor: Executor,
        scheduler: Scheduler,
        job: AttemptJob,
        timeout: float,
        on_worker_started: Callable[[str, int], None] | None = None,
    ) -> None:
        super().__init__(dispatcher)
        self._supervisor = supervisor
        self._executor = executor
        self._scheduler = scheduler
        self._job = job
        self._timeout = timeout
        self._on_worker_started = on_worker_started
        self._handle: AttemptHandle | None = None
        # Set by the executor's thread when a worker starts the attempt; read here only
        # once the executor can no longer call it (after the outcome, or a cancel).
        self._deadline: Timer | None = None
        self._worker_pid: int | None = None
        self._reported = False

    def on_start(self) -> None:
        self._handle = self._executor.submit(
            self._job,
            on_started=self._worker_started,
            on_done=lambda report: self.tell_here(WorkerDone(report)),
        )

    def _worker_started(self, pid: int | None) -> None:
        """On the executor's thread: a worker has the attempt; its deadline starts now.

        The executor never calls it after the outcome (:class:`AttemptCallbacks`), so
        the deadline is armed before :meth:`_release` can look for it.
        """
        me = self.actor_ref
        self._worker_pid = pid
        self._deadline = self._scheduler.call_later(
            self._timeout, lambda: tell_if_alive(me, DeadlineReached())
        )
        if self._on_worker_started is not None:
            self._on_worker_started(self._job.file_id, self._job.attempt)

    def on_receive(self, message: Any) -> Any:
        match message:
            case DeadlineReached():
                if self._handle is not None and not self._reported:
                    # The executor answers with a PROCESSING_TIMEOUT outcome.
                    self._handle.cancel(ErrorCode.PROCESSING_TIMEOUT)
            case WorkerDone(report=report):
                self._report(report)
                self.stop()
            case _:
                return super().on_receive(message)
        return None

    def on_stop(self) -> None:
        self._release()
        if not self._reported:
            self._tell_stopped()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        log.error(
            "file_actor_failed",
            batch_id=self._job.batch_id,
            file_id=self._job.file_id,
            attempt=self._job.attempt,
            exc_info=(exception_type, exception_value, traceback),
        )
        self._release()
        self._report(
            AttemptFailure(
                ErrorCode.INTERNAL,
                self._worker_pid,
                exception_type=getattr(exception_type, "__name__", ""),
            )
        )

    def _report(self, report: AttemptOutcomeReport) -> None:
        if self._reported:
            return
        self._reported = True
        tell_if_alive(
            self._supervisor, AttemptFinished(self._job.file_id, self._job.attempt, report)
        )

    def _tell_stopped(self) -> None:
        tell_if_alive(
            self._supervisor,
            FileActorStopped(self._job.file_id, self._job.attempt, self._worker_pid),
        )

    def _release(self) -> None:
        # The attempt first: once it is over, the executor no longer arms a deadline.
        if self._handle is not None and not self._reported:
            self._handle.cancel(ErrorCode.CANCELLED)
        if self._deadline is not None:
            self._deadline.cancel()
