"""Messages between the actors: immutable values, one class per message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.execution.contract import AttemptOutcomeReport

__all__ = [
    "AttemptFinished",
    "BackoffElapsed",
    "CancelBatch",
    "CancelStarted",
    "CommitDue",
    "DeadlineReached",
    "FileActorStopped",
    "FilesArrived",
    "GetView",
    "RetryFiles",
    "StopSupervisor",
    "SupervisorFailed",
    "SupervisorRetiring",
    "UploadComplete",
    "WorkerDone",
    "WorkersStarted",
]


# File actor -> batch supervisor (tell). That a worker started the attempt is no message
# of its own: the file actor arms its deadline then and notes the start for the
# supervisor (WorkersStarted wakes it once for many), and the pid comes with the outcome.
@dataclass(frozen=True, slots=True)
class AttemptFinished:
    """The attempt ended with ``report``."""

    file_id: str
    attempt: int
    report: AttemptOutcomeReport


@dataclass(frozen=True, slots=True)
class FileActorStopped:
    """The file actor stopped before the attempt ended (a cancel, a shutdown, its own
    failure), and its worker no longer runs it. Not sent after :class:`AttemptFinished`.

    Attributes:
        worker_pid: The worker that had started the attempt, if one had.
    """

    file_id: str
    attempt: int
    worker_pid: int | None = None


# Timer -> batch supervisor (tell).
@dataclass(frozen=True, slots=True)
class BackoffElapsed:
    """The backoff after ``attempt`` of the file is over."""

    file_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class WorkersStarted:
    """Workers picked up attempts since the last group commit: the next commit stores
    those still running (one message for many starts, see
    :class:`~actors.orchestration.starts.StartNotes`)."""


@dataclass(frozen=True, slots=True)
class CommitDue:
    """The changes held back since the last group commit are to be stored now
    (``commit_interval``)."""


# Callers -> batch supervisor (ask).
@dataclass(frozen=True, slots=True)
class GetView:
    """Reply with the batch and its counts, as stored now
    (:class:`~actors.policy.model.BatchSummary`)."""


@dataclass(frozen=True, slots=True)
class CancelBatch:
    """Cancel the batch; the reply is a :class:`CancelStarted`.

    ``request_id`` names the request in the supervisor's log lines: pykka's threads do
    not inherit the caller's context variables, so it travels in the message.
    """

    reason: str
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class CancelStarted:
    """The reply to :class:`CancelBatch`.

    Attributes:
        stops: The futures of the children's stops.
        settled: Gets the batch and its counts as stored once it is terminal (at once if it was); an
            ``ActorDeadError`` if the supervisor died first.
    """

    stops: list[Any]
    settled: Any


@dataclass(frozen=True, slots=True)
class RetryFiles:
    """Retry ``file_ids`` (all failed and cancelled files when ``None``)."""

    file_ids: tuple[str, ...] | None
    passwords: Mapping[str, str] = field(default_factory=dict, repr=False)
    requested_by: str = ""
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class FilesArrived:
    """The batch's upload stored files: it has ``total`` files now (those not counted
    yet wait as PENDING). Asked, so that their counts are committed before the upload
    goes on; the total, not the number added, so that a supervisor restarted meanwhile
    from the store counts the files it did not commit."""

    total: int


@dataclass(frozen=True, slots=True)
class UploadComplete:
    """The batch's upload ended and the batch, of ``total`` files, is visible: it may
    settle from now on. Asked; the reply is ``None``."""

    total: int


@dataclass(frozen=True, slots=True)
class StopSupervisor:
    """Stop the children (leaving their files to resume later); reply with their stops."""


# Batch supervisor -> manager (tell).
@dataclass(frozen=True, slots=True)
class SupervisorFailed:
    """The batch supervisor died of an exception."""

    batch_id: str
    exception_type: str


@dataclass(frozen=True, slots=True)
class SupervisorRetiring:
    """The batch settled and nothing of it runs: its supervisor is stopping to free its
    thread. The manager starts a new one from the store if the batch is retried."""

    batch_id: str
    supervisor: Any = field(compare=False)


# Executor callback -> file actor (tell).
@dataclass(frozen=True, slots=True)
class WorkerDone:
    """The executor reported the outcome."""

    report: AttemptOutcomeReport


# Timer -> file actor (tell).
@dataclass(frozen=True, slots=True)
class DeadlineReached:
    """The attempt ran out of time."""
