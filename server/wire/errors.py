"""Refusals on the wire: status codes and the rich error model (``google.rpc.Status``).

Every refused call gets a status code, an ``ErrorInfo`` (stable UPPER_SNAKE ``reason``,
domain ``pdfbatch.dev``), a ``LocalizedMessage`` a person can act on, ``BadRequest`` field
violations for bad input and ``RetryInfo`` where waiting helps. A failure nobody expected
is logged in full and leaves as ``INTERNAL`` with a fixed message: never a trace, a server
path or ``UNKNOWN``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import pykka
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from actors.policy.catalogue import StorageUnavailableError, user_text
from actors.policy.refusals import InvalidRequest, Refusal, ServiceClosing

__all__ = [
    "DOMAIN",
    "FieldViolation",
    "WireError",
    "abort",
    "service_closing",
    "status_of",
    "wire_error",
]

log = structlog.get_logger(__name__)

DOMAIN = "pdfbatch.dev"
LOCALE = "en-US"
# How long a caller refused for a passing reason is told to wait.
_SHORT_WAIT = 1.0

_INTERNAL_MESSAGE = (
    "An unexpected error occurred in the service. It has been logged for the operators; "
    "try again later."
)
_STORAGE_MESSAGE = (
    "The service cannot read or write its storage right now; nothing was changed. "
    "Try again shortly."
)
# Long enough for a locked database or a full disk to have a chance to clear.
_STORAGE_WAIT = 5.0
# What a refusal may say, in UTF-8 bytes. gRPC clients refuse response metadata over
# 8 KiB by default, and a refusal travels twice: its message percent-encoded in
# ``grpc-message`` (up to 3 characters a byte) and the Status base64-encoded in
# ``grpc-status-details-bin``, where the message is twice again (Status, LocalizedMessage).
# Caller-supplied text (ids, label keys) must not push a refusal past that limit, or the
# caller gets RESOURCE_EXHAUSTED from its own library instead of the refusal.
_MAX_MESSAGE_BYTES = 400
_MAX_METADATA_BYTES = 128
_MAX_FIELD_BYTES = 128
_MAX_DESCRIPTION_BYTES = 200
# The serialized Status; violations that do not fit are left out.
_MAX_STATUS_BYTES = 3072

# AIP-193: ErrorInfo metadata keys are lowerCamelCase, as the proto's JSON names are.
_METADATA_KEY = re.compile(r"[a-z][a-zA-Z0-9]*")

_TIMED_OUT_MESSAGE = (
    "The service did not finish the request in time; it may still complete. "
    "Check the batch, then try again."
)


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path (``spec.policy.retry.max_attempts``) and why."""

    field: str
    description: str


