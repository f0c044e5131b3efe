"""The batch manager: one per process, the supervisor of the batch supervisors.

It starts a supervisor per batch, finds it again, and restarts it from the batch's
stored state when it dies of a bug, at most ``intensity.max_restarts`` times within
``intensity.within_seconds`` per batch. Past that the batch is failed with a reason.
With a retention policy it also sweeps, on a timer, what ended batches leave behind:
here no supervisor can start for a batch while the sweep decides about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pykka
import structlog

from actors.orchestration.clock import Timer
from actors.orchestration.dispatch import ThreadActor
from actors.orchestration.file_actor import tell_if_alive
from actors.orchestration.messages import SupervisorFailed, SupervisorRetiring
from actors.orchestration.supervisor import BatchSupervisor, SupervisorDeps
from actors.policy.book import BatchBook
from actors.policy.catalogue import ErrorCode, StorageUnavailableError
from actors.policy.model import BatchState, FileError, FileState
from actors.policy.rules import RestartIntensity, RestartWindow, RetryPolicy
from actors.storage.retention import RetentionPolicy, SweepReport, sweep

__all__ = [
    "BatchManager",
    "EnsureSupervisor",
    "ForgetSupervisor",
    "ListSupervisors",
    "SweepRetention",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class EnsureSupervisor:
    """Reply with the batch's supervisor, starting one from the store if needed.

    The reply is ``None`` when the store has no such batch. With ``uploading``, a batch
    whose upload has not ended is found too (for the upload, whose supervisor processes
    its files as they arrive); without it, such a batch is not there.
    """

    batch_id: str
    uploading: bool = False


@dataclass(frozen=True, slots=True)
class ForgetSupervisor:
    """Drop the batch's supervisor; reply with it (or ``None``) so the caller can stop it."""

    batch_id: str


@dataclass(frozen=True, slots=True)
class RestartSupervisor:
    """A restart's backoff is over: start the batch's supervisor again."""

    batch_id: str


@dataclass(frozen=True, slots=True)
class ListSupervisors:
    """Reply with every live supervisor."""


@dataclass(frozen=True, slots=True)
class SweepRetention:
    """Remove what the retention policy no longer keeps; reply with the sweep's report."""


# The failure of a supervisor that the store stopped (see BatchManager).
_STORAGE_OUTAGE = StorageUnavailableError.__name__


