"""The contract between file actors and whatever runs attempts (local pool, Ray).

An executor takes an :class:`AttemptJob`, runs it somewhere killable, and reports back
through two callbacks. It never blocks the caller for longer than it takes to hand the
job over or to kill a process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from actors.errors import ErrorCode
from actors.model import ExtractionResult

__all__ = [
    "AttemptFailure",
    "AttemptHandle",
    "AttemptJob",
    "AttemptOutcomeReport",
    "AttemptSuccess",
    "Executor",
    "OnDone",
    "OnStarted",
]


@dataclass(frozen=True, slots=True)
class AttemptJob:
    """One attempt at one file.

    Attributes:
        batch_id: The batch.
        file_id: The file.
        attempt: The attempt's number over the file's life (1-based).
        blob_path: Where the stored upload lies; the worker only reads it.
        password: Opens an encrypted file; held in memory only, never logged.
    """

    batch_id: str
    file_id: str
    attempt: int
    blob_path: str
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class AttemptSuccess:
    """The attempt produced a result."""

    result: ExtractionResult
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
