"""OpenTelemetry traces of every call and every attempt (the ``otel`` extra).

Loaded by :mod:`server.service.tracing` only when traces are asked for; the only module
that imports OpenTelemetry (an import-linter contract says so).

A call is a ``SERVER`` span named ``pdfbatch.v1.BatchService/GetBatch`` (the semantic
conventions' ``rpc.*`` attributes and ``rpc.grpc.status_code``), the child of the
caller's span when the call carries a W3C ``traceparent``, current while the handler
runs. It starts when the call arrives and ends when the call is over, streams included.

An attempt is an ``INTERNAL`` span ``pdfbatch.attempt`` from its start to its end, made
when the store commits its end (so it costs the workers nothing, and orchestration
knows nothing of it), with the batch and file ids, the attempt's number, outcome and
error code, and the worker's pid. Its parent is the call that caused it: the
``SubmitBatch`` that created the batch, or a later ``RetryFiles`` that named the file
(or all failed files), whichever is the latest to start before the attempt did; the
attribute ``pdfbatch.cause`` names it. An attempt whose cause this process never saw
(a batch resumed after a restart) is the root of its own trace, with
``pdfbatch.cause`` ``unknown``.

A fast attempt can end before its ``SubmitBatch`` has returned the batch's id: such
attempts wait (at most ``max_parked`` of them) until the submissions in flight have
ended, then go out as the submission's children, or as roots if none claimed them.
Causes are kept in memory for the last ``max_batches`` batches.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from actors.policy.model import Attempt, AttemptOutcome, BatchEvent, ended_attempt
from server.service.calls import CallScope, Method

__all__ = ["DEFAULT_SERVICE_NAME", "OtelTracing"]

DEFAULT_SERVICE_NAME = "pdfbatch"
_TRACER = "pdfbatch"
# The server-side codes the semantic conventions count as the server's error; the
# others (NOT_FOUND, INVALID_ARGUMENT, ...) are the caller's and leave the span unset.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
# Causes kept per batch: a batch retried more often than this has its oldest forgotten.
_CAUSES_PER_BATCH = 16


@dataclass(frozen=True, slots=True)
class _Cause:
    """A call after whose start the attempts of some files of a batch are its doing."""

    since: float
    file_ids: frozenset[str] | None
    action: str
    context: SpanContext


@dataclass(frozen=True, slots=True)
class _Ended:
    """An attempt that ended, waiting to be traced."""

    batch_id: str
    file_id: str
    attempt: Attempt


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(service_name=_service_name(environ))
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    if protocol != "grpc":
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use grpc or http/protobuf."
        )
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter as GrpcExporter,
    )

    return GrpcExporter()


def _service_name(environ: Mapping[str, str]) -> str:
    return environ.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE_NAME


class OtelTracing:
    """Spans of calls and attempts, sent through ``processors``.

    Args:
        processors: Where finished spans go (a batch processor per exporter in the
            service; a simple one over an in-memory exporter in tests).
        service_name: The ``service.name`` resource attribute.
        clock: Wall-clock seconds, the attempts' clock. Default ``time.time``.
        max_batches: Batches whose causing calls are remembered. Default 10,000.
        max_parked: Attempts held while their submission is in flight. Default 10,000.
    """

    def __init__(
        self,
        processors: Sequence[SpanProcessor],
        *,
        service_name: str = DEFAULT_SERVICE_NAME,
        clock: Callable[[], float] = time.time,
        max_batches: int = 10_000,
        max_parked: int = 10_000,
    ) -> None:
        self.service_name = service_name
        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        for processor in processors:
            self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer(_TRACER)
        self._propagator = TraceContextTextMapPropagator()
        self._clock = clock
        self._max_batches = max_batches
        self._max_parked = max_parked
        self._lock = threading.Lock()
        self._causes: OrderedDict[str, list[_Cause]] = OrderedDict()
        self._submissions = 0
        self._parked: list[_Ended] = []
        self._closed = False

    @classmethod
    def from_environment(cls, names: Sequence[str], environ: Mapping[str, str]) -> OtelTracing:
        """Batch processors over the exporters ``names``; details from ``environ``."""
        return cls(
            [BatchSpanProcessor(_exporter(name, environ)) for name in names],
            service_name=_service_name(environ),
        )

    # Calls ------------------------------------------------------------------------

    def started(
        self, method: Method, context: grpc.ServicerContext, request: object | None
    ) -> CallScope:
        """Open the call's span, the child of the caller's ``traceparent`` if any."""
        carrier = {
            key: value
            for key, value in context.invocation_metadata() or ()
            if isinstance(value, str)
        }
        span = self._tracer.start_span(
            method.full_name,
            context=self._propagator.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": method.service,
                "rpc.method": method.name,
            },
        )
        return _CallSpan(self, span, method, request, self._clock())

    def _add_cause(self, batch_id: str, cause: _Cause) -> None:
        with self._lock:
            causes = self._causes.setdefault(batch_id, [])
            self._causes.move_to_end(batch_id)
            causes.append(cause)
            del causes[:-_CAUSES_PER_BATCH]
            while len(self._causes) > self._max_batches:
                self._causes.popitem(last=False)

    def _drop_cause(self, batch_id: str, cause: _Cause) -> None:
        with self._lock:
            causes = self._causes.get(batch_id, [])
            if cause in causes:
                causes.remove(cause)

    def _submission_started(self) -> None:
        with self._lock:
            self._submissions += 1

    def _submission_ended(self) -> None:
        """Trace the parked attempts whose cause is known now, or that none can claim."""
        with self._lock:
            self._submissions -= 1
            ready = [(ended, self._cause_of(ended)) for ended in self._parked]
            if self._submissions:
                ready = [(ended, cause) for ended, cause in ready if cause is not None]
            done = {id(ended) for ended, _ in ready}
            self._parked = [ended for ended in self._parked if id(ended) not in done]
        for ended, cause in ready:
            self._trace_attempt(ended, cause)

    # Attempts ---------------------------------------------------------------------

    def observe(self, event: BatchEvent) -> None:
        """Trace the attempt that ``event`` ends, if it ends one; a store listener."""
        attempt = ended_attempt(event)
        if event.file is None or attempt is None or attempt.ended_at is None:
            return
        ended = _Ended(event.batch_id, event.file.file_id, attempt)
        with self._lock:
            cause = self._cause_of(ended)
            if cause is None and self._submissions and len(self._parked) < self._max_parked:
                self._parked.append(ended)
                return
        self._trace_attempt(ended, cause)

    def _cause_of(self, ended: _Ended) -> _Cause | None:
        """The latest call to start before the attempt that may have caused it."""
        for cause in reversed(self._causes.get(ended.batch_id, ())):
            if cause.since <= ended.attempt.started_at and (
                cause.file_ids is None or ended.file_id in cause.file_ids
            ):
                return cause
        return None

    def _trace_attempt(self, ended: _Ended, cause: _Cause | None) -> None:
        attempt = ended.attempt
        outcome = attempt.outcome or AttemptOutcome.INTERRUPTED
        attributes: dict[str, Any] = {
            "pdfbatch.batch_id": ended.batch_id,
            "pdfbatch.file_id": ended.file_id,
            "pdfbatch.attempt.number": attempt.number,
            "pdfbatch.attempt.outcome": outcome.value,
            "pdfbatch.attempt.code": attempt.code.value if attempt.code else "",
            "pdfbatch.cause": cause.action if cause else "unknown",
        }
        if attempt.worker_pid is not None:
            attributes["pdfbatch.worker.pid"] = attempt.worker_pid
        parent = (
            trace.set_span_in_context(NonRecordingSpan(cause.context))
            if cause
            else trace.set_span_in_context(trace.INVALID_SPAN)
        )
        span = self._tracer.start_span(
            "pdfbatch.attempt",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_nanoseconds(attempt.started_at),
        )
        if outcome is AttemptOutcome.FAILED:
            span.set_status(Status(StatusCode.ERROR, attributes["pdfbatch.attempt.code"]))
        span.end(end_time=_nanoseconds(attempt.ended_at or attempt.started_at))

    def shutdown(self) -> None:
        """Trace the attempts still parked, send every span, stop; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            parked, self._parked = self._parked, []
        for ended in parked:
            self._trace_attempt(ended, None)
        self._provider.shutdown()


