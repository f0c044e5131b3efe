"""The batch supervisor: one actor per batch, owner of its state machine and policy.

Pending files are records in a queue, not threads: at most ``max_concurrency`` file
actors exist at once. Children report by ``tell``; backoffs are timers that ``tell``
back later. Changes are stored before anyone sees them; reports that arrive together
are stored together (a group commit).

Memory does not grow with the batch: the book holds the batch's record, its counts
and the working set only (files running, in backoff, a window of the next waiting
files, and what changed since the last commit). Waiting files are read from the store
a page at a time, by position, as slots free up; a settled file is forgotten once its
change is stored. Whole states move at once (a cancel's waiting files, a retry of
every failed file) as one statement and one event, counted by the store: no file is
loaded and no event written per file (SQLite still rewrites each row).
"""

from __future__ import annotations

import dataclasses
import sys
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pykka
import structlog

from actors.execution.contract import (
    AttemptFailure,
    AttemptJob,
    AttemptOutcomeReport,
    AttemptSuccess,
    Executor,
)
from actors.orchestration.clock import Scheduler, Timer
from actors.orchestration.dispatch import Dispatcher, ThreadActor
from actors.orchestration.file_actor import FileActor, tell_if_alive
from actors.orchestration.messages import (
    AttemptFinished,
    BackoffElapsed,
    CancelBatch,
    CancelStarted,
    CommitDue,
    FileActorStopped,
    FilesArrived,
    GetView,
    RetryFiles,
    StopSupervisor,
    SupervisorFailed,
    SupervisorRetiring,
    UploadComplete,
    WorkersStarted,
)
from actors.orchestration.starts import StartNotes
from actors.orchestration.vault import PasswordVault
from actors.policy.book import BatchBook, retryable
from actors.policy.catalogue import ErrorCode, ResultTooLargeError
from actors.policy.model import (
    Attempt,
    AttemptOutcome,
    BatchState,
    BatchSummary,
    FileError,
    FileRecord,
    FileState,
    settled_batch_state,
)
from actors.policy.refusals import FileNotFound, RetryRefused
from actors.policy.results import ResultLimits, make_storable
from actors.policy.rules import (
    MAX_WRONG_PASSWORDS,
    GiveUp,
    GiveUpReason,
    RestartWindow,
    decide_after_failure,
    password_guesses_exhausted,
)
from actors.policy.sealed import SealedResult, seal
from actors.storage.blobs import BlobStore
from actors.storage.store import Store

__all__ = ["BatchSupervisor", "SupervisorDeps"]

log = structlog.get_logger(__name__)

# The most events held back for one group commit: bounds what a crash makes redo.
_GROUP_COMMIT_EVENTS = 256
# Reports wait quietly for a group commit when the executor has queued work for this
# many times the wait: its workers stay busy, though the files those reports free start
# only after the commit. Less, and each report is handled as it comes.
_QUEUED_FOR_QUIET_REPORTS = 2.0
# The exception's name is all that crosses from a worker; it picks one of our messages.
_TEXT_TOO_LARGE = ResultTooLargeError.__name__
_RETRYABLE_STATES = frozenset({FileState.FAILED, FileState.CANCELLED})
_WAITING_STATES = (FileState.PENDING, FileState.BACKOFF)
# Up to this many files changed by one decision are named, each in its own event for a
# retry; beyond it the change is made by state (one statement, one event with a count).
_LISTED_CHANGES = 100
# The working set is read from the store in pages of this many files.
_PAGE = 1000
_PASSWORD_LOST = (
    "This file is password-protected, and its password is no longer held (the service "
    "restarted, or the file ended, since it was given); passwords are never stored. "
    "Retry the file with its password."
)


@dataclass(frozen=True, slots=True)
class SupervisorDeps:
    """What a batch supervisor works with; shared by every batch of the process."""

    store: Store
    dispatcher: Dispatcher
    blobs: BlobStore
    executor: Executor
    scheduler: Scheduler
    passwords: PasswordVault
    rand: Callable[[], float]
    result_limits: ResultLimits = field(default_factory=ResultLimits)
    # Seconds a group commit waits after the one before when the inbox runs dry, for
    # more reports to store with it; 0 commits at once. See _commit_unless_more_coming.
    commit_interval: float = 0.0
    # Seconds a worker has run an attempt before its file is stored (and shown) as
    # RUNNING; an attempt that ends sooner is stored by its end alone. 0: at the next
    # group commit. See _begin_started.
    show_running_after: float = 0.0


