"""Streams anyone may open without a token (health's watches, reflection) cannot take
the service's threads from its tenants: at most ``max_open_streams`` are open at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.gen.pdfbatch.v1 import batch_pb2 as pb
from tests.helpers.processes import eventually
from tests.helpers.server_fixtures import WAIT, RunningServer, rich_error

WATCHES = 150
REFLECTIONS = 20
OPEN_STREAMS = 8  # the default of max_open_streams


def test_open_streams_that_are_never_read_leave_the_service_to_its_tenants(
    server: RunningServer,
) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    release = threading.Event()

    def silent() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        release.wait()
        return
        yield

    request = health_pb2.HealthCheckRequest(service="")
    calls: list[grpc.Future] = [health.Watch(request, timeout=WAIT) for _ in range(WATCHES)]
    calls += [reflection.ServerReflectionInfo(silent(), timeout=WAIT) for _ in range(REFLECTIONS)]
    try:
        # Those beyond the bound end at once; the others hold their slot.
        refused_count = WATCHES + REFLECTIONS - OPEN_STREAMS
        eventually(lambda: sum(call.done() for call in calls) >= refused_count)
        refused = [rich_error(call) for call in calls if call.done()]  # type: ignore[arg-type]
        assert len(refused) == refused_count
        assert {(e.code, e.reason) for e in refused} == {
            (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_OPEN_STREAMS")
        }
        assert refused[0].retry_delay == 1.0

        # A tenant's calls still find a thread, at once.
        missing = pb.GetBatchRequest(batch_id="no-such-batch")
        with pytest.raises(grpc.RpcError) as raised:
            server.stub.GetBatch(missing, timeout=5)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        assert list(server.client.list()) == []
    finally:
        release.set()
        for call in calls:
            call.cancel()
    # Slots come back as streams end: a new watch is served.
    eventually(lambda: _served(health, request))


def _served(health: health_pb2_grpc.HealthStub, request: health_pb2.HealthCheckRequest) -> bool:
    watch = health.Watch(request, timeout=WAIT)
    try:
        return bool(next(watch).status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        watch.cancel()
