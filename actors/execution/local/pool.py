"""The local executor: long-lived worker processes that can be killed at any moment.

One monitor thread dispatches queued attempts to idle workers, reads replies, notices
deaths through each process's sentinel (so nothing waits on a dead worker) and starts
replacements. ``cancel`` and ``close`` kill workers from any thread. Two rules keep the
races harmless: whoever moves an attempt to ``DONE`` under the lock reports it, so
``on_done`` runs exactly once; whoever takes a worker out of the pool under the lock
kills, reaps and cleans it up, but only the monitor closes its file descriptors (or
anyone, once the monitor stopped), never while the monitor may be polling them.

Queued attempts wait in a :class:`~actors.execution.local.fair_queue.FairQueue` (turns
across tenants, then batches). When many wait, an idle worker gets a chunk of them in
one message (:func:`chunk_size`: one when few wait, so a lone file starts at once;
never more than about :data:`CHUNK_SECONDS` of work, so a chunk does not hold files
another worker could run). The worker runs them one by one and reports each outcome
with the start of the next, so every attempt starts its deadline when it really
starts. Only the attempt in hand is the worker's fault if it dies: the rest of its
chunk goes back to the head of the queue, not having spent an attempt. An attempt of a
chunk cancelled before it started is dropped
(:func:`~actors.execution.local.worker.skip_message`); if the worker had just started it
anyway, the pool kills the worker when it says so.
``concurrent.futures.ProcessPoolExecutor`` is not used: it was seen to hang for good
when workers died under a memory rlimit.
"""

from __future__ import annotations

import contextlib
import enum
import math
import multiprocessing
import os
import select
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.context import ForkServerContext
from pathlib import Path

import structlog

from actors.execution.attempt import WorkerFailed, decode_reply, load_processor
from actors.execution.classify import classify, classify_exit
from actors.execution.contract import (
    AttemptCallbacks,
    AttemptFailure,
    AttemptHandle,
    AttemptJob,
    AttemptSuccess,
    OnDone,
    OnStarted,
)
from actors.execution.extract import PdfLimits
from actors.execution.local import worker as worker_main
from actors.execution.local.fair_queue import FairQueue
from actors.execution.local.frames import FrameReader
from actors.execution.local.limits import ProcessLimits
from actors.execution.local.process import WorkerProcess, describe_exit, remove_tree
from actors.execution.local.worker import (
    NOTHING_NEXT,
    OUTCOME_HEADER_BYTES,
    ChunkItem,
    WorkerConfig,
    decode_outcome_header,
    run_message,
    skip_message,
)
from actors.policy.catalogue import ErrorCode
from actors.policy.results import ResultLimits

__all__ = [
    "CHUNK_SECONDS",
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "DEFAULT_PROCESSOR",
    "MAX_CHUNK",
    "PoolStats",
    "WorkerPool",
    "chunk_size",
]

log = structlog.get_logger(__name__)


DEFAULT_PROCESSOR = "actors.execution.extract:extract_pdf"
DEFAULT_MEMORY_LIMIT_BYTES = 2 * 1024**3
# Only a process stuck in the kernel outlives SIGKILL for this long.
REAP_TIMEOUT = 5.0
RESTART_BACKOFF = 1.0
# How often the monitor checks that the interpreter is not shutting down around it.
_TICK = 0.5
# The most attempts one message hands a worker; past some 16 the pipe costs no more.
MAX_CHUNK = 16
# About how much work (wall-clock seconds, at the recent mean) one chunk may hold.
CHUNK_SECONDS = 0.05
# Weight of the newest attempt in the running mean of attempt durations.
_MEAN_WEIGHT = 0.2
# The longest the monitor leaves replies unread while every worker has work handed over
# (see WorkerPool._linger_seconds): what an outcome may wait on top of its own time.
_MAX_LINGER = 0.002


