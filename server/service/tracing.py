"""Whether to trace, from the standard ``OTEL_*`` variables; nothing loaded when not.

Traces are an optional extra (``pip install 'pdfbatch[otel]'``). This module decides
from the environment alone and imports OpenTelemetry only when traces are asked for, so
a service without the extra, or with ``OTEL_TRACES_EXPORTER=none``, runs exactly as
before: no import, no interceptor, no listener. What the traces hold and how attempts
find the request that caused them is in :mod:`server.service.otel`.

The variables (as the OpenTelemetry specification names them):

- ``OTEL_TRACES_EXPORTER``: ``console`` (JSON spans on standard output), ``otlp``, or
  ``none``; several separated by commas. Unset: ``otlp`` if an OTLP endpoint is set,
  else ``none``; the service sends nothing anywhere unless told to.
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``), ``..._HEADERS``,
  ``..._PROTOCOL`` (``grpc``, the default, or ``http/protobuf``): read by the exporter.
- ``OTEL_SERVICE_NAME``: the ``service.name`` resource attribute. Default ``pdfbatch``.
- ``OTEL_SDK_DISABLED=true``: no traces, whatever else is set.
- ``OTEL_TRACES_SAMPLER`` and ``..._ARG``: read by the SDK (default: follow the caller's
  sampling decision, sample every new trace).

Asking for traces without the extra, or for an exporter this service does not ship,
logs a warning and runs without them: the ``OTEL_*`` variables are often set for every
process of a host, and a missing tracer is no reason to refuse documents.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Protocol

import structlog

from actors.policy.model import BatchEvent
from server.service.calls import CallObserver

__all__ = ["EXPORTERS", "Tracing", "exporter_names", "tracing_from_environment"]

log = structlog.get_logger(__name__)

# The exporters this service can build, by their OTEL_TRACES_EXPORTER names.
EXPORTERS = ("console", "otlp")
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class Tracing(CallObserver, Protocol):
    """Traces of calls (a call observer) and of attempts (a store listener)."""

    def observe(self, event: BatchEvent) -> None:
        """Trace the attempt that ``event`` ends, if it ends one; a store listener."""
        ...

    def shutdown(self) -> None:
        """Send every span still held, then stop; idempotent."""
        ...


def exporter_names(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The exporters ``environ`` asks for, known ones only, in order; empty for none."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    given = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not given:
        return ("otlp",) if any(environ.get(name, "").strip() for name in _ENDPOINTS) else ()
    names: list[str] = []
    for name in (part.strip() for part in given.split(",")):
        if name in ("", "none") or name in names:
            continue
        if name not in EXPORTERS:
            log.warning(
                "tracing_exporter_unknown",
                exporter=name,
                known=", ".join(EXPORTERS),
                hint="Set OTEL_TRACES_EXPORTER to console, otlp or none.",
            )
            continue
        names.append(name)
    return tuple(names)


def tracing_from_environment(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """The service's tracing as ``environ`` (default ``os.environ``) asks, or ``None``."""
    environ = os.environ if environ is None else environ
    names = exporter_names(environ)
    if not names:
        return None
    try:
        # Imported only when traces are asked for: it loads OpenTelemetry.
        otel = importlib.import_module("server.service.otel")
    except ImportError as error:
        log.warning(
            "tracing_unavailable",
            exporters=", ".join(names),
            error=str(error),
            hint="Install the extra: pip install 'pdfbatch[otel]'.",
        )
        return None
    try:
        tracing = otel.OtelTracing.from_environment(names, environ)
    except ValueError as error:
        log.warning("tracing_unavailable", exporters=", ".join(names), error=str(error))
        return None
    log.info("tracing", exporters=", ".join(names), service_name=tracing.service_name)
    started: Tracing = tracing
    return started
