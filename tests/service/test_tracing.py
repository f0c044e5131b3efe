"""Traces of calls and attempts (the ``otel`` extra), over a real server and workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from actors.policy.model import (
    Attempt,
    AttemptOutcome,
    BatchEvent,
    BatchState,
    FileRecord,
    FileState,
)
from bench.samples import not_a_pdf, text_pdf
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from server.service.calls import Method
from server.service.otel import OtelTracing
from server.service.tracing import exporter_names, tracing_from_environment
from tests.helpers.processes import eventually
from tests.helpers.server_fixtures import WAIT, ServerFactory, upload

_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
_CALLER_SPAN = "00f067aa0ba902b7"
_RETRY_TRACE = "0af7651916cd43dd8448eb211c80319c"


def _traceparent(trace_id: str, span_id: str = _CALLER_SPAN) -> tuple[tuple[str, str], ...]:
    return (("traceparent", f"00-{trace_id}-{span_id}-01"),)


def _named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def _attempts(spans: list[ReadableSpan], trace_id: str) -> list[ReadableSpan]:
    return [
        span
        for span in _named(spans, "pdfbatch.attempt")
        if span.context is not None and f"{span.context.trace_id:032x}" == trace_id
    ]


def test_a_call_and_the_attempts_it_caused_are_one_trace(serve: ServerFactory) -> None:
    spans = InMemorySpanExporter()
    server = serve(tracing=OtelTracing([SimpleSpanProcessor(spans)]))
    batch = server.stub.SubmitBatch(
        upload(pb.BatchSpec(), [("good.pdf", text_pdf("one")), ("bad.pdf", not_a_pdf())]),
        timeout=WAIT,
        metadata=_traceparent(_TRACE),
    )
    server.settle(batch.batch_id)
    eventually(lambda: len(_attempts(list(spans.get_finished_spans()), _TRACE)) == 2)
    finished = list(spans.get_finished_spans())

    (submit,) = _named(finished, "pdfbatch.v1.BatchService/SubmitBatch")
    assert submit.kind is SpanKind.SERVER
    assert submit.context is not None
    assert submit.parent is not None
    assert f"{submit.context.trace_id:032x}" == _TRACE
    assert f"{submit.parent.span_id:016x}" == _CALLER_SPAN
    assert submit.parent.is_remote
    assert submit.attributes is not None
    assert submit.attributes["rpc.system"] == "grpc"
    assert submit.attributes["rpc.method"] == "SubmitBatch"
    assert submit.attributes["rpc.grpc.status_code"] == 0
    assert submit.attributes["pdfbatch.batch_id"] == batch.batch_id

    by_file: dict[str, Any] = {}
    for attempt in _attempts(finished, _TRACE):
        assert attempt.parent is not None
        assert attempt.parent.span_id == submit.context.span_id
        assert attempt.attributes is not None
        assert attempt.attributes["pdfbatch.batch_id"] == batch.batch_id
        assert attempt.attributes["pdfbatch.cause"] == "SubmitBatch"
        assert attempt.start_time is not None
        assert attempt.end_time is not None
        assert attempt.start_time <= attempt.end_time
        by_file[str(attempt.attributes["pdfbatch.file_id"])] = attempt
    good, bad = by_file["f00001"], by_file["f00002"]
    assert (
        good.attributes["pdfbatch.attempt.number"],
        good.attributes["pdfbatch.attempt.outcome"],
    ) == (1, "SUCCEEDED")
    assert good.attributes["pdfbatch.attempt.code"] == ""
    assert good.status.status_code is StatusCode.UNSET
    stored = server.store.load(batch.batch_id)
    assert stored is not None
    assert good.attributes["pdfbatch.worker.pid"] == stored.files[0].attempts[0].worker_pid
    assert bad.attributes["pdfbatch.attempt.outcome"] == "FAILED"
    assert bad.attributes["pdfbatch.attempt.code"] == "NOT_A_PDF"
    assert bad.status.status_code is StatusCode.ERROR

    # A retry is a new request: the attempt it causes joins the retry's trace.
    server.stub.RetryFiles(
        pb.RetryFilesRequest(batch_id=batch.batch_id, file_ids=["f00002"]),
        timeout=WAIT,
        metadata=_traceparent(_RETRY_TRACE),
    )
    server.settle(batch.batch_id)
    eventually(lambda: len(_attempts(list(spans.get_finished_spans()), _RETRY_TRACE)) == 1)
    finished = list(spans.get_finished_spans())
    (retry,) = _named(finished, "pdfbatch.v1.BatchService/RetryFiles")
    (again,) = _attempts(finished, _RETRY_TRACE)
    assert again.attributes is not None
    assert retry.context is not None
    assert again.parent is not None
    assert again.parent.span_id == retry.context.span_id
    assert (again.attributes["pdfbatch.file_id"], again.attributes["pdfbatch.attempt.number"]) == (
        "f00002",
        2,
    )
    assert again.attributes["pdfbatch.cause"] == "RetryFiles"
    assert len(_attempts(finished, _TRACE)) == 2, "the submission's trace has no retry in it"


def test_a_call_without_traceparent_starts_a_trace_and_a_refusal_is_the_callers(
    serve: ServerFactory,
) -> None:
    spans = InMemorySpanExporter()
    server = serve(tracing=OtelTracing([SimpleSpanProcessor(spans)]))
    with pytest.raises(grpc.RpcError):
        server.stub.GetBatch(pb.GetBatchRequest(batch_id="0" * 32), timeout=WAIT)
    eventually(lambda: len(spans.get_finished_spans()) == 1)
    (span,) = spans.get_finished_spans()
    assert span.name == "pdfbatch.v1.BatchService/GetBatch"
    assert span.parent is None
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    # NOT_FOUND is the caller's mistake, not the server's error.
    assert span.status.status_code is StatusCode.UNSET


def test_the_exporters_come_from_the_standard_variables() -> None:
    assert exporter_names({}) == ()
    assert exporter_names({"OTEL_TRACES_EXPORTER": "none"}) == ()
    assert exporter_names({"OTEL_TRACES_EXPORTER": "console"}) == ("console",)
    assert exporter_names({"OTEL_TRACES_EXPORTER": " OTLP , console,otlp"}) == ("otlp", "console")
    assert exporter_names({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}) == ("otlp",)
    assert exporter_names({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}) == ()
    with structlog.testing.capture_logs() as logs:
        assert exporter_names({"OTEL_TRACES_EXPORTER": "zipkin"}) == ()
    assert [entry["event"] for entry in logs] == ["tracing_exporter_unknown"]
    assert tracing_from_environment({"OTEL_TRACES_EXPORTER": "none"}) is None
    with structlog.testing.capture_logs() as logs:
        unknown_protocol = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "xml"}
        assert tracing_from_environment(unknown_protocol) is None
    assert [entry["event"] for entry in logs] == ["tracing_unavailable"]
    assert "grpc or http/protobuf" in logs[0]["error"]


def test_without_the_extra_traces_are_off_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    # What `import server.service.otel` does where OpenTelemetry is not installed.
    monkeypatch.setitem(sys.modules, "server.service.otel", None)
    with structlog.testing.capture_logs() as logs:
        assert tracing_from_environment({"OTEL_TRACES_EXPORTER": "console"}) is None
    (warning,) = logs
    assert warning["event"] == "tracing_unavailable"
    assert "pdfbatch[otel]" in warning["hint"]


def test_traces_off_load_no_opentelemetry() -> None:
    script = (
        "import sys\n"
        "from server.service.app import Service\n"
        "from server.service.tracing import tracing_from_environment\n"
        "assert tracing_from_environment({'OTEL_TRACES_EXPORTER': 'none'}) is None\n"
        "assert tracing_from_environment({}) is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=WAIT
    )
    assert loaded.stdout.strip() == "[]"


def _console_spans(text: str) -> list[dict[str, Any]]:
    """The JSON objects ConsoleSpanExporter printed, one after another."""
    decoder = json.JSONDecoder()
    spans, position = [], text.find("{")
    while position != -1:
        span, end = decoder.raw_decode(text, position)
        spans.append(span)
        position = text.find("{", end)
    return spans


def test_serve_with_the_console_exporter_prints_the_callers_trace(tmp_path: Path) -> None:
    environ = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "pdfbatch-under-test",
    }
    command = [sys.executable, "-m", "server.main", "serve", "--address", "127.0.0.1:0"]
    command += ["--data-dir", str(tmp_path / "data"), "--workers", "1"]
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on "), line
        with grpc.insecure_channel(line.removeprefix("listening on ").strip()) as channel:
            stub = batch_pb2_grpc.BatchServiceStub(channel)
            batch = stub.SubmitBatch(
                upload(pb.BatchSpec(), [("a.pdf", text_pdf("one"))]),
                timeout=WAIT,
                metadata=_traceparent(_TRACE),
            )
            list(stub.WatchBatch(pb.WatchBatchRequest(batch_id=batch.batch_id), timeout=WAIT))
        process.send_signal(signal.SIGTERM)
        printed, _ = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    assert process.returncode == 0
    ours = [s for s in _console_spans(printed) if s["context"]["trace_id"] == f"0x{_TRACE}"]
    names = sorted(span["name"] for span in ours)
    assert names == ["pdfbatch.attempt", "pdfbatch.v1.BatchService/SubmitBatch"]
    (attempt,) = (span for span in ours if span["name"] == "pdfbatch.attempt")
    assert attempt["attributes"]["pdfbatch.batch_id"] == batch.batch_id
    assert attempt["attributes"]["pdfbatch.attempt.outcome"] == "SUCCEEDED"
    assert attempt["resource"]["attributes"]["service.name"] == "pdfbatch-under-test"


class _Caller:
    """What a call observer reads of a gRPC context: the caller's metadata."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


