"""A client that knows only the server's address: everything else from reflection.

It uses none of this project's generated code: message classes are built from the
descriptors the server publishes, as grpcurl or any reflection-based tool would.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.helpers.server_fixtures import WAIT, RunningServer, make_pdf


def _method(
    channel: grpc.Channel, pool: descriptor_pool.DescriptorPool, name: str
) -> tuple[Any, Any, str]:
    service = pool.FindServiceByName("pdfbatch.v1.BatchService")
    method = service.methods_by_name[name]
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)
    return request, response, f"/{service.full_name}/{name}"


def test_a_reflection_client_lists_services_submits_and_watches(server: RunningServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) >= {
            "pdfbatch.v1.BatchService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        pool = descriptor_pool.DescriptorPool(database)
        assert pool.FindFileContainingSymbol("pdfbatch.v1.Batch").name == (
            "pdfbatch/v1/batch.proto"
        )

        submit_request, batch_class, submit = _method(channel, pool, "SubmitBatch")
        pdf = make_pdf("via reflection")
        messages = [
            submit_request(spec={"display_name": "reflected"}),
            submit_request(file={"name": "r.pdf", "size_bytes": len(pdf)}),
            submit_request(chunk=pdf),
            submit_request(end={"file_count": 1}),
        ]
        call = channel.stream_unary(
            submit,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=batch_class.FromString,
        )
        batch = call(iter(messages), timeout=WAIT)
        assert batch.display_name == "reflected"

        watch_request, event_class, watch = _method(channel, pool, "WatchBatch")
        stream = channel.unary_stream(
            watch,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=event_class.FromString,
        )
        events = list(stream(watch_request(batch_id=batch.batch_id), timeout=WAIT))
        states = pool.FindEnumTypeByName("pdfbatch.v1.BatchState").values_by_number
        assert states[events[-1].batch_state].name == "BATCH_STATE_SUCCEEDED"

        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="pdfbatch.v1.BatchService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