def _nanoseconds(seconds: float) -> int:
    return round(seconds * 1e9)


class _CallSpan:
    """One call's span, and what the call says of the attempts it causes."""

    def __init__(
        self,
        tracing: OtelTracing,
        span: trace.Span,
        method: Method,
        request: object | None,
        start: float,
    ) -> None:
        self._tracing = tracing
        self._span = span
        self._start = start
        self._submission = method.name == "SubmitBatch"
        self._created: str | None = None
        self._retry: tuple[str, _Cause] | None = None
        if self._submission:
            tracing._submission_started()
        elif method.name == "RetryFiles" and request is not None:
            # Known before the attempts it causes start: a cause from the start,
            # forgotten again if the retry is refused.
            batch_id = str(getattr(request, "batch_id", ""))
            file_ids = frozenset(getattr(request, "file_ids", ())) or None
            cause = _Cause(start, file_ids, method.name, span.get_span_context())
            self._retry = (batch_id, cause)
            tracing._add_cause(batch_id, cause)

    def running(self) -> AbstractContextManager[object]:
        return trace.use_span(
            self._span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )

    def returned(self, response: object) -> None:
        if not self._submission:
            return
        batch_id = str(getattr(response, "batch_id", ""))
        created = getattr(response, "create_time", None)
        # An idempotent resubmission returns an older batch: it caused nothing.
        if batch_id and created is not None and created.ToNanoseconds() / 1e9 >= self._start:
            self._created = batch_id
            self._span.set_attribute("pdfbatch.batch_id", batch_id)

    def ended(self, code: grpc.StatusCode) -> None:
        span = self._span
        try:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_ERRORS:
                span.set_status(Status(StatusCode.ERROR, code.name))
            if self._retry is not None:
                batch_id, cause = self._retry
                span.set_attribute("pdfbatch.batch_id", batch_id)
                if code is not grpc.StatusCode.OK:
                    self._tracing._drop_cause(batch_id, cause)
            if self._submission:
                if code is grpc.StatusCode.OK and self._created:
                    cause = _Cause(self._start, None, "SubmitBatch", span.get_span_context())
                    self._tracing._add_cause(self._created, cause)
                self._tracing._submission_ended()
        finally:
            span.end()