class WireError(Exception):
    """A refusal decided at the edge (upload limits, malformed requests, watch history).

    Args:
        code: The status code.
        reason: Stable UPPER_SNAKE reason for ``ErrorInfo``.
        message: Safe to show the caller as it is.
        violations: Bad fields, sent as ``BadRequest``.
        retry_after: Seconds after which trying again may help, sent as ``RetryInfo``.
        metadata: Extra ``ErrorInfo`` metadata (ids, limits), keyed in lowerCamelCase
            (``fileId``, ``maxActiveBatches``) as AIP-193 asks.

    Raises:
        ValueError: A metadata key is not lowerCamelCase: a bug at the raise site.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        *,
        violations: Sequence[FieldViolation] = (),
        retry_after: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        for key in metadata or {}:
            if not _METADATA_KEY.fullmatch(key):
                raise ValueError(f"ErrorInfo metadata key {key!r} is not lowerCamelCase")
        # Refusals may quote the caller's own ids: one line, capped, like every message.
        message = _clip(user_text(message), _MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.violations = tuple(
            FieldViolation(
                _clip(user_text(v.field), _MAX_FIELD_BYTES),
                _clip(user_text(v.description), _MAX_DESCRIPTION_BYTES),
            )
            for v in violations
        )
        self.retry_after = retry_after
        self.metadata = {
            key: _clip(user_text(value), _MAX_METADATA_BYTES)
            for key, value in (metadata or {}).items()
        }


def _clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, on a character, with an ellipsis."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    ellipsis = "\u2026"
    kept = encoded[: max_bytes - len(ellipsis.encode())].decode(errors="ignore")
    return kept.rstrip() + ellipsis


_NOT_FOUND = grpc.StatusCode.NOT_FOUND
_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
# The runtime's refusals by reason; anything else a refusal says is a failed precondition.
_REFUSALS: Mapping[str, tuple[grpc.StatusCode, float | None]] = {
    "INVALID_REQUEST": (grpc.StatusCode.INVALID_ARGUMENT, None),
    "BATCH_NOT_FOUND": (_NOT_FOUND, None),
    "FILE_NOT_FOUND": (_NOT_FOUND, None),
    "RESULT_NOT_AVAILABLE": (_PRECONDITION, None),
    "SERVICE_CLOSING": (grpc.StatusCode.UNAVAILABLE, _SHORT_WAIT),
    "FILE_ALREADY_SUCCEEDED": (_PRECONDITION, None),
    "FILE_IN_FLIGHT": (_PRECONDITION, None),
    "NOTHING_TO_RETRY": (_PRECONDITION, None),
    "MANUAL_RETRY_LIMIT": (_PRECONDITION, None),
    "BATCH_CANCELLING": (_PRECONDITION, _SHORT_WAIT),
    "FILES_EXPIRED": (_PRECONDITION, None),
}


def _from_refusal(refusal: Refusal) -> WireError:
    code, retry_after = _REFUSALS.get(refusal.reason, (_PRECONDITION, None))
    violations: list[FieldViolation] = []
    if isinstance(refusal, InvalidRequest) and refusal.field:
        violations.append(FieldViolation(refusal.field, refusal.message))
    metadata = {"fileId": refusal.file_id} if refusal.file_id else {}
    return WireError(
        code,
        refusal.reason,
        refusal.message,
        violations=violations,
        retry_after=retry_after,
        metadata=metadata,
    )


def _classify(exc: BaseException) -> WireError:
    match exc:
        case WireError():
            return exc
        case Refusal():
            return _from_refusal(exc)
        case StorageUnavailableError():
            log.warning("storage_unavailable", exc_info=exc)
            return WireError(
                grpc.StatusCode.UNAVAILABLE,
                "STORAGE_UNAVAILABLE",
                _STORAGE_MESSAGE,
                retry_after=_STORAGE_WAIT,
            )
        case pykka.Timeout():
            # The runtime waited its stop timeout for attempts to stop (cancel, delete).
            log.warning("runtime_wait_timed_out", exc_info=exc)
            return WireError(
                grpc.StatusCode.UNAVAILABLE,
                "OPERATION_TIMED_OUT",
                _TIMED_OUT_MESSAGE,
                retry_after=_SHORT_WAIT,
            )
        case _:
            log.error("unexpected_error", exc_info=exc)
            return WireError(grpc.StatusCode.INTERNAL, "INTERNAL_ERROR", _INTERNAL_MESSAGE)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def wire_error(exc: BaseException) -> WireError:
    """What the caller is told of ``exc``: code, reason, message (logs unexpected ones)."""
    return _classify(exc)


def status_of(exc: BaseException) -> Any:
    """The ``google.rpc.Status`` a caller gets for ``exc``.

    Refusals and :class:`WireError` keep their reason and message; anything else is
    logged with its traceback and becomes ``INTERNAL`` with a fixed message.
    """
    error = _classify(exc)
    details = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata),
        error_details_pb2.LocalizedMessage(locale=LOCALE, message=error.message),
    ]
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(round(error.retry_after * 1000))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(
        code=error.code.value[0],
        message=error.message,
        details=[_pack(detail) for detail in details],
    )
    if error.violations:
        _add_violations(status, error.violations)
    return status


def _add_violations(status: Any, violations: Sequence[FieldViolation]) -> None:
    """Add a ``BadRequest`` with as many of ``violations`` as fit the size limit."""
    room = _MAX_STATUS_BYTES - status.ByteSize()
    bad = error_details_pb2.BadRequest()
    for violation in violations:
        bad.field_violations.add(field=violation.field, description=violation.description)
        # Packing adds the type URL and a few bytes of framing.
        if bad.ByteSize() + 64 > room:
            del bad.field_violations[-1]
            break
    if bad.field_violations:
        status.details.append(_pack(bad))


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """End the call with the status for ``exc``; never returns."""
    context.abort_with_status(rpc_status.to_status(status_of(exc)))


def service_closing() -> ServiceClosing:
    """The refusal for calls that arrive while the service shuts down."""
    return ServiceClosing("The service is shutting down; try again shortly.")
