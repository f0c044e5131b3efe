"""Prometheus metrics: counted from the store's events and the calls, read from the pool.

Counters and histograms move as events are committed (the listener is a few dictionary
lookups, so it costs the committing supervisor nothing worth measuring) and as calls end
(:class:`RpcMetrics`, fed by :class:`server.service.calls.ObservingInterceptor`); gauges
are read when Prometheus scrapes. Off by default; ``pdfbatch serve --metrics-port PORT``
serves them on their own port.

The per-call metrics have the names and labels of grpc-prometheus
(``grpc_server_started_total``, ``grpc_server_handled_total`` by ``grpc_code``,
``grpc_server_handling_seconds``; labels ``grpc_service``, ``grpc_method``,
``grpc_type``), so that dashboards and alerts made for any gRPC server fit this one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.execution.local.pool import PoolStats
from actors.policy.model import BatchEvent, FileState, ended_attempt
from actors.storage.store import Store
from server.service.calls import CallScope, Method

__all__ = ["RpcMetrics", "ServiceMetrics"]

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_DELAY_BUCKETS = (0.1, 0.5, 1, 2, 4, 8, 16, 32, 60, 120, 300)
# Calls take from a millisecond (GetBatch) to hours (a followed watch, a large upload).
_RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
_SETTLED = frozenset({FileState.SUCCEEDED, FileState.FAILED, FileState.CANCELLED})


class _StatsSource(Protocol):
    def stats(self) -> PoolStats: ...


class ServiceMetrics:
    """Every metric of one service, in a registry of its own.

    Args:
        store: Counted for batches by state at scrape time.
        pool: Read for running workers and queue depth at scrape time; ``None`` when
            the executor has no such figures (Ray reports its own).
        watchers: Returns the number of open watches.
    """

    def __init__(
        self, store: Store, pool: _StatsSource | None, watchers: Callable[[], int]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.files = Counter(
            "pdfbatch_files_total",
            "Files that reached a final state, by outcome and error code.",
            ["outcome", "code"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "pdfbatch_attempts_total",
            "Attempts that ended, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.restarts = Counter(
            "pdfbatch_file_restarts_total",
            "Automatic restarts of files after a retryable failure, by error code.",
            ["code"],
            registry=self.registry,
        )
        self.backoff = Histogram(
            "pdfbatch_backoff_delay_seconds",
            "Delays chosen before automatic restarts.",
            buckets=_DELAY_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "pdfbatch_attempt_duration_seconds",
            "Wall-clock time of attempts, by outcome.",
            ["outcome"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Gauges(store, pool, watchers))
        self.rpcs = RpcMetrics(self.registry)

    def observe(self, event: BatchEvent) -> None:
        """Count one committed event; a store listener."""
        if event.bulk is not None and event.bulk.state in _SETTLED:
            code = event.bulk.error.code.value if event.bulk.error else ""
            self.files.labels(event.bulk.state.value.lower(), code).inc(event.bulk.count)
        file = event.file
        if file is None:
            return
        attempt = ended_attempt(event)
        if attempt is not None:
            outcome = (attempt.outcome.value if attempt.outcome else "unknown").lower()
            self.attempts.labels(outcome).inc()
            if attempt.duration is not None:
                self.duration.labels(outcome).observe(attempt.duration)
        if file.state is FileState.BACKOFF and file.error is not None:
            self.restarts.labels(file.error.code.value).inc()
            delay = file.attempts[-1].retry_delay if file.attempts else None
            if delay is not None:
                self.backoff.observe(delay)
        if file.state in _SETTLED:
            code = file.error.code.value if file.error else ""
            self.files.labels(file.state.value.lower(), code).inc()


class _Gauges(Collector):
    """Values read at scrape time: they describe now, not a history."""

    def __init__(
        self, store: Store, pool: _StatsSource | None, watchers: Callable[[], int]
    ) -> None:
        self._store = store
        self._pool = pool
        self._watchers = watchers

    def collect(self) -> Iterator[Metric]:
        batches = GaugeMetricFamily("pdfbatch_batches", "Batches by state.", labels=["state"])
        for state, count in self._store.batch_state_counts().items():
            batches.add_metric([state.value.lower()], count)
        yield batches
        yield GaugeMetricFamily(
            "pdfbatch_watchers", "Open WatchBatch streams.", value=self._watchers()
        )
        if self._pool is None:
            return
        stats = self._pool.stats()
        yield GaugeMetricFamily("pdfbatch_workers", "Worker processes alive.", value=stats.workers)
        yield GaugeMetricFamily(
            "pdfbatch_workers_busy", "Worker processes running an attempt.", value=stats.busy
        )
        yield GaugeMetricFamily(
            "pdfbatch_queue_depth", "Attempts waiting for a worker.", value=stats.queued
        )


class RpcMetrics:
    """Calls by method and status code, and their latency; a call observer.

    Args:
        registry: Where the metrics are registered.
        clock: Monotonic seconds. Default ``time.monotonic``.
    """

    def __init__(
        self, registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic
    ) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self._clock = clock
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.started_calls = Counter(
            "grpc_server_started_total",
            "Calls started on the server, by method.",
            labels,
            registry=registry,
        )
        self.handled_calls = Counter(
            "grpc_server_handled_total",
            "Calls that ended, by method and gRPC status code (OK, NOT_FOUND, ...).",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from a call's start to its end, streams included, by method.",
            labels,
            buckets=_RPC_BUCKETS,
            registry=registry,
        )

    def started(
        self, method: Method, context: grpc.ServicerContext, request: object | None
    ) -> CallScope:
        """Count the call; its scope times it and counts its end."""
        del context, request
        labels = (method.kind, method.service, method.name)
        self._child(self.started_calls, labels).inc()
        return _TimedCall(self, labels, self._clock())

    def _ended(self, labels: tuple[str, str, str], code: grpc.StatusCode, start: float) -> None:
        self._child(self.handled_calls, (*labels, code.name)).inc()
        self._child(self.handling_seconds, labels).observe(self._clock() - start)

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        # ``labels()`` takes a lock and builds a key each time: a third of a call's cost.
        # Methods and codes are few, so every child is kept.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


class _TimedCall:
    __slots__ = ("_labels", "_metrics", "_start")

    def __init__(self, metrics: RpcMetrics, labels: tuple[str, str, str], start: float) -> None:
        self._metrics = metrics
        self._labels = labels
        self._start = start

    def running(self) -> AbstractContextManager[object]:
        return contextlib.nullcontext()

    def returned(self, response: object) -> None:
        del response

    def ended(self, code: grpc.StatusCode) -> None:
        self._metrics._ended(self._labels, code, self._start)
