"""The contract between file actors and whatever runs attempts (local pool, Ray).

An executor takes an :class:`AttemptJob`, runs it somewhere killable, and reports back
through two callbacks. It never blocks the caller for longer than it takes to hand the
job over or to kill a process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import structlog

from actors.policy.catalogue import ErrorCode
from actors.policy.document import ExtractionMode
from actors.policy.model import ExtractionResult
from actors.policy.sealed import SealedResult

log = structlog.get_logger(__name__)

_A = TypeVar("_A")

__all__ = [
    "AttemptCallbacks",
    "AttemptFailure",
    "AttemptHandle",
    "AttemptJob",
    "AttemptOutcomeReport",
    "AttemptSuccess",
    "Executor",
    "Latch",
    "OnDone",
    "OnStarted",
    "file_ends",
]


@dataclass(frozen=True, slots=True)
class AttemptJob:
    """One attempt at one file.

    Attributes:
        batch_id: The batch.
        file_id: The file.
        attempt: The attempt's number over the file's life (1-based).
        blob_path: Where the stored upload lies; the worker only reads it. Empty when
            ``blob_content`` carries the bytes.
        password: Opens an encrypted file; held in memory only, never logged.
        tenant: The batch's owner: executors take turns across tenants, then across
            their batches, so that no tenant's big batch holds every worker.
        extraction_mode: How pages' text is put together, as the batch asked.
        blob_content: The stored upload itself, for a small one kept inside the blob
            store's database: the worker gets its bytes with the job, never the
            database. ``None`` for an upload stored as a file.
    """

    batch_id: str
    file_id: str
    attempt: int
    blob_path: str
    password: str | None = field(default=None, repr=False)
    tenant: str = ""
    extraction_mode: ExtractionMode = ExtractionMode.PLAIN
    blob_content: bytes | None = field(default=None, repr=False)

    def read_blob(self) -> bytes:
        """The upload's bytes: those the job carries, else the file's.

        Raises:
            OSError: The file cannot be read.
        """
        if self.blob_content is not None:
            return self.blob_content
        with open(self.blob_path, "rb") as handle:
            return handle.read()

    def blob_ends(self, size: int) -> tuple[bytes, bytes]:
        """The upload's first and last ``size`` bytes (the same bytes twice in a file
        shorter than ``size``), without reading a file's whole.

        Raises:
            OSError: The file cannot be read.
        """
        if self.blob_content is not None:
            return self.blob_content[:size], self.blob_content[-size:]
        return file_ends(self.blob_path, size)


def file_ends(path: str | os.PathLike[str], size: int) -> tuple[bytes, bytes]:
    """A file's first and last ``size`` bytes (overlapping in a file shorter than
    ``2 * size``), without reading the rest.

    Raises:
        OSError: The file cannot be read.
    """
    with open(path, "rb") as handle:
        head = handle.read(size)
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - size))
        return head, handle.read(size)


@dataclass(frozen=True, slots=True)
class AttemptSuccess:
    """The attempt produced a result.

    Attributes:
        result: Sealed by the worker that made it, as executors whose workers are other
            processes (the local pool, Ray) hand it over: the service stores it without
            decoding it. An executor that runs its processor in the service's own
            process may hand over the result as it is, to be made storable and sealed
            by the batch supervisor. Either way the supervisor checks it before it
            joins a commit.
        worker_pid: The process that ran the attempt, if one did.
    """

    result: SealedResult | ExtractionResult
    worker_pid: int | None


@dataclass(frozen=True, slots=True)
class AttemptFailure:
    """The attempt failed.

    Attributes:
        code: The catalogue code.
        worker_pid: The process that ran it, if one did.
        exception_type: The exception's class name, for the log.
        detail: The exception's text or the process's exit status, for the log only:
            it may contain paths or file content and never reaches a user.
    """

    code: ErrorCode
    worker_pid: int | None
    exception_type: str = ""
    detail: str = ""


AttemptOutcomeReport = AttemptSuccess | AttemptFailure
OnStarted = Callable[[int | None], None]
OnDone = Callable[[AttemptOutcomeReport], None]


class AttemptHandle(Protocol):
    """A submitted attempt."""

    def cancel(self, code: ErrorCode) -> None:
        """Stop the attempt, killing its process if it is running.

        Idempotent. When it returns, nothing of the attempt runs any more and its
        temporary files are gone. If the attempt had not finished, ``on_done`` receives
        an :class:`AttemptFailure` with ``code``.
        """


class Executor(Protocol):
    """Runs attempts in killable, bounded processes."""

    def submit(self, job: AttemptJob, on_started: OnStarted, on_done: OnDone) -> AttemptHandle:
        """Queue ``job``.

        ``on_started`` is called with the worker's pid when a worker picks the job up;
        ``on_done`` is called exactly once with the outcome. Both may be called from any
        thread, must return quickly, and must not raise.
        """
        ...

    def queued_seconds(self) -> float:
        """About how long the attempts queued now, and not yet running, would keep the
        workers busy; 0 when the executor cannot tell. A supervisor lets reports wait
        for its group commit only while this covers the wait."""
        ...

    def cancel_batch(self, batch_id: str, code: ErrorCode) -> None:
        """Cancel every queued and running attempt of the batch at once.

        Queued attempts are dropped before any process is killed, so that no worker
        picks up the next attempt of the batch only to be killed in turn. Returns once
        nothing of the batch runs; each attempt's ``on_done`` gets ``code``.
        """
        ...

    def close(self) -> None:
        """Stop every worker; unfinished attempts end as ``CANCELLED``."""
        ...


class Latch:
    """Set once, for good; :meth:`wait` returns once it is set.

    What :class:`threading.Event` does for an attempt's end, at a fraction of its cost:
    an Event builds a Condition, which on a plain lock costs three caught exceptions,
    and every attempt made one. This is a lock held until :meth:`set`.
    """

    __slots__ = ("_gate", "_guard", "_set")

    def __init__(self) -> None:
        self._gate = threading.Lock()
        self._gate.acquire()
        self._guard = threading.Lock()
        self._set = False

    def set(self) -> None:
        """Let every waiter through, now and later. Idempotent."""
        with self._guard:
            if self._set:
                return
            self._set = True
        self._gate.release()

    def is_set(self) -> bool:
        """Whether :meth:`set` was called."""
        return self._set

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for :meth:`set`; whether it was set."""
        if self._set:
            return True
        if self._gate.acquire(timeout=timeout):
            # Through: open the gate again for the next waiter.
            self._gate.release()
            return True
        return self._set


