"""Why the runtime refuses a request: exceptions with a stable reason for the wire.

Each refusal carries an UPPER_SNAKE ``reason`` (the wire's ``ErrorInfo.reason``) and a
message that is safe to show the caller as it is.
"""

from __future__ import annotations

__all__ = [
    "BatchNotFound",
    "FileNotFound",
    "InvalidRequest",
    "Refusal",
    "ResultNotAvailable",
    "RetryRefused",
    "ServiceClosing",
]


class Refusal(Exception):
    """A request the runtime will not carry out, and why."""

    reason = "REFUSED"

    def __init__(self, message: str, *, file_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file_id = file_id


class InvalidRequest(Refusal):
    """The request itself is malformed (no files, bad name, bad policy...)."""

    reason = "INVALID_REQUEST"

    def __init__(self, message: str, *, field: str = "", file_id: str | None = None) -> None:
        super().__init__(message, file_id=file_id)
        self.field = field


class BatchNotFound(Refusal):
    """No such batch (for this caller)."""

    reason = "BATCH_NOT_FOUND"


class FileNotFound(Refusal):
    """No such file in the batch."""

    reason = "FILE_NOT_FOUND"


class RetryRefused(Refusal):
    """A file cannot be retried now; ``reason`` says why."""

    def __init__(self, message: str, *, reason: str, file_id: str | None = None) -> None:
        super().__init__(message, file_id=file_id)
        self.reason = reason


class ResultNotAvailable(Refusal):
    """The file has no result (it has not succeeded)."""

    reason = "RESULT_NOT_AVAILABLE"


class ServiceClosing(Refusal):
    """The runtime is shutting down and takes no new work."""

    reason = "SERVICE_CLOSING"
