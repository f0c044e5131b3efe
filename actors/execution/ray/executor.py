"""The Ray executor: every attempt is a task on a Ray cluster, supervised from here.

The service stays one process (gRPC, supervisors, store) and is a Ray driver; the PDF
work runs in Ray worker processes, on any node. Each attempt is one streaming task,
:func:`actors.execution.ray.task.run_attempt`, submitted with ``max_retries=0``: this service's
retry policy is the only one, so restart counts, backoff and codes are the local pool's.
The file's bytes are read here and go to the worker through Ray's object store.

The task's first item, yielded as soon as a worker runs it, names the worker's node and
pid; ``on_started`` fires when it arrives. The attempt's deadline therefore counts from the
start of the work, not from submission: time queued in Ray is not charged to the file.

One monitor thread waits on every attempt's stream with ``ray.wait`` and delivers what
arrives; there is no thread per task. Cancel is ``ray.cancel(force=True)``, which drops a
queued task or kills the worker process running it. Ray reports the task cancelled before
that process has exited, so cancel then waits for the process itself: here when it runs
on this node, otherwise through a probe task pinned to its node, which also removes its
temporary directory. The local pool's rules keep the races harmless: whoever moves an
attempt to ``DONE`` under the lock reports it, so ``on_done`` runs exactly once, and
callbacks run without the lock held.

Admission is fair: at most ``max_in_flight`` attempts are in Ray at once; the others
wait here in a :class:`~actors.execution.local.fair_queue.FairQueue` (turns across
tenants, then batches), as in the local pool, since Ray's own queue is first come,
first served and would let one tenant's big batch hold the whole cluster.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray
import structlog

from actors.execution.attempt import MAX_DETAIL_CHARS, WorkerFailed, decode_reply, load_processor
from actors.execution.contract import (
    AttemptCallbacks,
    AttemptFailure,
    AttemptHandle,
    AttemptJob,
    AttemptOutcomeReport,
    AttemptSuccess,
    OnDone,
    OnStarted,
)
from actors.execution.extract import PdfLimits
from actors.execution.local.fair_queue import FairQueue
from actors.execution.local.pool import DEFAULT_MEMORY_LIMIT_BYTES, DEFAULT_PROCESSOR
from actors.execution.ray.processes import (
    PROBE_START_TIMEOUT,
    REAP_TIMEOUT,
    WorkerLocation,
    await_exit,
    cancel_quietly,
    classify_ray_failure,
    decode_location,
    reap_on_nodes,
    runtime_env_option,
)
from actors.execution.ray.task import RayAttemptConfig, run_attempt
from actors.policy.catalogue import ErrorCode
from actors.policy.results import ResultLimits

__all__ = ["RayExecutor"]

log = structlog.get_logger(__name__)


RESTART_BACKOFF = 1.0
# How long the monitor waits in one ray.wait: a new attempt joins the wait set after it.
_TICK = 0.05

_attempt_task = ray.remote(num_returns="streaming", max_retries=0)(run_attempt)


# Attempts in Ray at once per CPU of the cluster, by default: enough to keep every CPU
# busy while results travel back, few enough that a newcomer's turn comes soon.
IN_FLIGHT_PER_CPU = 2


class _State(enum.Enum):
    WAITING = "waiting"  # held here for its turn; Ray does not know it yet
    SUBMITTED = "submitted"  # handed to Ray; no worker has said it started
    RUNNING = "running"
    DONE = "done"  # claimed by whoever reports the outcome


class _Attempt(AttemptCallbacks):
    """The handle of one submitted job; its fields are guarded by the executor's lock."""

    def __init__(
        self, executor: RayExecutor, job: AttemptJob, on_started: OnStarted, on_done: OnDone
    ) -> None:
        super().__init__(on_started, on_done)
        self.job = job
        self.state = _State.WAITING
        # Counted against max_in_flight until it is over.
        self.admitted = False
        self.stream: ray.ObjectRefGenerator[bytes] | None = None
        self.location: WorkerLocation | None = None
        # The task answered: nothing of it runs, so nothing needs to be waited for.
        self.answered = False
        # Set once the monitor read the stream to its end, location included if any.
        self.stream_closed = threading.Event()
        self._executor = executor

    @property
    def pid(self) -> int | None:
        return self.location.pid if self.location is not None else None

    def cancel(self, code: ErrorCode) -> None:
        """See :meth:`actors.execution.contract.AttemptHandle.cancel`."""
        self._executor._cancel(self, code)