class BatchManager(ThreadActor):
    """Creates, finds and restarts batch supervisors.

    Args:
        deps: Handed to every supervisor.
        intensity: Restarts of one batch's supervisor allowed within a window; beyond
            them the batch fails. A supervisor stopped by the store
            (``StorageUnavailableError``: a full disk, a locked or closed database) is
            not counted: the outage is the service's, not the batch's, and a batch
            cannot be failed while nothing can be stored. It is restarted with backoff
            until the store takes its commits again.
        backoff: Delays between repeated restarts (the first one is immediate).
        retention: Sweep every ``retention.sweep_interval`` seconds what it no longer
            keeps. Default ``None``: never sweep.
    """

    def __init__(
        self,
        deps: SupervisorDeps,
        intensity: RestartIntensity,
        backoff: RetryPolicy,
        retention: RetentionPolicy | None = None,
    ) -> None:
        super().__init__()
        self._deps = deps
        self._intensity = intensity
        self._backoff = backoff
        self._retention = retention
        self._sweep_timer: Timer | None = None
        self._supervisors: dict[str, pykka.ActorRef[Any]] = {}
        self._restarts: dict[str, RestartWindow] = {}
        # Batches whose supervisor was started while their upload ran; those whose
        # upload has not ended are shown to no one else.
        self._uploading: set[str] = set()

    def on_start(self) -> None:
        self._arm_sweep()

    def on_stop(self) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()

    def on_receive(self, message: Any) -> Any:
        match message:
            case EnsureSupervisor(batch_id=batch_id, uploading=uploading):
                return self._ensure(batch_id, uploading=uploading)
            case ForgetSupervisor(batch_id=batch_id):
                self._restarts.pop(batch_id, None)
                self._uploading.discard(batch_id)
                return self._supervisors.pop(batch_id, None)
            case ListSupervisors():
                return list(self._supervisors.values())
            case SupervisorRetiring(batch_id=batch_id, supervisor=ref):
                if self._supervisors.get(batch_id) is ref:
                    del self._supervisors[batch_id]
                    self._uploading.discard(batch_id)
                return None
            case SupervisorFailed(batch_id=batch_id, exception_type=exception_type):
                self._supervisor_failed(batch_id, exception_type)
                return None
            case RestartSupervisor(batch_id=batch_id):
                self._restart(batch_id)
                return None
            case SweepRetention():
                return self._sweep()
            case _:
                return super().on_receive(message)

    def _arm_sweep(self) -> None:
        if self._retention is None:
            return
        me = self.actor_ref
        self._sweep_timer = self._deps.scheduler.call_later(
            self._retention.sweep_interval, lambda: tell_if_alive(me, SweepRetention())
        )

    def _sweep(self) -> SweepReport | None:
        if self._retention is None:
            return None
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        busy = [batch_id for batch_id, ref in self._supervisors.items() if ref.is_alive()]
        try:
            report = sweep(
                self._deps.store,
                self._deps.blobs,
                self._retention,
                self._deps.scheduler.now(),
                busy=busy,
            )
        except Exception:
            # Logged in full, and never the end of the manager: what was removed stays
            # removed, and the next sweep carries on from there.
            log.exception("retention_sweep_failed")
            return None
        finally:
            self._arm_sweep()
        for batch_id in (*report.bytes_released, *report.batches_deleted):
            # Nothing of these batches runs again: their passwords have no use left.
            self._deps.passwords.forget_batch(batch_id)
        return report

    def _ensure(self, batch_id: str, *, uploading: bool = False) -> pykka.ActorRef[Any] | None:
        if batch_id in self._uploading and not uploading:
            # Shown to others once its upload ended, that is once it is visible.
            if self._deps.store.batch_summary(batch_id) is None:
                return None
            self._uploading.discard(batch_id)
        ref = self._supervisors.get(batch_id)
        if ref is not None and ref.is_alive():
            return ref
        # The record and counts only: the supervisor reads the files it works on.
        summary = self._deps.store.batch_summary(
            batch_id, uploading=uploading or batch_id in self._uploading
        )
        if summary is None:
            return None
        if summary.uploading:
            self._uploading.add(batch_id)
        ref = BatchSupervisor.start(summary, self._deps, self.actor_ref)
        self._supervisors[batch_id] = ref
        return ref

    def _supervisor_failed(self, batch_id: str, exception_type: str) -> None:
        if self._supervisors.pop(batch_id, None) is None and batch_id not in self._restarts:
            return  # Forgotten (deleted) while it was failing.
        now = self._deps.scheduler.now()
        window = self._restarts.get(batch_id, RestartWindow()).record(now, self._intensity)
        self._restarts[batch_id] = window
        if window.exceeded(self._intensity) and exception_type != _STORAGE_OUTAGE:
            log.error("batch_supervisor_gave_up", batch_id=batch_id, cause=exception_type)
            self._give_up(batch_id, now)
            return
        # The first restart is immediate (a one-off bug); repeated ones back off, so a
        # store that is down for a while is not hammered.
        restarts = len(window.times)
        delay = 0.0 if restarts == 1 else self._backoff.restart_delay(restarts - 1, self._deps.rand)
        log.warning(
            "batch_supervisor_restarting", batch_id=batch_id, cause=exception_type, delay=delay
        )
        if delay == 0:
            self._restart(batch_id)
            return
        me = self.actor_ref
        self._deps.scheduler.call_later(
            delay, lambda: tell_if_alive(me, RestartSupervisor(batch_id))
        )

    def _restart(self, batch_id: str) -> None:
        if batch_id in self._supervisors:
            return  # A caller needed it meanwhile and started it.
        try:
            self._ensure(batch_id)
        except Exception as exc:  # noqa: BLE001 - the store is down: counts as a failure
            self._supervisor_failed(batch_id, type(exc).__name__)

    def _give_up(self, batch_id: str, now: float) -> None:
        try:
            self._fail_batch(batch_id, now)
        except StorageUnavailableError:
            # Left as stored; the next start of the service resumes it.
            log.exception("batch_give_up_not_stored", batch_id=batch_id)

    def _fail_batch(self, batch_id: str, now: float) -> None:
        summary = self._deps.store.batch_summary(batch_id)
        if summary is None or summary.batch.state.terminal:
            return
        book = BatchBook(summary)
        cancelling = summary.batch.state is BatchState.CANCELLING
        target = FileState.CANCELLED if cancelling else FileState.FAILED
        error = FileError.of(ErrorCode.CANCELLED if cancelling else ErrorCode.INTERNAL, now)
        # By state, in one statement each: whatever the batch's size.
        for state in FileState:
            if not state.terminal:
                book.set_state(state, target, now, "", error=error, count=book.count(state))
        limit = self._intensity
        book.set_batch(
            BatchState.CANCELLED if cancelling else BatchState.FAILED,
            now,
            f"The batch's supervisor failed {limit.max_restarts + 1} times within "
            f"{limit.within_seconds:g} s; the batch was stopped. The error is in the service "
            "log; retry the batch once it is fixed.",
        )
        self._deps.store.commit(book.take_changes(), {})
