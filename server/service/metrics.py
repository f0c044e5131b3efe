"""Prometheus metrics: counted from the store's events, read from the pool and the hub.

Counters and histograms move as events are committed (the listener is a few dictionary
lookups, so it costs the committing supervisor nothing worth measuring); gauges are read
when Prometheus scrapes. Off by default; ``pdfbatch serve --metrics-port PORT`` serves
them on their own port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.execution.local.pool import PoolStats
from actors.policy.model import BatchEvent, FileState
from actors.storage.store import Store

__all__ = ["ServiceMetrics"]

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_DELAY_BUCKETS = (0.1, 0.5, 1, 2, 4, 8, 16, 32, 60, 120, 300)
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

    def observe(self, event: BatchEvent) -> None:
        """Count one committed event; a store listener."""
        if event.bulk is not None and event.bulk.state in _SETTLED:
            code = event.bulk.error.code.value if event.bulk.error else ""
            self.files.labels(event.bulk.state.value.lower(), code).inc(event.bulk.count)
        file = event.file
        if file is None:
            return
        if event.previous_state is FileState.RUNNING and file.attempts:
            attempt = file.attempts[-1]
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