class RayExecutor:
    """Runs attempts as Ray tasks; see the module's description.

    Args:
        address: The cluster to join when this process is not a Ray driver yet:
            ``"HOST:6379"`` or ``"auto"``, from a node of that cluster. Default ``None``:
            ``RAY_ADDRESS`` if set, else a new single-machine Ray instance. If
            ``ray.init`` was called already, that connection is used, and left open by
            :meth:`close`.
        num_cpus: CPUs of a single-machine instance started here. Default: all.
        processor: As for :class:`actors.execution.local.pool.WorkerPool`; it must be importable
            on every node. Default :func:`actors.execution.extract.extract_pdf`.
        memory_limit_bytes: Address space an attempt may add to what its Ray worker maps
            for itself (several GB: the object store, Ray's threads), enforced with
            ``RLIMIT_AS``. Default 2 GiB; ``None`` for no cap.
        pdf_limits: pypdf limits in the workers. Default ``PdfLimits()``.
        result_limits: How big one file's result may be. Default ``ResultLimits()``.
        runtime_env: Ray runtime environment of the tasks (``env_vars``, ``py_modules``
            ...). Default none.
        max_in_flight: Attempts handed to Ray at once; the others wait their turn here.
            Default :data:`IN_FLIGHT_PER_CPU` times the cluster's CPUs when the executor
            starts.

    Raises:
        ValueError: A bad memory limit, or a processor that cannot be imported here.
        ConnectionError: No cluster answered at ``address``; Ray takes minutes to give
            up.
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        processor: str = DEFAULT_PROCESSOR,
        memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
        pdf_limits: PdfLimits | None = None,
        result_limits: ResultLimits | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        if memory_limit_bytes is not None and memory_limit_bytes <= 0:
            raise ValueError(f"memory_limit_bytes must be positive, got {memory_limit_bytes}")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        load_processor(processor)
        self._config = RayAttemptConfig(
            processor,
            memory_limit_bytes,
            pdf_limits or PdfLimits(),
            result_limits or ResultLimits(),
        )
        self._runtime_env = dict(runtime_env) if runtime_env is not None else None
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            _join_ray(address, num_cpus)
        try:
            self._node_id = ray.get_runtime_context().get_node_id()
            if max_in_flight is None:
                cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
                max_in_flight = IN_FLIGHT_PER_CPU * max(1, cpus)
        except BaseException:
            if self._owns_ray:
                ray.shutdown()
            raise
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._waiting: FairQueue[_Attempt] = FairQueue(
            lambda attempt: (attempt.job.tenant, attempt.job.batch_id)
        )
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._reading: dict[ray.ObjectRefGenerator[bytes], _Attempt] = {}
        # Cancels and closes between claiming attempts and reporting them.
        self._ending = 0
        self._closed = False
        self._stopping = threading.Event()
        self._monitor = threading.Thread(
            target=self._monitor_loop, name="pdfbatch-ray-monitor", daemon=False
        )
        self._monitor.start()

    def submit(self, job: AttemptJob, on_started: OnStarted, on_done: OnDone) -> AttemptHandle:
        """Hand the attempt to Ray (read the file, put it in the object store, start its
        task) or, with ``max_in_flight`` attempts there already, queue it for its turn.

        See :class:`actors.execution.contract.Executor`. A file that cannot be read or handed to
        Ray fails the attempt through ``on_done`` (``STORAGE_UNAVAILABLE`` for an
        unreadable blob, as in a local worker).

        Raises:
            RuntimeError: The executor is closed.
        """
        attempt = _Attempt(self, job, on_started, on_done)
        with self._lock:
            if self._closed:
                raise RuntimeError("the Ray executor is closed")
            if self._in_flight < self._max_in_flight:
                self._in_flight += 1
                attempt.admitted = True
                attempt.state = _State.SUBMITTED
            else:
                self._waiting.append(attempt)
        if attempt.admitted:
            self._hand_over(attempt)
        return attempt

    def _hand_over(self, attempt: _Attempt) -> None:
        """Start an admitted attempt's task; its failure to start is its outcome."""
        job = attempt.job
        try:
            data = ray.put(job.read_blob())
            task = _attempt_task.options(
                name=f"pdfbatch {job.batch_id}/{job.file_id}#{job.attempt}",
                **runtime_env_option(self._runtime_env),
            )
            stream = task.remote(self._config, data, job.password, job.attempt, job.extraction_mode)
        # Nothing runs: the bytes could not be read or handed over. The failure is the
        # attempt's outcome, classified once.
        except Exception as exc:  # noqa: BLE001
            with self._lock:
                mine = attempt.state is not _State.DONE
                attempt.state = _State.DONE
            attempt.stream_closed.set()  # no stream: a cancel has nothing to wait for
            self._release([attempt])
            if mine:
                attempt.deliver_done(_failure(exc, None))
            return
        with self._lock:
            attempt.stream = stream
            closed = self._closed
            # A cancel may have claimed it while its bytes went to Ray.
            claimed = attempt.state is _State.DONE
            if closed:
                attempt.state = _State.DONE
            else:
                self._reading[stream] = attempt
                self._changed.notify_all()
        if claimed:
            cancel_quietly(stream)
            attempt.stream_closed.set()
            return
        if closed:  # close() ran meanwhile and could not see this attempt
            cancel_quietly(stream)
            attempt.stream_closed.set()
            self._release([attempt])
            attempt.deliver_done(AttemptFailure(ErrorCode.CANCELLED, None))

    def _release(self, attempts: Sequence[_Attempt]) -> None:
        """Give back the slots of attempts that are over; hand the freed slots to the
        next attempts in turn."""
        admitted: list[_Attempt] = []
        with self._lock:
            for attempt in attempts:
                if attempt.admitted:
                    attempt.admitted = False
                    self._in_flight -= 1
            while not self._closed and self._waiting and self._in_flight < self._max_in_flight:
                chosen = self._waiting.popleft()
                chosen.state = _State.SUBMITTED
                chosen.admitted = True
                self._in_flight += 1
                admitted.append(chosen)
        for chosen in admitted:
            self._hand_over(chosen)

    def queued_seconds(self) -> float:
        """See :meth:`actors.execution.contract.Executor.queued_seconds`: not known here
        (the cluster queues tasks out of sight), so reports never wait for a commit."""
        return 0.0

    def cancel_batch(self, batch_id: str, code: ErrorCode) -> None:
        """See :meth:`actors.execution.contract.Executor.cancel_batch`."""
        with self._lock:
            # Waiting ones first: a freed slot must not go to the next one of the batch.
            waiting = self._waiting.remove_if(lambda a: a.job.batch_id == batch_id)
            for attempt in waiting:
                attempt.state = _State.DONE
            victims = [
                a
                for a in self._reading.values()
                if a.job.batch_id == batch_id and a.state is not _State.DONE
            ]
            self._claim(victims)
        for attempt in waiting:
            attempt.deliver_done(AttemptFailure(code, None))
        self._end(victims)
        self._release(victims)
        for attempt in victims:
            attempt.deliver_done(AttemptFailure(code, attempt.pid))

    def close(self) -> None:
        """Cancel every attempt, stop the monitor, and leave Ray if this executor joined it.

        Unfinished attempts end ``CANCELLED``. Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            unfinished = [a for a in self._reading.values() if a.state is not _State.DONE]
            self._claim(unfinished)
            waiting = self._waiting.clear()
            for attempt in waiting:
                attempt.state = _State.DONE
        self._end(unfinished)
        with self._changed:
            # Attempts another thread is cancelling right now are over too.
            self._changed.wait_for(lambda: self._ending == 0, REAP_TIMEOUT)
            self._stopping.set()
            self._changed.notify_all()
        if threading.current_thread() is not self._monitor:
            self._monitor.join(REAP_TIMEOUT)
            if self._monitor.is_alive():
                log.error("ray executor monitor did not stop; a callback may be blocking")
        for attempt in waiting:
            attempt.deliver_done(AttemptFailure(ErrorCode.CANCELLED, None))
        for attempt in unfinished:
            attempt.deliver_done(AttemptFailure(ErrorCode.CANCELLED, attempt.pid))
        if self._owns_ray:
            ray.shutdown()

    def running(self) -> list[WorkerLocation]:
        """Where the attempts that a worker said it started run right now."""
        with self._lock:
            return [
                a.location
                for a in self._reading.values()
                if a.location is not None and a.state is _State.RUNNING
            ]

    # -- any thread ---------------------------------------------------------------------

    def _cancel(self, attempt: _Attempt, code: ErrorCode) -> None:
        with self._lock:
            state = attempt.state
            if state is _State.WAITING:
                self._waiting.remove(attempt)
                attempt.state = _State.DONE
            elif state is not _State.DONE:
                self._claim([attempt])
        if state is _State.DONE:
            # Another thread is ending it; cancel still returns only once it is over.
            attempt.finished.wait(REAP_TIMEOUT + PROBE_START_TIMEOUT)
            return
        if state is not _State.WAITING:
            self._end([attempt])
            self._release([attempt])
        attempt.deliver_done(AttemptFailure(code, attempt.pid))

    def _claim(self, attempts: Sequence[_Attempt]) -> None:
        """Move ``attempts`` to ``DONE`` for a caller that will end them. Hold the lock."""
        for attempt in attempts:
            attempt.state = _State.DONE
        self._ending += 1

    def _end(self, attempts: Sequence[_Attempt]) -> None:
        """Kill the claimed attempts' tasks; return once none of them runs any more."""
        try:
            # Queued tasks first, so that no freed CPU starts one only for it to be killed.
            for attempt in sorted(attempts, key=lambda a: a.location is not None):
                if attempt.stream is not None:
                    cancel_quietly(attempt.stream)
            deadline = time.monotonic() + REAP_TIMEOUT
            if threading.current_thread() is not self._monitor:
                for attempt in attempts:
                    attempt.stream_closed.wait(max(0.0, deadline - time.monotonic()))
            with self._lock:
                killed = [a.location for a in attempts if a.location and not a.answered]
            self._reap(killed)
        finally:
            with self._changed:
                self._ending -= 1
                self._changed.notify_all()

    def _reap(self, locations: Sequence[WorkerLocation]) -> None:
        here = [where for where in locations if where.node_id == self._node_id]
        elsewhere = [where for where in locations if where.node_id != self._node_id]
        survivors = reap_on_nodes(elsewhere, runtime_env=self._runtime_env)
        for where in here:
            if not await_exit(*_process_of(where), REAP_TIMEOUT):
                survivors.append(where)
        for where in survivors:
            log.error("ray worker outlived its cancel", node_id=where.node_id, pid=where.pid)

    # -- the monitor thread -------------------------------------------------------------

    def _monitor_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if not threading.main_thread().is_alive():
                    log.warning("interpreter exiting without RayExecutor.close(); closing")
                    self.close()
                    return
                with self._changed:
                    reading = dict(self._reading)
                    if not reading:
                        self._changed.wait(_TICK)
                        continue
                ready, _ = ray.wait(list(reading), num_returns=1, timeout=_TICK)
                for stream in ready:
                    self._read_next(reading[stream])
            # The monitor must outlive any bug of its own: log, pause, go on.
            except Exception:
                log.exception("ray executor monitor step failed")
                self._stopping.wait(RESTART_BACKOFF)

    def _read_next(self, attempt: _Attempt) -> None:
        assert attempt.stream is not None
        try:
            item = ray.get(next(attempt.stream), timeout=REAP_TIMEOUT)
        except StopIteration:
            failure = AttemptFailure(ErrorCode.INTERNAL, attempt.pid, "StopIteration")
            self._close_stream(attempt, failure)
            return
        # How Ray says the task or its worker failed: the attempt's outcome.
        except Exception as exc:  # noqa: BLE001
            self._close_stream(attempt, _failure(exc, attempt.pid))
            return
        if attempt.location is not None:
            self._close_stream(attempt, _outcome(item, attempt.pid), answered=True)
            return
        try:
            where = decode_location(item)
        except ValueError as exc:
            cancel_quietly(attempt.stream)
            self._close_stream(attempt, _failure(exc, None))
            return
        with self._lock:
            attempt.location = where
            mine = attempt.state is _State.SUBMITTED
            if mine:
                attempt.state = _State.RUNNING
        if mine:
            attempt.deliver_started(where.pid)

    def _close_stream(
        self, attempt: _Attempt, outcome: AttemptOutcomeReport, *, answered: bool = False
    ) -> None:
        with self._lock:
            if attempt.stream is not None:
                self._reading.pop(attempt.stream, None)
            attempt.answered = answered
            mine = attempt.state is not _State.DONE
            attempt.state = _State.DONE
        attempt.stream_closed.set()
        if not mine:
            return  # a cancel claimed it, reports its own code and frees its slot
        self._release([attempt])
        where = attempt.location
        if where is not None and not answered and where.node_id == self._node_id:
            # A crashed worker is gone, its temporary directory is not; elsewhere, the
            # next worker to start on its node sweeps it.
            await_exit(*_process_of(where), timeout=0.0)
        attempt.deliver_done(outcome)


