"""Each call's identity: a request id, bound to the log and recorded in the audit trail.

The id comes from the caller's ``x-request-id`` metadata when it is a sane token, else
it is made here; it is sent back in the initial metadata, bound to every log line of the
call (structlog context variables: every step of a call runs in the same copy of them,
see :mod:`server.service.serving`) and written, with who asked what about which batch
and how it ended, to the store's append-only audit (:func:`end_request`, which names
the call itself, for a watch whose end is logged from another thread).
"""

from __future__ import annotations

import re
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import grpc
import structlog

from actors.policy.catalogue import StorageUnavailableError
from actors.policy.model import AuditEntry
from actors.storage.store import Store

__all__ = ["RequestContext", "begin_request", "bound", "end_request"]

log = structlog.get_logger(__name__)

_HEADER = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass
class RequestContext:
    """What is known of one call while it runs; the wrapper fills in the outcome."""

    request_id: str
    caller: str
    action: str
    batch_id: str = ""
    detail: str = ""
    outcome: str = "OK"
    started: float = field(default_factory=time.monotonic)


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == _HEADER and isinstance(value, str) and _SANE.fullmatch(value):
            return value
    return uuid.uuid4().hex


def begin_request(context: grpc.ServicerContext, action: str, caller: str) -> RequestContext:
    """The call's id and caller; the id goes back to the caller in the initial metadata."""
    call = RequestContext(_request_id(context), caller, action)
    context.send_initial_metadata(((_HEADER, call.request_id),))
    return call


def end_request(store: Store, call: RequestContext) -> None:
    """Log how the call ended and audit it.

    An audit entry that cannot be stored (the store is down) is logged and does not
    fail the call: the call's own outcome is what the caller must get.
    """
    log.info(
        "rpc",
        request_id=call.request_id,
        caller=call.caller,
        rpc=call.action,
        batch_id=call.batch_id,
        outcome=call.outcome,
        duration=time.monotonic() - call.started,
    )
    entry = AuditEntry(
        at=time.time(),
        request_id=call.request_id,
        caller=call.caller,
        action=call.action,
        batch_id=call.batch_id,
        outcome=call.outcome,
        detail=call.detail,
    )
    try:
        store.append_audit(entry)
    except StorageUnavailableError:
        log.exception("audit_not_stored", request_id=call.request_id)


def bound(call: RequestContext) -> AbstractContextManager[None]:
    """The call's id, caller and method bound to every log line written inside."""
    return structlog.contextvars.bound_contextvars(
        request_id=call.request_id, caller=call.caller, rpc=call.action
    )