def chunk_size(
    queued: int, workers: int, mean_seconds: float | None, chunk_seconds: float = CHUNK_SECONDS
) -> int:
    """How many attempts to hand an idle worker in one message.

    One while no more wait than there are workers (a lone file starts at once), or
    while no attempt ended yet (how long one takes is unknown); otherwise the worker's
    share of the queue, at most :data:`MAX_CHUNK` and at most ``chunk_seconds`` of
    work at ``mean_seconds`` each.
    """
    if queued <= workers or mean_seconds is None:
        return 1
    by_time = int(chunk_seconds / mean_seconds) if mean_seconds > 0 else MAX_CHUNK
    return max(1, min(MAX_CHUNK, queued // workers, by_time))


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A moment's view of the pool, for metrics."""

    workers: int
    busy: int
    queued: int
    # Messages that handed workers attempts since the pool started (one per chunk).
    handovers: int = 0


class _State(enum.Enum):
    QUEUED = "queued"  # in the pool's queue
    SENT = "sent"  # in a worker's chunk, not started
    RUNNING = "running"  # the attempt its worker has in hand
    DONE = "done"


class _Worker(WorkerProcess):
    """A worker process and the pool's bookkeeping about it."""

    def __init__(
        self, context: ForkServerContext, config: WorkerConfig, max_reply_bytes: int
    ) -> None:
        super().__init__(context, config)
        # Only the monitor reads the worker's replies, through this.
        self.replies_in = FrameReader(self.conn.fileno(), max_reply_bytes)
        # What the worker holds, in order: the first RUNNING, the others SENT.
        self.chunk: deque[_Attempt] = deque()
        # Held while sending: the monitor sends chunks, cancelling threads send skips,
        # and a skip must follow the chunk it names. Taken after the pool's lock, never
        # before it.
        self.send_lock = threading.Lock()
        self.replies = 0
        self.started_at = 0.0

    def close_fds(self) -> None:
        """See :meth:`WorkerProcess.close_fds`; never under a skip being sent."""
        with self.send_lock:
            super().close_fds()


class _Attempt(AttemptCallbacks):
    """The handle of one submitted job; ``state`` is guarded by the pool's lock."""

    def __init__(
        self, pool: WorkerPool, seq: int, job: AttemptJob, on_started: OnStarted, on_done: OnDone
    ):
        super().__init__(on_started, on_done)
        self.job = job
        self.seq = seq
        self.state = _State.QUEUED
        self.worker: _Worker | None = None
        self._pool = pool

    def item(self) -> ChunkItem:
        """What the worker needs of the job."""
        job = self.job
        return (
            self.seq,
            job.blob_path,
            job.blob_content,
            job.password,
            job.attempt,
            job.extraction_mode.value,
        )

    def cancel(self, code: ErrorCode) -> None:
        """See :meth:`actors.execution.contract.AttemptHandle.cancel`."""
        self._pool._cancel(self, code)


class WorkerPool:
    """Runs attempts in long-lived worker processes started from a fork server.

    Each worker has a private temporary directory (mode 0700) under ``temp_root``, an
    address-space cap, pypdf limits and the :class:`~actors.execution.local.limits.ProcessLimits`.
    A worker that dies is replaced; its attempt, if any, fails with ``WORKER_CRASHED``
    (``PDF_LIMIT_EXCEEDED`` if it ran out of CPU time). Like ``concurrent.futures``, the
    pool closes itself when the interpreter shuts down (the main thread has ended).

    Args:
        workers: How many processes. Default ``os.cpu_count()``.
        processor: Import path ``"module:function"`` of a callable
            ``(data: bytes, password: str | None) -> ExtractionResult``; it also gets
            ``attempt=job.attempt`` if it has a parameter of that name.
            Default :func:`actors.execution.extract.extract_pdf`.
        memory_limit_bytes: ``RLIMIT_AS`` of each worker. Default 2 GiB; ``None`` for
            no cap.
        pdf_limits: pypdf limits in the workers. Default ``PdfLimits()``.
        process_limits: CPU time per attempt, open files and CPU priority of each
            worker. Default: none.
        result_limits: How big one file's result may be. Default ``ResultLimits()``.
        temp_root: Where the workers' temporary directories go. Default a fresh
            directory under the system's, removed by :meth:`close`.
        chunk_seconds: About how much work one hand-over may give a worker, at the
            recent mean attempt duration. Default :data:`CHUNK_SECONDS`; ``0`` hands
            over one attempt at a time.

    Raises:
        ValueError: A bad worker count or memory limit, or a processor that cannot be
            imported.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        processor: str = DEFAULT_PROCESSOR,
        memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
        pdf_limits: PdfLimits | None = None,
        process_limits: ProcessLimits | None = None,
        result_limits: ResultLimits | None = None,
        temp_root: Path | None = None,
        chunk_seconds: float = CHUNK_SECONDS,
    ) -> None:
        self._size = workers if workers is not None else os.cpu_count() or 1
        if self._size < 1:
            raise ValueError(f"workers must be at least 1, got {self._size}")
        if memory_limit_bytes is not None and memory_limit_bytes <= 0:
            raise ValueError(f"memory_limit_bytes must be positive, got {memory_limit_bytes}")
        if chunk_seconds < 0:
            raise ValueError(f"chunk_seconds must not be negative, got {chunk_seconds}")
        self._chunk_seconds = chunk_seconds
        load_processor(processor)
        self._own_temp_root = temp_root is None
        self._temp_root = temp_root or Path(tempfile.mkdtemp(prefix="pdfbatch-"))
        self._settings = (processor, memory_limit_bytes, pdf_limits or PdfLimits())
        self._process_limits = process_limits or ProcessLimits()
        self._result_limits = result_limits or ResultLimits()
        # A reply past this did not come from make_storable: the worker is broken.
        self._max_reply_bytes = self._result_limits.max_reply_bytes()
        self._context = multiprocessing.get_context("forkserver")
        # Read when the fork server starts: every worker then forks with these imported.
        self._context.set_forkserver_preload([worker_main.__name__, processor.partition(":")[0]])
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: FairQueue[_Attempt] = FairQueue(_line_of)
        self._next_seq = 0
        self._handovers = 0
        # The monitor's running mean of attempt durations; None until one ended.
        self._mean_seconds: float | None = None
        self._workers: list[_Worker] = []
        self._graveyard: list[_Worker] = []
        # Taken out of the pool by some thread and not yet reaped: close waits for them.
        self._in_disposal: set[_Worker] = set()
        self._closed = False
        self._stopping = threading.Event()
        self._monitor_alive = True
        self._restart_not_before = 0.0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._monitor = threading.Thread(
            target=self._monitor_loop, name="pdfbatch-worker-pool-monitor", daemon=False
        )
        try:
            for _ in range(self._size):
                self._workers.append(self._start_worker())
        except BaseException:
            self.close()
            raise
        self._monitor.start()

    def submit(self, job: AttemptJob, on_started: OnStarted, on_done: OnDone) -> AttemptHandle:
        """Queue ``job``; see :class:`actors.execution.contract.Executor`.

        Attempts of one batch run in the order submitted; batches and tenants take turns
        (:class:`~actors.execution.local.fair_queue.FairQueue`).

        Raises:
            RuntimeError: The pool is closed.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            attempt = _Attempt(self, self._next_seq, job, on_started, on_done)
            self._next_seq += 1
            self._queue.append(attempt)
            # While every worker has a chunk, the monitor hands out queued attempts as
            # it handles their replies anyway: waking it for each one cost a loop of it
            # per file for nothing.
            idle = len(self._workers) < self._size or any(
                not worker.chunk for worker in self._workers
            )
        if idle:
            self._wake()
        return attempt

    def close(self) -> None:
        """Kill every worker and stop the monitor; unfinished attempts end ``CANCELLED``.

        Idempotent; a second call returns at once. Temporary directories are gone when
        the first call returns.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers, self._workers = self._workers, []
            # Only the attempt in hand ran in a worker; the rest of a chunk never started.
            unfinished: list[tuple[_Attempt, int | None]] = [
                (attempt, None) for attempt in self._queue.clear()
            ]
            for worker in workers:
                unfinished += [
                    (attempt, worker.pid if attempt.state is _State.RUNNING else None)
                    for attempt in worker.chunk
                ]
                worker.chunk.clear()
            for attempt, _ in unfinished:
                attempt.state = _State.DONE
            self._changed.notify_all()
        self._stopping.set()
        self._wake()
        for worker in workers:
            worker.kill()
        for worker in workers:
            self._dispose(worker)
        with self._changed:
            # Workers another thread is killing right now (a cancel) are gone too.
            self._changed.wait_for(lambda: not self._in_disposal, REAP_TIMEOUT)
        for attempt, _ in unfinished:
            attempt.finished.set()
        on_monitor = threading.current_thread() is self._monitor
        if self._monitor.ident is not None and not on_monitor:
            self._monitor.join(REAP_TIMEOUT)
        if self._monitor.is_alive() and not on_monitor:
            log.error("worker pool monitor did not stop; a callback may be blocking")
        else:
            with self._lock:
                self._monitor_alive = False
                dead, self._graveyard = self._graveyard, []
                os.close(self._wake_r)
                os.close(self._wake_w)
            for worker in dead:
                worker.close_fds()
        if self._own_temp_root:
            remove_tree(self._temp_root)
        for attempt, pid in unfinished:
            attempt.deliver_done(AttemptFailure(ErrorCode.CANCELLED, pid))

    def queued_seconds(self) -> float:
        """See :meth:`actors.execution.contract.Executor.queued_seconds`: the attempts
        queued, and those handed to a worker behind the one it runs, at the mean
        attempt's seconds, shared by the workers."""
        with self._lock:
            mean = self._mean_seconds
            if mean is None or not self._workers:
                return 0.0
            behind = sum(max(0, len(worker.chunk) - 1) for worker in self._workers)
            return (len(self._queue) + behind) * mean / len(self._workers)

    def cancel_batch(self, batch_id: str, code: ErrorCode) -> None:
        """See :meth:`actors.execution.contract.Executor.cancel_batch`."""
        with self._lock:
            # Waiting ones are out of reach before any worker dies: a replacement cannot
            # pick up the next attempt of the batch only to be killed in turn.
            waiting = self._queue.remove_if(lambda attempt: _of(attempt, batch_id))
            for attempt in waiting:
                attempt.state = _State.DONE
            unstarted = [
                (worker, self._drop_unstarted(worker, lambda a: _of(a, batch_id)))
                for worker in self._workers
            ]
            victims = [
                worker
                for worker in self._workers
                if worker.chunk and _of(worker.chunk[0], batch_id)
            ]
            running = [self._take_out(worker) for worker in victims]
        for worker in victims:
            worker.kill()
        for worker, dropped in unstarted:
            if worker not in victims:
                self._tell_to_skip(worker, dropped)
            waiting += dropped
        for worker in victims:
            self._dispose(worker)
        if victims:
            self._wake()
        for attempt in waiting:
            attempt.deliver_done(AttemptFailure(code, None))
        for claimed, worker in zip(running, victims, strict=True):
            if claimed is not None:
                claimed.deliver_done(AttemptFailure(code, worker.pid))

    def stats(self) -> PoolStats:
        """Workers alive, busy, and attempts waiting for one, right now."""
        with self._lock:
            return PoolStats(
                workers=len(self._workers),
                busy=sum(1 for worker in self._workers if worker.chunk),
                queued=len(self._queue)
                + sum(len(worker.chunk) - 1 for worker in self._workers if worker.chunk),
                handovers=self._handovers,
            )

    def pids(self) -> list[int]:
        """The pids of the workers in the pool right now."""
        with self._lock:
            return [worker.pid for worker in self._workers]

    def worker_temp_dirs(self) -> dict[int, Path]:
        """Each worker's temporary directory, by pid."""
        with self._lock:
            return {worker.pid: worker.temp_dir for worker in self._workers}

    def wait_for_pids(self, predicate: Callable[[Sequence[int]], bool], timeout: float) -> bool:
        """Wait until ``predicate(pids())`` holds; ``False`` if ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(
                lambda: predicate([worker.pid for worker in self._workers]), timeout
            )

    # -- any thread ---------------------------------------------------------------------

    def _cancel(self, attempt: _Attempt, code: ErrorCode) -> None:
        with self._lock:
            state = attempt.state
            holder = attempt.worker
            victim = holder if state is _State.RUNNING else None
            if state is _State.QUEUED:
                self._queue.remove(attempt)
                attempt.state = _State.DONE
            elif state is _State.SENT and holder is not None:
                self._drop_unstarted(holder, lambda queued: queued is attempt)
            elif victim is not None:
                self._take_out(victim)
        if state is _State.DONE:
            # Another thread is ending it; cancel still returns only once it is over.
            attempt.finished.wait(REAP_TIMEOUT)
            return
        if victim is not None:
            self._dispose(victim)
            self._wake()
        elif state is _State.SENT and holder is not None:
            self._tell_to_skip(holder, [attempt])
        attempt.deliver_done(AttemptFailure(code, victim.pid if victim else None))

    @staticmethod
    def _drop_unstarted(worker: _Worker, chosen: Callable[[_Attempt], bool]) -> list[_Attempt]:
        """Take the chosen attempts of ``worker``'s chunk that have not started out of
        it and mark them ``DONE``. Hold the lock; then :meth:`_tell_to_skip` them."""
        dropped = [a for a in worker.chunk if a.state is _State.SENT and chosen(a)]
        if dropped:
            worker.chunk = deque(a for a in worker.chunk if a not in dropped)
            for attempt in dropped:
                attempt.state = _State.DONE
        return dropped

    @staticmethod
    def _tell_to_skip(worker: _Worker, dropped: Sequence[_Attempt]) -> None:
        """Tell ``worker`` not to start attempts of its chunk; don't hold the lock.

        Sent now, so that it is in the pipe before the worker ends the attempt in hand.
        Should it start one anyway (its reply crossed this message), the pool kills it
        when it says so (:meth:`_on_reply`).
        """
        if dropped:
            with worker.send_lock, contextlib.suppress(OSError):  # gone: nothing to skip
                worker.conn.send(skip_message(tuple(attempt.seq for attempt in dropped)))

    def _take_out(self, worker: _Worker) -> _Attempt | None:
        """Remove ``worker`` from the pool and claim its running attempt. Hold the lock.

        The rest of its chunk, never started, goes back to the head of the queue.
        """
        self._workers.remove(worker)
        self._in_disposal.add(worker)
        self._changed.notify_all()
        chunk, worker.chunk = worker.chunk, deque()
        claimed = None
        if chunk and chunk[0].state is _State.RUNNING:
            claimed = chunk.popleft()
            claimed.state = _State.DONE
        self._requeue(chunk)
        return claimed

    def _requeue(self, attempts: Iterable[_Attempt]) -> None:
        """Put attempts a worker never started back at the head of their lines. Hold the lock."""
        for attempt in reversed(list(attempts)):
            if attempt.state is not _State.DONE:
                attempt.state = _State.QUEUED
                attempt.worker = None
                self._queue.appendleft(attempt)

    def _dispose(self, worker: _Worker) -> int | None:
        """Reap a worker taken out of the pool; its descriptors go to the monitor."""
        exitcode = worker.reap(REAP_TIMEOUT)
        with self._lock:
            self._in_disposal.discard(worker)
            self._changed.notify_all()
            if self._monitor_alive:
                self._graveyard.append(worker)
                return exitcode
        worker.close_fds()
        return exitcode

    def _wake(self) -> None:
        with self._lock:
            # A full pipe holds wake-ups enough; a closed pool needs none.
            if self._monitor_alive:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"\0")

    def _start_worker(self) -> _Worker:
        temp_dir = tempfile.mkdtemp(prefix="worker-", dir=self._temp_root)
        try:
            return _Worker(
                self._context,
                WorkerConfig(
                    *self._settings,
                    temp_dir=temp_dir,
                    process_limits=self._process_limits,
                    result_limits=self._result_limits,
                ),
                self._max_reply_bytes,
            )
        except BaseException:
            remove_tree(Path(temp_dir))
            raise

    # -- the monitor thread -------------------------------------------------------------

    def _monitor_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if not threading.main_thread().is_alive():
                    log.warning("interpreter exiting without WorkerPool.close(); closing")
                    self.close()
                    return
                with self._lock:
                    dead, self._graveyard = self._graveyard, []
                for worker in dead:
                    worker.close_fds()
                self._replace_missing_workers()
                self._dispatch()
                self._wait_and_handle()
            # The monitor must outlive any bug of its own: log, pause, go on.
            except Exception:
                log.exception("worker pool monitor step failed")
                self._stopping.wait(RESTART_BACKOFF)

    def _replace_missing_workers(self) -> None:
        with self._lock:
            missing = self._size - len(self._workers)
        if missing <= 0 or time.monotonic() < self._restart_not_before:
            return
        for _ in range(missing):
            try:
                worker = self._start_worker()
            except Exception as exc:
                log.exception("cannot start a worker; will retry", code=classify(exc))
                self._restart_not_before = time.monotonic() + RESTART_BACKOFF
                return
            with self._lock:
                if not self._closed:
                    self._workers.append(worker)
                    self._changed.notify_all()
                    continue
            self._dispose(worker)
            return

    def _dispatch(self) -> None:
        chunks: list[tuple[_Worker, list[_Attempt]]] = []
        with self._lock:
            for worker in self._workers:
                if not self._queue:
                    break
                if worker.chunk:
                    continue
                size = chunk_size(
                    len(self._queue), self._size, self._mean_seconds, self._chunk_seconds
                )
                taken = [self._queue.popleft() for _ in range(min(size, len(self._queue)))]
                for attempt in taken:
                    attempt.state = _State.SENT
                    attempt.worker = worker
                taken[0].state = _State.RUNNING
                worker.chunk.extend(taken)
                # Before the lock goes: a cancel of one of these sends its skip after.
                worker.send_lock.acquire()
                chunks.append((worker, taken))
            self._handovers += len(chunks)
        now = time.monotonic()
        for worker, taken in chunks:
            try:
                worker.conn.send(run_message(tuple(attempt.item() for attempt in taken)))
            except OSError:
                continue  # the worker is gone; its sentinel reports the attempt
            finally:
                worker.send_lock.release()
            worker.started_at = now
            taken[0].deliver_started(worker.pid)

    def _wait_and_handle(self) -> None:
        with self._lock:
            linger = self._linger_seconds()
        if linger > 0:
            # Replies are read a few at a time: waking this thread for each one cost
            # about as much as handling it. The pool's close ends the wait.
            self._stopping.wait(linger)
        # The workers as they are after the wait: one may have gone meanwhile.
        with self._lock:
            everyone = list(self._workers)
            busy = [worker for worker in everyone if worker.chunk]
        timeout = _TICK
        if len(everyone) < self._size:
            timeout = min(_TICK, max(0.0, self._restart_not_before - time.monotonic()))
        replies = {worker.conn.fileno(): worker for worker in busy}
        sentinels = {worker.process.sentinel: worker for worker in everyone}
        ready = _ready([self._wake_r, *replies, *sentinels], timeout)
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        # Replies first: a worker that answered and then exited did finish its attempt.
        for fd, worker in replies.items():
            if fd in ready:
                self._read_replies(worker)
        for sentinel, worker in sentinels.items():
            if sentinel in ready:
                self._on_lost(worker)

    def _linger_seconds(self) -> float:
        """How long the monitor may leave replies unread (the caller holds the lock):
        while every worker has attempts handed over behind the one it runs, none needs
        anything from it before the shortest of those runs out, of which half is taken,
        up to :data:`_MAX_LINGER`."""
        mean = self._mean_seconds
        if mean is None or len(self._workers) < self._size:
            return 0.0
        behind = min((len(worker.chunk) - 1 for worker in self._workers), default=0)
        if behind < 1:
            return 0.0
        return min(_MAX_LINGER, behind * mean / 2)

    def _read_replies(self, worker: _Worker) -> None:
        """Handle every reply ``worker`` has sent whole so far, in order (one read). Those
        that came while the monitor lingered share the time since the one read before
        them, which is how long each took, for the running mean."""
        try:
            replies = worker.replies_in.read()
        except (EOFError, OSError):
            self._on_lost(worker)
            return
        began = worker.started_at
        handled = 0
        for data in replies:
            if not self._on_reply(worker, data):
                break  # cancelled, closed or retired meanwhile: that path reports it
            handled += 1
        if handled:
            now = time.monotonic()
            for _ in range(handled):
                self._observe((now - began) / handled)
            worker.started_at = now

    def _on_reply(self, worker: _Worker, data: bytes) -> bool:
        """Handle one reply of ``worker``; whether the worker still served the pool."""
        try:
            done_seq, next_seq = decode_outcome_header(data)
            reply = decode_reply(data[OUTCOME_HEADER_BYTES:])
        except ValueError as exc:
            # A worker that garbles its replies cannot be trusted with another job.
            done_seq, next_seq = -1, NOTHING_NEXT
            reply = WorkerFailed(ErrorCode.INTERNAL, "ValueError", str(exc), worker_exiting=True)
        retire = isinstance(reply, WorkerFailed) and reply.worker_exiting
        started: _Attempt | None = None
        with self._lock:
            if worker not in self._workers or not worker.chunk:
                return False  # cancelled or closed meanwhile; that path reports it
            attempt = worker.chunk.popleft()
            attempt.state = _State.DONE
            worker.replies += 1
            if done_seq not in (-1, attempt.seq):
                # Not this attempt's outcome, whatever it says: the worker is broken.
                reply = WorkerFailed(
                    ErrorCode.INTERNAL,
                    "ValueError",
                    f"worker answered for attempt {done_seq}, not {attempt.seq}",
                    worker_exiting=True,
                )
                retire = True
            if not retire and next_seq != NOTHING_NEXT:
                if worker.chunk and worker.chunk[0].seq == next_seq:
                    started = worker.chunk[0]
                    started.state = _State.RUNNING
                else:
                    # It started an attempt cancelled while its reply was on the way;
                    # nothing of that attempt may run: the worker goes.
                    retire = True
            elif not retire and worker.chunk:
                retire = True  # it says it holds nothing more: it cannot be trusted
            if retire:
                self._take_out(worker)
        if retire:
            self._dispose(worker)  # it exits by itself after a MemoryError; make sure
            self._wake()
        if started is not None:
            started.deliver_started(worker.pid)
        if isinstance(reply, WorkerFailed):
            attempt.deliver_done(
                AttemptFailure(reply.code, worker.pid, reply.exception_type, reply.detail)
            )
        else:
            attempt.deliver_done(AttemptSuccess(reply.result, worker.pid))
        return True

    def _observe(self, seconds: float) -> None:
        mean = self._mean_seconds
        self._mean_seconds = seconds if mean is None else mean + _MEAN_WEIGHT * (seconds - mean)

    def _on_lost(self, worker: _Worker) -> None:
        with self._lock:
            if worker not in self._workers:
                return
            attempt = self._take_out(worker)
        exitcode = self._dispose(worker)
        status = describe_exit(exitcode)
        if attempt is not None:
            code = classify_exit(exitcode)
            attempt.deliver_done(AttemptFailure(code, worker.pid, "", status))
            return
        log.warning("idle worker died", pid=worker.pid, status=status)
        if worker.replies == 0 and (exitcode or 0) > 0:
            # It raised before serving anything: its start-up fails (a memory cap too low
            # to import pypdf, say), so do not restart it in a tight loop.
            self._restart_not_before = time.monotonic() + RESTART_BACKOFF


def _ready(fds: list[int], timeout: float) -> set[int]:
    """The descriptors of ``fds`` that are readable, closed or broken within ``timeout``
    seconds.

    One ``poll`` call: ``multiprocessing.connection.wait`` builds a selector and a key
    per descriptor on every call, which cost the monitor about 90 µs per reply.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return {fd for fd, _ in poller.poll(math.ceil(timeout * 1000))}


def _of(attempt: _Attempt, batch_id: str) -> bool:
    return attempt.job.batch_id == batch_id


def _line_of(attempt: _Attempt) -> tuple[str, str]:
    return attempt.job.tenant, attempt.job.batch_id