def _join_ray(address: str | None, num_cpus: int | None) -> None:
    local = address is None and not os.environ.get("RAY_ADDRESS")
    try:
        ray.init(
            address=address,
            num_cpus=num_cpus if local else None,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    except SystemExit as exc:
        # Ray ends the process when no cluster answers; a service reports it instead.
        ray.shutdown()
        where = address or os.environ.get("RAY_ADDRESS")
        raise ConnectionError(f"no Ray cluster answered at {where!r}") from exc


def _outcome(item: object, pid: int | None) -> AttemptOutcomeReport:
    try:
        if not isinstance(item, bytes):
            raise ValueError(f"malformed worker reply: {type(item).__name__}")
        reply = decode_reply(item)
    except ValueError as exc:
        return _failure(exc, pid)
    if isinstance(reply, WorkerFailed):
        return AttemptFailure(reply.code, pid, reply.exception_type, reply.detail)
    return AttemptSuccess(reply.result, pid)


def _failure(exc: BaseException, pid: int | None) -> AttemptFailure:
    code = classify_ray_failure(exc)
    return AttemptFailure(code, pid, type(exc).__name__, str(exc)[:MAX_DETAIL_CHARS])


def _process_of(where: WorkerLocation) -> tuple[int, int, str, str]:
    return where.pid, where.start_ticks, where.temp_dir, where.task_id