class BatchSupervisor(ThreadActor):
    """Runs one batch: starts file actors, applies the policy to their outcomes.

    Args:
        summary: The batch and its counts as last stored; a supervisor started on a
            batch that was running resumes it (attempts cut short count as
            interrupted, not failed), reading only the files that were running or in
            backoff.
        deps: Store, executor, clock and the rest.
        manager: Told when this supervisor dies of a bug, so it can be restarted.
    """

    def __init__(
        self, summary: BatchSummary, deps: SupervisorDeps, manager: pykka.ActorRef[Any] | None
    ) -> None:
        super().__init__()
        self._book = BatchBook(summary)
        self._deps = deps
        self._manager = manager
        self._policy = summary.batch.policy
        # The batch's upload has not ended: files still arrive (FilesArrived), so the
        # batch does not settle, and only this supervisor reads it.
        self._uploading = summary.uploading
        # Held waiting files, next first: every held PENDING file is in it.
        self._ready: deque[str] = deque()
        # Where the next page of waiting files starts (the last position read).
        self._cursor = -1
        # Files read in one page of waiting files: enough to fill every slot twice.
        self._window = max(2 * self._policy.max_concurrency, 64)
        self._children: dict[str, pykka.ActorRef[Any]] = {}
        # Each child's attempt, and when it was handed over. Until its start is stored
        # the child's file stays PENDING, in memory and in the store.
        self._handed: dict[str, tuple[int, float]] = {}
        # Starts read from the notes and not stored yet (see _begin_ended, _begin_started).
        self._starts_read: dict[str, tuple[int, float]] = {}
        me = self.actor_ref
        self._start_notes = StartNotes(
            deps.scheduler.now, lambda: tell_if_alive(me, WorkersStarted())
        )
        self._backoffs: dict[str, Timer] = {}
        self._restarts = RestartWindow()
        self._results: dict[str, SealedResult] = {}
        # Cancels waiting for the batch to be stored as terminal.
        self._settle_waiters: list[pykka.Future[BatchSummary]] = []
        # Set on shutdown: stopped children leave their files RUNNING, to resume later.
        self._stopping = False
        # Set once the batch settled with nothing running: the actor is on its way out.
        self._retiring = False
        # Set when it failed: what it holds may be ahead of the store, so it takes no
        # more messages and the manager starts a fresh one from the store.
        self._failed = False
        # When the last group commit was (the scheduler's clock).
        self._committed_at = float("-inf")
        self._log = log.bind(batch_id=summary.batch.batch_id)

    # Lifecycle ---------------------------------------------------------------------

    def on_start(self) -> None:
        # pykka calls neither on_failure nor on_stop when on_start raises.
        try:
            self._resume()
        except Exception:
            self.on_failure(*sys.exc_info())
            raise

    def _resume(self) -> None:
        now = self._now()
        for stored in self._stored_files({FileState.RUNNING, FileState.BACKOFF}):
            record = self._book.hold(stored)
            if record.state is FileState.RUNNING:
                self._book.set_file(
                    record.file_id,
                    FileState.PENDING,
                    now,
                    f"attempt {len(record.attempts)} was cut short by a restart; it does "
                    "not count as a failure",
                    attempts=self._end_last(record.attempts, now, AttemptOutcome.INTERRUPTED),
                )
                self._ready.append(record.file_id)
            elif record.state is FileState.BACKOFF:
                due = record.next_attempt_at if record.next_attempt_at is not None else now
                self._arm_backoff(record.file_id, len(record.attempts), due - now)
        state = self._book.batch.state
        if state is BatchState.CANCELLING:
            self._cancel_waiting(now)
        elif state is BatchState.PENDING:
            self._book.set_batch(BatchState.RUNNING, now)
        self._advance(now)
        self._commit()

    def on_stop(self) -> None:
        self._stop_children()
        self._drop_backoffs()
        if not self._failed:
            # Changes held back for a group commit are stored before the actor goes.
            try:
                self._store_changes()
            # on_failure logs it and has the manager restart the batch from the store.
            except Exception:  # noqa: BLE001
                self.on_failure(*sys.exc_info())
        self._abandon_settle_waiters()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._failed:
            return
        self._failed = True
        self._log.error(
            "batch_supervisor_failed", exc_info=(exception_type, exception_value, traceback)
        )
        self._stop_children()
        self._drop_backoffs()
        self._abandon_settle_waiters()
        if self._manager is not None:
            tell_if_alive(
                self._manager,
                SupervisorFailed(
                    self._book.batch.batch_id, getattr(exception_type, "__name__", "")
                ),
            )

    # Messages ----------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if self._failed:
            # The caller asks the manager again and reaches a fresh supervisor.
            raise pykka.ActorDeadError("the batch supervisor failed")
        try:
            return self._handle(message)
        finally:
            if not self._failed:
                # Whatever the message (a reply commits first): the next commit, or the
                # starts waiting to be stored, are held for before the next message.
                self._commit_unless_more_coming()
            # Settled with nothing running (a refused retry of a settled batch included):
            # free the thread, and leave the batch to retention.
            if not self._failed and not self._retiring and self._idle():
                self._retire()

    def _handle(self, message: Any) -> Any:
        match message:
            case AttemptFinished(file_id=file_id, attempt=attempt, report=report):
                self._attempt_finished(file_id, attempt, report)
            case FileActorStopped(file_id=file_id, attempt=attempt, worker_pid=pid):
                self._attempt_stopped(file_id, attempt, pid)
            case BackoffElapsed(file_id=file_id, attempt=attempt):
                self._backoff_over(file_id, attempt)
            case CommitDue():
                self._commit()
            case WorkersStarted():
                pass  # stored when due (_commit_unless_more_coming)
            case GetView():
                # A reply never shows what is not stored yet.
                self._commit()
                return self._book.summary()
            case CancelBatch(reason=reason, request_id=request_id):
                return self._cancel(reason, request_id)
            case RetryFiles():
                if self._retiring:
                    # The caller asks the manager again and reaches a fresh supervisor.
                    raise pykka.ActorDeadError("the batch supervisor is retiring")
                self._retry(message)
            case FilesArrived(total=total):
                self._arrive(total)
            case UploadComplete(total=total):
                self._arrive(total)
                self._uploading = False
                if self._book.batch.state is BatchState.RUNNING:
                    self._check_tolerance(self._now())
            case StopSupervisor():
                self._stopping = True
                self._drop_backoffs()
                # What workers run is stored as running, to be resumed as interrupted.
                self._begin_started(self._now(), every=True)
                self._commit()
                return self._stop_children()
            case _:
                return super().on_receive(message)
        self._advance(self._now())
        if isinstance(message, RetryFiles):
            self._commit()
            return self._book.summary()
        if isinstance(message, FilesArrived | UploadComplete):
            # The upload goes on once the files' counts are stored.
            self._commit()
        return None

    # Outcomes ----------------------------------------------------------------------

    def _attempt_finished(self, file_id: str, attempt: int, report: AttemptOutcomeReport) -> None:
        current = self._is_current(file_id, attempt)
        # Before the child is released: an attempt no worker noted counts from its hand-over.
        start = self._unstored_start(file_id, attempt) if current else None
        self._release_child(file_id, attempt)
        if not current:
            return
        outcome = self._storable(report) if isinstance(report, AttemptSuccess) else report
        if isinstance(outcome, SealedResult):
            # Most files: its start and its success are one move of the book.
            self._succeed(file_id, outcome, report.worker_pid, start)
            return
        self._begin_ended(file_id, start)
        if self._book.batch.state is BatchState.CANCELLING:
            self._interrupt(file_id, report.worker_pid)
        else:
            self._fail(file_id, outcome)

    def _attempt_stopped(self, file_id: str, attempt: int, worker_pid: int | None) -> None:
        current = not self._stopping and self._is_current(file_id, attempt)
        if current:
            self._begin_ended(file_id, self._unstored_start(file_id, attempt))
        self._release_child(file_id, attempt)
        if current:
            self._interrupt(file_id, worker_pid)

    def _storable(self, report: AttemptSuccess) -> SealedResult | AttemptFailure:
        """The report's result sealed and fit to store, or the failure of a result that is
        not.

        Whatever the executor hands over, only such a result joins a group commit: one
        file's data can then fail that file only, never the commit of the others. A
        sealed result was made storable in its worker and is only checked against the
        limits here; any other is made storable and sealed here.
        """
        limits = self._deps.result_limits
        try:
            result = report.result
            if isinstance(result, SealedResult):
                result.check_within(limits)
                return result
            return seal(make_storable(result, limits))
        except ResultTooLargeError as exc:
            return AttemptFailure(
                ErrorCode.PDF_LIMIT_EXCEEDED, report.worker_pid, type(exc).__name__, str(exc)
            )
        except Exception as exc:  # noqa: BLE001 (classified: the result's fault, not ours)
            return AttemptFailure(
                ErrorCode.RESULT_UNSTORABLE,
                report.worker_pid,
                type(exc).__name__,
                "".join(traceback.format_exception(exc)),
            )

    def _succeed(
        self, file_id: str, result: SealedResult, worker_pid: int | None, start: Attempt | None
    ) -> None:
        """Store the file's result and its success.

        Args:
            start: The attempt's start if it is not stored yet (see
                :meth:`_unstored_start`): the file then goes through ``RUNNING`` in the
                same move, under the success's one event.
        """
        now = self._now()
        attempts = self._book.file(file_id).attempts
        if start is not None:
            attempts = (*attempts, start)
        self._results[file_id] = result
        self._book.set_file(
            file_id,
            FileState.SUCCEEDED,
            now,
            f"attempt {len(attempts)} succeeded",
            via=None if start is None else FileState.RUNNING,
            attempts=self._end_last(attempts, now, AttemptOutcome.SUCCEEDED, pid=worker_pid),
            next_attempt_at=None,
            error=None,
            warnings=result.warnings,
        )
        # No line per success: on small files it was the service's biggest log cost. The
        # batch's summary says how it went (INFO), each failure keeps its WARNING line, and
        # the file's history holds every attempt.

    def _fail(self, file_id: str, report: AttemptFailure) -> None:
        now = self._now()
        record = self._book.file(file_id)
        outcome = (
            AttemptOutcome.CANCELLED
            if report.code is ErrorCode.CANCELLED
            else AttemptOutcome.FAILED
        )
        failures = record.round_failures + 1
        decision, self._restarts = decide_after_failure(
            self._policy, report.code, failures, self._restarts, now, self._deps.rand
        )
        self._log.warning(
            "file_attempt_failed",
            file_id=file_id,
            attempt=len(record.attempts),
            code=report.code.value,
            exception_type=report.exception_type,
            detail=report.detail,
            duration=now - record.attempts[-1].started_at,
            worker_pid=report.worker_pid,
            decision=decision,
        )
        error = self._error_of(file_id, report, now)
        if isinstance(decision, GiveUp):
            attempts = self._end_last(
                record.attempts, now, outcome, code=report.code, pid=report.worker_pid
            )
            self._book.set_file(
                file_id,
                FileState.FAILED,
                now,
                _give_up_reason(len(attempts), report.code, decision.reason),
                attempts=attempts,
                round_failures=failures,
                error=error,
            )
            if decision.reason is GiveUpReason.RESTART_INTENSITY_EXCEEDED:
                limit = self._policy.restart_intensity
                self._abort(
                    now,
                    f"More than {limit.max_restarts} automatic restarts within "
                    f"{limit.within_seconds:g} s: the failures look systemic, so the batch "
                    "stopped retrying. Check the service's health, then retry the batch.",
                )
            else:
                self._check_tolerance(now)
            return
        attempts = self._end_last(
            record.attempts,
            now,
            outcome,
            code=report.code,
            pid=report.worker_pid,
            retry_delay=decision.delay,
        )
        self._book.set_file(
            file_id,
            FileState.BACKOFF,
            now,
            f"attempt {len(attempts)} failed with {report.code.value}; next attempt in "
            f"{decision.delay:.3g} s",
            attempts=attempts,
            round_failures=failures,
            next_attempt_at=now + decision.delay,
            error=error,
        )
        self._arm_backoff(file_id, len(attempts), decision.delay)

    def _error_of(self, file_id: str, report: AttemptFailure, now: float) -> FileError:
        code = report.code
        error = FileError.of(code, now)
        if code is ErrorCode.PDF_LIMIT_EXCEEDED and report.exception_type == _TEXT_TOO_LARGE:
            limit = self._deps.result_limits.max_text_bytes
            return dataclasses.replace(
                error,
                message=f"This PDF holds more text than the {limit:,} bytes one file's result "
                "may hold. Split the file, or ask an operator to raise max_result_text_bytes.",
            )
        lost = (
            code is ErrorCode.PDF_ENCRYPTED
            and self._book.file(file_id).encrypted_with_password
            and self._deps.passwords.get(self._book.batch.batch_id, file_id) is None
        )
        # Passwords live in memory only: after a restart the one given is gone.
        return dataclasses.replace(error, message=_PASSWORD_LOST) if lost else error

    def _interrupt(self, file_id: str, worker_pid: int | None = None) -> None:
        """The file's attempt was cut short: cancelled.

        Args:
            worker_pid: The worker that had it, if known. One the supervisor cuts short
                itself (a fail-fast) has none: a worker's pid reaches the supervisor
                only with its attempt's end, not with its start.
        """
        now = self._now()
        record = self._book.file(file_id)
        self._book.set_file(
            file_id,
            FileState.CANCELLED,
            now,
            f"attempt {len(record.attempts)} was stopped: {self._stop_cause()}",
            attempts=self._end_last(
                record.attempts,
                now,
                AttemptOutcome.CANCELLED,
                code=ErrorCode.CANCELLED,
                pid=worker_pid,
            ),
            error=FileError.of(ErrorCode.CANCELLED, now),
        )

    def _arrive(self, total: int) -> None:
        """Count the upload's files up to ``total``; in a batch that stopped (failed
        fast, or cancelled with its upload), they are cancelled at once."""
        if not self._book.files_arrived(total):
            return
        state = self._book.batch.state
        if state.terminal or state is BatchState.CANCELLING:
            self._cancel_waiting(self._now())

    def _check_tolerance(self, now: float) -> None:
        threshold = self._policy.tolerated_failures
        failed = self._book.count(FileState.FAILED)
        if self._uploading:
            # A share of a total that still grows is known at the upload's end only.
            threshold = threshold.model_copy(update={"max_failed_percent": None})
        if threshold.exceeded(failed, self._book.total):
            self._abort(
                now,
                f"{failed} of {self._book.total} files failed, more than the batch tolerates; "
                "the remaining files were cancelled.",
            )

    def _abort(self, now: float, reason: str) -> None:
        """Fail fast: stop everything still running or waiting, then fail the batch."""
        self._log.warning("batch_failing_fast", reason=reason)
        self._begin_started(now, every=True)
        for file_id in list(self._children):
            # Those no worker started are cancelled with the waiting files below.
            if self._book.file(file_id).state is FileState.RUNNING:
                self._interrupt(file_id)
        self._stop_children()
        self._cancel_waiting(now)
        self._book.set_batch(BatchState.FAILED, now, reason)
        self._log_settled(now)

    # Scheduling --------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Start what may start, and settle the batch when nothing is left to do."""
        if self._stopping:
            # Shutting down: what waits stays waiting, to be resumed by the next start.
            return
        batch = self._book.batch
        if batch.state is BatchState.RUNNING:
            while len(self._children) < self._policy.max_concurrency and (
                self._ready or self._read_waiting()
            ):
                file_id = self._ready.popleft()
                if self._waiting(file_id):
                    self._start_attempt(file_id, now)
            if self._book.unsettled == 0 and not self._uploading:
                self._book.set_batch(settled_batch_state(self._counts()), now, "")
                self._log_settled(now)
        elif batch.state is BatchState.CANCELLING and not self._children:
            self._book.set_batch(BatchState.CANCELLED, now, batch.reason)
            self._log_settled(now)

    def _log_settled(self, now: float) -> None:
        """The batch's one INFO line about its files: how many ended how, and how long."""
        batch = self._book.batch
        self._log.info(
            "batch_settled",
            state=batch.state.value,
            files=sum(self._counts().values()),
            **{state.value.lower(): count for state, count in self._counts().items() if count},
            seconds=round(now - batch.created_at, 3),
        )

    def _start_attempt(self, file_id: str, now: float) -> None:
        """Hand the (PENDING) file's next attempt to a new file actor.

        The file stays PENDING until a worker picks the attempt up (see
        :meth:`_begin_started`): handed-over attempts queue in the executor, and the
        attempt's record counts from the worker's start.
        """
        record = self._book.file(file_id)
        number = len(record.attempts) + 1
        content = self._small_blob(record.blob)
        job = AttemptJob(
            batch_id=self._book.batch.batch_id,
            file_id=file_id,
            attempt=number,
            blob_path="" if content is not None else str(self._deps.blobs.path(record.blob)),
            password=self._deps.passwords.get(self._book.batch.batch_id, file_id),
            tenant=self._book.batch.owner,
            extraction_mode=self._policy.extraction_mode,
            blob_content=content,
        )
        self._children[file_id] = FileActor.start(
            self._deps.dispatcher,
            self.actor_ref,
            executor=self._deps.executor,
            scheduler=self._deps.scheduler,
            job=job,
            timeout=self._policy.file_timeout,
            on_worker_started=self._start_notes.note,
        )
        self._handed[file_id] = (number, now)

    def _begin(self, file_id: str, attempt: int, at: float, now: float, *, announce: bool) -> None:
        """Store that a worker started the file's ``attempt`` at ``at``."""
        record = self._book.file(file_id)
        self._book.set_file(
            file_id,
            FileState.RUNNING,
            now,
            f"attempt {attempt} started",
            announce=announce,
            attempts=(*record.attempts, Attempt(number=attempt, started_at=at)),
            next_attempt_at=None,
        )

    def _begin_started(self, now: float, *, every: bool = False) -> None:
        """Store as ``RUNNING`` (each with its event) the files whose attempt a worker
        started at least ``show_running_after`` ago and that are still running, before
        a group commit; ``every`` file started, before a cancel, a fail-fast or a
        shutdown decides what to stop. Younger starts wait for a later commit, or for
        their end."""
        self._read_starts(rearm=True)
        after = self._deps.show_running_after
        for file_id, (attempt, at) in list(self._starts_read.items()):
            if not self._is_current(file_id, attempt) or self._begun(file_id):
                del self._starts_read[file_id]
            elif every or at + after <= now:
                self._begin(file_id, attempt, at, now, announce=True)
                del self._starts_read[file_id]

    def _starts_due_at(self) -> float | None:
        """When the oldest start not stored yet is due to be (``None``: none waits)."""
        self._read_starts(rearm=False)
        oldest = self._oldest_start()
        if oldest is None and self._start_notes.due:
            # Nothing waits to be stored: the next start wakes this thread again.
            self._read_starts(rearm=True)
            oldest = self._oldest_start()
        return None if oldest is None else oldest + self._deps.show_running_after

    def _oldest_start(self) -> float | None:
        oldest = None
        for file_id, (attempt, at) in self._starts_read.items():
            if (oldest is None or at < oldest) and self._is_current(file_id, attempt):
                oldest = at
        return oldest

    def _begin_ended(self, file_id: str, start: Attempt | None) -> None:
        """Before storing how a current attempt ended: record its ``start`` if it is not
        stored yet (see :meth:`_unstored_start`), with the end, in the same change and
        under the end's event."""
        if start is not None:
            self._begin(file_id, start.number, start.started_at, self._now(), announce=False)

    def _unstored_start(self, file_id: str, attempt: int) -> Attempt | None:
        """The current ``attempt``'s start, taken from the notes, if it is not stored
        yet; ``None`` if it is. Its start is when the worker picked it up; without a
        worker (the executor refused it), when it was handed over. Call it before the
        file's child is released."""
        if self._begun(file_id):
            return None
        self._read_starts(rearm=False)
        started = self._starts_read.pop(file_id, None)
        at = (
            started[1]
            if started is not None and started[0] == attempt
            else self._handed[file_id][1]
        )
        return Attempt(number=attempt, started_at=at)

    def _read_starts(self, *, rearm: bool) -> None:
        for note in self._start_notes.take(rearm=rearm):
            self._starts_read[note.file_id] = (note.attempt, note.at)

    def _release_child(self, file_id: str, attempt: int) -> None:
        """Forget the file's child if it ran ``attempt``: it reported its end."""
        handed = self._handed.get(file_id)
        if handed is None or handed[0] != attempt:
            return
        del self._handed[file_id]
        self._children.pop(file_id, None)

    def _small_blob(self, digest: str) -> bytes | None:
        """A small blob's bytes for the job to carry; ``None``: the worker reads the file.

        A database that cannot be read is logged and taken as no row: the attempt then
        fails reading the (missing) file, and its classified failure is retried like
        any other storage error, instead of the supervisor crashing.
        """
        try:
            return self._deps.blobs.content(digest)
        except OSError as exc:
            log.warning("small_blob_unreadable", blob=digest, error=str(exc))
            return None

    def _arm_backoff(self, file_id: str, attempt: int, delay: float) -> None:
        me = self.actor_ref
        self._backoffs[file_id] = self._deps.scheduler.call_later(
            delay, lambda: tell_if_alive(me, BackoffElapsed(file_id, attempt))
        )

    def _read_waiting(self) -> bool:
        """Take the next page of waiting files the book does not hold into the queue.

        Pages go by position from where the last one ended; files made to wait again
        behind it (a retry) are found by starting over once the end is reached.
        Returns whether the queue has a file now.
        """
        if self._all_pending_handed():
            return False
        from_start = self._cursor == -1
        while not self._ready:
            page = self._deps.store.file_page(
                self._book.batch.batch_id,
                states={FileState.PENDING},
                after_position=self._cursor,
                limit=self._window,
                uploading=self._uploading,
            )
            if page is None:
                return False
            for position, record in page.files:
                self._cursor = position
                if not self._book.holds(record.file_id):
                    self._book.hold(record)
                    self._ready.append(record.file_id)
                elif self._waiting(record.file_id):
                    # Held but not queued: read for a request that was then refused (a
                    # retry naming an unknown file). A second entry in the queue is
                    # harmless: the file is started once, then no longer waits.
                    self._ready.append(record.file_id)
            if len(page.files) < self._window and not self._ready:
                # The end: start over once, for files made to wait behind the cursor.
                if from_start:
                    return False
                self._cursor, from_start = -1, True
        return True

    def _waiting(self, file_id: str) -> bool:
        return (
            self._book.holds(file_id)
            and self._book.file(file_id).state is FileState.PENDING
            and file_id not in self._handed
        )

    def _all_pending_handed(self) -> bool:
        """Whether every PENDING file is handed over already (nothing to read)."""
        pending = self._book.count(FileState.PENDING)
        if pending > len(self._handed):
            return False
        handed = sum(
            1 for file_id in self._handed if self._book.file(file_id).state is FileState.PENDING
        )
        return handed == pending

    def _stored_files(self, states: set[FileState]) -> Iterator[FileRecord]:
        """Every stored file in ``states``, read a page at a time."""
        after = -1
        while True:
            page = self._deps.store.file_page(
                self._book.batch.batch_id,
                states=states,
                after_position=after,
                limit=_PAGE,
                uploading=self._uploading,
            )
            if page is None or not page.files:
                return
            for after, record in page.files:  # noqa: B007 (the last one starts the next page)
                yield record
            if len(page.files) < _PAGE:
                return

    def _backoff_over(self, file_id: str, attempt: int) -> None:
        if not self._book.holds(file_id):
            return  # cancelled and forgotten since the timer fired
        record = self._book.file(file_id)
        if record.state is not FileState.BACKOFF or len(record.attempts) != attempt:
            return
        self._backoffs.pop(file_id, None)
        now = self._now()
        running = self._book.batch.state is BatchState.RUNNING
        if running and len(self._children) < self._policy.max_concurrency:
            # Waiting for a worker, as every attempt handed over does.
            self._book.set_file(file_id, FileState.PENDING, now, "backoff over")
            self._start_attempt(file_id, now)
        else:
            # It has waited its backoff already: first in line for the next slot.
            self._book.set_file(file_id, FileState.PENDING, now, "backoff over, waiting for a slot")
            self._ready.appendleft(file_id)

    # Cancel and retry --------------------------------------------------------------

    def _cancel(self, reason: str, request_id: str = "") -> CancelStarted:
        settled: pykka.Future[BatchSummary] = pykka.ThreadingFuture()
        self._settle_waiters.append(settled)
        batch = self._book.batch
        if batch.state.terminal or batch.state is BatchState.CANCELLING:
            self._commit()
            return CancelStarted([], settled)
        now = self._now()
        self._log.info("batch_cancelling", reason=reason, request_id=request_id)
        self._book.set_batch(BatchState.CANCELLING, now, f"Cancelled ({reason}).")
        # What a worker runs is stopped as running; what waits for one, as waiting.
        self._begin_started(now, every=True)
        self._cancel_waiting(now)
        stops = self._stop_children(forget=False)
        self._advance(now)
        self._commit()
        return CancelStarted(stops, settled)

    def _cancel_waiting(self, now: float) -> None:
        """Cancel every file that is waiting for a slot or for its backoff."""
        self._drop_backoffs()
        self._ready.clear()
        reason = f"cancelled before its next attempt: {self._stop_cause()}"
        error = FileError.of(ErrorCode.CANCELLED, now)
        waiting = sum(self._book.count(state) for state in _WAITING_STATES)
        if waiting == 0:
            return
        # Nothing is committed here: a cancel (or a fail-fast) is stored whole or not at
        # all. The book's counts are exact; a held file's record in the same commit
        # overrides whatever the statement did to its row.
        if waiting <= _LISTED_CHANGES:
            held = [f.file_id for f in self._book.files() if f.state in _WAITING_STATES]
            stored = [
                self._book.hold(r).file_id
                for r in self._stored_files(set(_WAITING_STATES))
                if not self._book.holds(r.file_id)
            ]
            # Ids are numbered in submission order (f00001, ..., f100000).
            chosen = sorted({*held, *stored}, key=lambda file_id: (len(file_id), file_id))
            self._book.set_files(chosen, FileState.CANCELLED, now, reason, error=error)
            return
        for state in _WAITING_STATES:
            self._book.set_state(
                state, FileState.CANCELLED, now, reason, error=error, count=self._book.count(state)
            )

    def _retry(self, request: RetryFiles) -> None:
        batch = self._book.batch
        if batch.state is BatchState.CANCELLING:
            raise RetryRefused(
                "The batch is being cancelled; retry its files once it is cancelled.",
                reason="BATCH_CANCELLING",
            )
        if batch.bytes_released_at is not None:
            raise RetryRefused(
                "This batch ended long enough ago that its uploaded files were removed; "
                "submit them again as a new batch.",
                reason="FILES_EXPIRED",
            )
        now = self._now()
        if request.file_ids is None:
            self._retry_all(request, now)
        else:
            self._retry_files(self._retry_targets(request.file_ids), request, now)
            self._reopen(now)

    def _reopen(self, now: float) -> None:
        """A settled batch with files waiting again runs again (in the same commit)."""
        if self._book.batch.state.terminal:
            self._book.set_batch(BatchState.RUNNING, now, "")

    def _retry_files(self, chosen: list[str], request: RetryFiles, now: float) -> None:
        """Retry the held files ``chosen``, each with its own event."""
        batch_id = self._book.batch.batch_id
        vault = self._deps.passwords
        for file_id in chosen:
            if file_id in request.passwords:
                vault.put(batch_id, file_id, request.passwords[file_id])
            record = self._book.file(file_id)
            self._book.set_file(
                file_id,
                FileState.PENDING,
                now,
                f"retried by {request.requested_by or 'a client'}"
                + (" with a new password" if file_id in request.passwords else ""),
                round_failures=0,
                manual_retries=record.manual_retries + 1,
                error=None,
                encrypted_with_password=record.encrypted_with_password
                or file_id in request.passwords,
            )
            self._ready.append(file_id)
        self._log.info(
            "files_retried",
            count=len(chosen),
            requested_by=request.requested_by,
            request_id=request.request_id,
        )

    def _retry_all(self, request: RetryFiles, now: float) -> None:
        """Retry every failed and cancelled file that may be: each named in its own
        event when few, else one change by state per state, counted by the store.

        Raises:
            RetryRefused: No file can be retried; nothing changed.
        """
        cap = self._policy.max_manual_retries
        batch_id = self._book.batch.batch_id
        store = self._deps.store
        # Stored first: the store then counts and moves exactly what the book would.
        self._commit()
        if sum(self._book.count(state) for state in _RETRYABLE_STATES) <= _LISTED_CHANGES:
            chosen = [
                record.file_id
                for record in self._stored_files(set(_RETRYABLE_STATES))
                if retryable(self._book.hold(record), cap)
            ]
            if not chosen:
                raise _nothing_to_retry()
            self._retry_files(chosen, request, now)
            self._reopen(now)
            return
        movable = self._movable(cap)
        if not any(movable.values()):
            raise _nothing_to_retry()
        # Files given a password are retried one by one, so that each keeps it.
        named = [
            record.file_id
            for record in store.file_records(batch_id, request.passwords).values()
            if record.state in _RETRYABLE_STATES and retryable(self._book.hold(record), cap)
        ]
        # The statement moves them too; their own records, stored after it, say the rest.
        for file_id in named:
            movable[self._book.file(file_id).state] -= 1
        self._retry_files(named, request, now)
        reason = f"retried by {request.requested_by or 'a client'}"
        for state in sorted(_RETRYABLE_STATES):
            self._book.set_state(
                state,
                FileState.PENDING,
                now,
                reason,
                error=None,
                count=movable[state],
                max_manual_retries=cap,
            )
        self._reopen(now)
        # Stored now, in one transaction: pages of waiting files are read from the
        # store, which must show them. Waiting files anywhere again: the next page
        # starts from the first.
        self._commit()
        self._cursor = -1
        self._ready.extend(
            f.file_id
            for f in self._book.files()
            if f.state is FileState.PENDING and f.file_id not in self._ready
        )
        self._log.info(
            "files_retried",
            count=len(named) + sum(movable.values()),
            requested_by=request.requested_by,
            request_id=request.request_id,
        )

    def _movable(self, cap: int) -> dict[FileState, int]:
        """Stored files a retry of every file moves, by the state they leave."""
        batch_id = self._book.batch.batch_id
        return {
            state: self._deps.store.count_files(batch_id, state, max_manual_retries=cap)
            for state in _RETRYABLE_STATES
        }

    def _retry_targets(self, file_ids: tuple[str, ...]) -> list[str]:
        """Which files a retry covers; refuses the whole request if any file cannot."""
        cap = self._policy.max_manual_retries
        unheld = [file_id for file_id in file_ids if not self._book.holds(file_id)]
        for record in self._deps.store.file_records(self._book.batch.batch_id, unheld).values():
            self._book.hold(record)
        for file_id in dict.fromkeys(file_ids):
            if not self._book.holds(file_id):
                raise FileNotFound(f"The batch has no file with id {file_id!r}.", file_id=file_id)
            record = self._book.file(file_id)
            if record.state is FileState.SUCCEEDED:
                raise RetryRefused(
                    "This file already succeeded; its result is kept and it is not "
                    "processed again.",
                    reason="FILE_ALREADY_SUCCEEDED",
                    file_id=file_id,
                )
            if record.state not in _RETRYABLE_STATES:
                raise RetryRefused(
                    "This file is still being processed; wait until it fails or is cancelled.",
                    reason="FILE_IN_FLIGHT",
                    file_id=file_id,
                )
            if record.manual_retries >= cap:
                raise RetryRefused(
                    f"This file has been retried {record.manual_retries} times, the most "
                    "allowed. Submit it again as a new batch if it should still be processed.",
                    reason="MANUAL_RETRY_LIMIT",
                    file_id=file_id,
                )
            if password_guesses_exhausted(a.code for a in record.attempts):
                raise RetryRefused(
                    f"This file failed with a wrong password {MAX_WRONG_PASSWORDS} times, the "
                    "most allowed, so no more passwords are tried. Submit it again as a new "
                    "batch with the right password.",
                    reason="PASSWORD_ATTEMPTS_EXHAUSTED",
                    file_id=file_id,
                )
        return list(dict.fromkeys(file_ids))

    # Helpers -----------------------------------------------------------------------

    def _stop_cause(self) -> str:
        batch = self._book.batch
        if batch.state is BatchState.CANCELLING:
            return batch.reason or "the batch was cancelled"
        return "the batch failed fast"

    def _idle(self) -> bool:
        return (
            self._book.batch.state.terminal
            and not self._children
            and not self._backoffs
            and not self._uploading
        )

    def _retire(self) -> None:
        """Free this batch's thread; a retry starts a new supervisor from the store."""
        self._commit()
        self._retiring = True
        if self._manager is not None:
            tell_if_alive(
                self._manager, SupervisorRetiring(self._book.batch.batch_id, self.actor_ref)
            )
        self.stop()

    def _is_current(self, file_id: str, attempt: int) -> bool:
        """Whether a report is about the file's attempt that is running now."""
        if not self._book.holds(file_id):
            return False  # settled and forgotten: a late report
        record = self._book.file(file_id)
        if record.state is FileState.RUNNING:
            return len(record.attempts) == attempt
        # Handed over, its start not stored yet, and not moved since (a cancel).
        handed = self._handed.get(file_id)
        return handed is not None and handed[0] == attempt and record.state is FileState.PENDING

    def _begun(self, file_id: str) -> bool:
        """Whether the start of the file's attempt is stored (its child's, if it has one)."""
        return self._book.file(file_id).state is FileState.RUNNING

    def _end_last(
        self,
        attempts: tuple[Attempt, ...],
        now: float,
        outcome: AttemptOutcome,
        *,
        code: ErrorCode | None = None,
        pid: int | None = None,
        retry_delay: float | None = None,
    ) -> tuple[Attempt, ...]:
        ended = attempts[-1].ended(now, outcome, code=code, worker_pid=pid, retry_delay=retry_delay)
        return (*attempts[:-1], ended)

    def _stop_children(self, *, forget: bool = True) -> list[pykka.Future[Any]]:
        stops = [child.stop(block=False) for child in self._children.values()]
        if forget:
            self._children.clear()
            self._handed.clear()
            self._starts_read.clear()
        return stops

    def _drop_backoffs(self) -> None:
        for timer in self._backoffs.values():
            timer.cancel()
        self._backoffs.clear()

    def _counts(self) -> Mapping[FileState, int]:
        return {state: self._book.count(state) for state in FileState}

    def _commit_unless_more_coming(self) -> None:
        """Commit now, or hold the changes back while more reports wait in the inbox,
        or until ``commit_interval`` has passed since the last commit.

        A report is followed by another one already queued when workers finish faster
        than one commit (and its fsync) takes: storing them together is a group commit,
        which keeps the supervisor ahead of its workers. When the reports come one at a
        time instead (a millisecond apart from two workers on one-page files), the
        inbox runs dry after each, and a commit each cost more than the rest of the
        file's way through the supervisor: the interval groups them, at the price of
        holding an event back that long at most. Nothing held back has been shown to
        anyone: events reach watchers and replies only once stored. A crash before the
        commit loses only work that is then done again.

        The supervisor waits for that moment in its inbox (a
        :class:`~actors.orchestration.dispatch.HoldingInbox`), not by a timer: a timer
        woke the timers' thread to arm it and again to fire it, and this thread a third
        time, about four thread switches a commit. Any message ends the wait, but for
        reports while the executor has queued work for twice the wait
        (:data:`_QUEUED_FOR_QUIET_REPORTS`): those wait for the commit and are handled
        together, instead of waking this thread one by one (about one switch a file, a
        cost of its own on this machine). The files they free start a few milliseconds
        later, while the workers still run what was queued.

        With nothing else to store, starts are held for until the oldest is due
        (``show_running_after`` after its worker's start, see :meth:`_begin_started`),
        never sooner than the interval; a commit made for other changes takes every
        start due by then and leaves the rest to the next hold. With nothing to store,
        nothing is held.
        """
        interval = self._deps.commit_interval
        while True:
            changed = self._book.changed
            if changed and self._book.pending_events >= _GROUP_COMMIT_EVENTS:
                self._commit()
                continue
            if not changed and not self._starts_read and not self._start_notes.due:
                return
            if not self.actor_inbox.empty():
                return
            now = self._now()
            # At most the interval from now, should the clock have gone back.
            until = min(self._committed_at + interval, now + interval)
            if not changed:
                # Only starts to store: not before the oldest of them is due.
                due = self._starts_due_at()
                if due is None:
                    return
                until = max(until, min(due, now + self._deps.show_running_after))
            if until > now:
                break
            # Then hold for the starts this commit leaves to a later one.
            self._commit()
        wait = until - now
        # Reports may wait for the commit without waking this thread when the workers
        # have enough queued to stay busy meanwhile; then they are handled together.
        # Starts always may: the commit takes every start then due.
        quiet = (
            (AttemptFinished, WorkersStarted)
            if self._deps.executor.queued_seconds() >= _QUEUED_FOR_QUIET_REPORTS * wait
            else (WorkersStarted,)
        )
        self.actor_inbox.hold(self._deps.scheduler, until, CommitDue(), quiet)

    def _commit(self) -> None:
        try:
            self._store_changes()
        except Exception:
            # Fail now even inside an ask (where pykka would carry on): memory is
            # ahead of the store, and only a restart from the store is consistent.
            self.on_failure(*sys.exc_info())
            self.stop()
            raise
        self._committed_at = self._now()

    def _store_changes(self) -> None:
        self._begin_started(self._now())
        changes = self._book.take_changes()
        if changes:
            results = {
                f.file_id: self._results[f.file_id]
                for f in changes.files
                if f.file_id in self._results
            }
            self._deps.store.commit(changes, results)
            self._deps.passwords.forget_ended(changes.batch.batch_id, changes.files)
            for file_id in results:
                del self._results[file_id]
        # What is settled and stored is read from the store again if ever needed.
        self._book.forget_settled()
        if self._settle_waiters and self._book.batch.state.terminal:
            summary = self._book.summary()
            for waiter in self._settle_waiters:
                waiter.set(summary)
            self._settle_waiters.clear()

    def _abandon_settle_waiters(self) -> None:
        """Tell those waiting for the batch to settle that this supervisor will not."""
        for waiter in self._settle_waiters:
            waiter.set_exception(
                (pykka.ActorDeadError, pykka.ActorDeadError("the batch supervisor stopped"), None)
            )
        self._settle_waiters.clear()

    def _now(self) -> float:
        return self._deps.scheduler.now()


def _nothing_to_retry() -> RetryRefused:
    return RetryRefused(
        "No file of this batch can be retried: none failed or was cancelled, "
        "or each has used up its manual retries or its password attempts.",
        reason="NOTHING_TO_RETRY",
    )


def _give_up_reason(attempt: int, code: ErrorCode, why: GiveUpReason) -> str:
    failed = f"attempt {attempt} failed with {code.value}"
    match why:
        case GiveUpReason.NOT_RETRYABLE:
            return f"{failed}, which another attempt cannot fix"
        case GiveUpReason.ATTEMPTS_EXHAUSTED:
            return f"{failed}; no automatic attempts left"
        case GiveUpReason.RESTART_INTENSITY_EXCEEDED:
            return f"{failed}; the batch stopped restarting files"
