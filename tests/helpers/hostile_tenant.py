"""A tenant who uses the API as allowed, or nearly, to deny everyone else.

Shared by the security tests, the reliability suite's "hostile tenant" attack and
``bench/tenants.py``: stalled uploads, watches held open, streams opened without a
token and never read. Each holds its calls until :meth:`close`, which cancels them
and waits until every one has ended on the client's side.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from tests.helpers.server_fixtures import rich_error

__all__ = ["HeldCalls", "held_watches", "open_streams", "stalled_upload", "stalled_uploads"]

# Longer than any test holds a call: the calls end when closed, or by the server.
HOLD_SECONDS = 600.0
# A stalled upload declares this much and sends half of it.
STALLED_FILE_BYTES = 64 * 1024


def stalled_upload(release: threading.Event) -> Iterator[pb.SubmitBatchRequest]:
    """A spec, a header and half of the file's bytes; then nothing until ``release``."""
    yield pb.SubmitBatchRequest(spec=pb.BatchSpec(display_name="stalled"))
    yield pb.SubmitBatchRequest(
        file=pb.FileHeader(name="stalled.pdf", size_bytes=STALLED_FILE_BYTES)
    )
    yield pb.SubmitBatchRequest(chunk=b"%PDF-" + b"x" * (STALLED_FILE_BYTES // 2 - 5))
    release.wait(HOLD_SECONDS)


@dataclass
class HeldCalls:
    """Calls a hostile caller holds open; those the server refused end at once."""

    release: threading.Event = field(default_factory=threading.Event)
    # grpc futures and stream calls: both have done(), cancel() and exception()/code().
    calls: list[Any] = field(default_factory=list)

    def done(self) -> list[Any]:
        """The calls that have ended (refused, timed out by the server...)."""
        return [call for call in self.calls if call.done()]

    def held(self) -> int:
        """How many calls are still open."""
        return len(self.calls) - len(self.done())

    def reasons(self) -> list[tuple[grpc.StatusCode, str]]:
        """The status and reason of each call that ended."""
        out = []
        for call in self.done():
            decoded = rich_error(call.exception())
            out.append((decoded.code, decoded.reason))
        return out

    def close(self) -> None:
        """Let every stalled generator end and cancel every call."""
        self.release.set()
        for call in self.calls:
            call.cancel()


def stalled_uploads(stub: batch_pb2_grpc.BatchServiceStub, count: int) -> HeldCalls:
    """``count`` uploads that stall after a header and half a file."""
    held = HeldCalls()
    for _ in range(count):
        held.calls.append(
            stub.SubmitBatch.future(stalled_upload(held.release), timeout=HOLD_SECONDS)
        )
    return held


def held_watches(stub: batch_pb2_grpc.BatchServiceStub, batch_id: str, count: int) -> HeldCalls:
    """``count`` ``WatchBatch(follow=true)`` streams on ``batch_id``, never read."""
    held = HeldCalls()
    request = pb.WatchBatchRequest(batch_id=batch_id, follow=True)
    for _ in range(count):
        held.calls.append(stub.WatchBatch(request, timeout=HOLD_SECONDS))
    return held


def open_streams(channel: grpc.Channel, count: int) -> HeldCalls:
    """``count`` health watches and reflection streams, half each, without a token."""
    held = HeldCalls()
    health = health_pb2_grpc.HealthStub(channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    def silent() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        held.release.wait(HOLD_SECONDS)
        return
        yield

    for index in range(count):
        if index % 2:
            request = health_pb2.HealthCheckRequest(service="")
            held.calls.append(health.Watch(request, timeout=HOLD_SECONDS))
        else:
            held.calls.append(reflection.ServerReflectionInfo(silent(), timeout=HOLD_SECONDS))
    return held