_SUBMIT = Method("pdfbatch.v1.BatchService", "SubmitBatch", "client_stream")


def _attempt_ended(batch_id: str, started: float) -> BatchEvent:
    attempt = Attempt(1, started, started + 0.5, AttemptOutcome.SUCCEEDED, None, 4242)
    file = FileRecord("f00001", "a.pdf", "0" * 64, 1, FileState.SUCCEEDED, (attempt,))
    return BatchEvent(3, batch_id, started + 0.5, BatchState.SUCCEEDED, file, "", FileState.RUNNING)


def _created(batch_id: str, seconds: int) -> pb.Batch:
    batch = pb.Batch(batch_id=batch_id)
    batch.create_time.FromSeconds(seconds)
    return batch


def test_an_attempt_that_ends_before_its_submission_returns_waits_for_it() -> None:
    spans = InMemorySpanExporter()
    tracing = OtelTracing([SimpleSpanProcessor(spans)], clock=lambda: 100.0)
    try:
        submit = tracing.started(_SUBMIT, _Caller(), None)
        tracing.observe(_attempt_ended("b1", 101.0))
        assert spans.get_finished_spans() == ()
        submit.returned(_created("b1", 101))
        submit.ended(grpc.StatusCode.OK)
        finished = list(spans.get_finished_spans())
        (call,) = _named(finished, "pdfbatch.v1.BatchService/SubmitBatch")
        (attempt,) = _named(finished, "pdfbatch.attempt")
        assert call.context is not None
        assert attempt.parent is not None
        assert attempt.parent.span_id == call.context.span_id
        assert attempt.attributes is not None
        assert attempt.attributes["pdfbatch.worker.pid"] == 4242
        spans.clear()

        # Nothing in flight could claim it: a root at once.
        tracing.observe(_attempt_ended("resumed", 102.0))
        (root,) = spans.get_finished_spans()
        assert root.parent is None
        assert root.attributes is not None
        assert root.attributes["pdfbatch.cause"] == "unknown"
        spans.clear()

        # Parked while a submission is in flight; a root once it ended without claiming it.
        other = tracing.started(_SUBMIT, _Caller(), None)
        tracing.observe(_attempt_ended("resumed", 103.0))
        assert spans.get_finished_spans() == ()
        other.returned(_created("another", 103))
        other.ended(grpc.StatusCode.OK)
        (parked,) = _named(list(spans.get_finished_spans()), "pdfbatch.attempt")
        assert parked.parent is None
    finally:
        tracing.shutdown()


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP receiver on loopback: what a collector would get."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(service name, span name, attributes) of every span received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        attributes: dict[str, Any] = {
                            a.key: a.value.string_value or a.value.int_value
                            for a in span.attributes
                        }
                        attributes["trace_id"] = span.trace_id.hex()
                        found.append((resource["service.name"], span.name, attributes))
        return found


def test_otlp_sends_the_traces_to_the_endpoint(
    serve: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = _Collector()
    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "pdfbatch-otlp")
        monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
        tracing = tracing_from_environment()  # otlp, since an endpoint is set
        assert tracing is not None
        server = serve(tracing=tracing)
        batch = server.stub.SubmitBatch(
            upload(pb.BatchSpec(), [("a.pdf", text_pdf("one"))]),
            timeout=WAIT,
            metadata=_traceparent(_TRACE),
        )
        server.settle(batch.batch_id)
        server.service.stop()  # sends what the batch processor holds
        ours = [
            (service, name, a) for service, name, a in collector.spans() if a["trace_id"] == _TRACE
        ]
        assert sorted(name for _, name, _ in ours) == [
            "pdfbatch.attempt",
            "pdfbatch.v1.BatchService/SubmitBatch",
        ]
        assert {service for service, _, _ in ours} == {"pdfbatch-otlp"}
        (attempt,) = (a for _, name, a in ours if name == "pdfbatch.attempt")
        assert attempt["pdfbatch.batch_id"] == batch.batch_id
        assert attempt["pdfbatch.attempt.number"] == 1
    finally:
        receiver.stop(None).wait()