class AttemptCallbacks:
    """Delivers an attempt's two callbacks as the :class:`Executor` contract promises.

    ``on_started`` never follows ``on_done``; ``on_done`` runs exactly once if the
    executor delivers it once; a callback that raises is logged and the executor goes
    on. The lock is re-entrant so that a callback may cancel its own attempt.
    Executors' attempt handles extend this class.
    """

    def __init__(self, on_started: OnStarted, on_done: OnDone) -> None:
        # Set once nothing of the attempt runs any more and its temporary files are gone.
        self.finished = Latch()
        self._on_started = on_started
        self._on_done = on_done
        self._delivery = threading.RLock()
        self._done_delivered = False

    def deliver_started(self, pid: int | None) -> None:
        """Report that a worker picked the attempt up, unless it already ended."""
        with self._delivery:
            if not self._done_delivered:
                _call_safely(self._on_started, pid)

    def deliver_done(self, outcome: AttemptOutcomeReport) -> None:
        """Report the attempt's outcome, and let go of both callbacks.

        They are no longer called, and they typically hold the actor that holds this
        handle: kept, each ended attempt would be freed by the garbage collector's
        cycle search instead of as soon as its actor is dropped.
        """
        self.finished.set()
        with self._delivery:
            self._done_delivered = True
            on_done, self._on_done, self._on_started = self._on_done, _ignore, _ignore
            _call_safely(on_done, outcome)


def _ignore(_: object) -> None:
    pass


def _call_safely(callback: Callable[[_A], None], arg: _A) -> None:
    try:
        callback(arg)
    # A callback must not raise; if one does, the executor must still go on.
    except Exception:
        log.exception("executor callback raised", callback=repr(callback))
