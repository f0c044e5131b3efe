"""Scenario 4: from a state change being stored to each of 50 watchers receiving it.

The service runs in this process, on a store the bench opened itself and subscribed to
before the service did: the listener notes ``time.monotonic()`` of every event right
after its commit, ahead of the service's own fan-out. The watchers run in a child
process (:mod:`bench.watchers`) and note when each event arrives, on the same clock.
Each batch is real work (the real extractor), so the events come at the rate the
service makes them: once for mixed PDFs, once for one-page PDFs, whose events come
several times as fast. Only events that arrive live count, not those a watcher got in
its first snapshot. The CPU time of the service's process and of the watchers' is kept
in the detail: where the time goes when the target is missed.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from actors.policy.model import BatchEvent
from actors.storage.sqlite_store import SQLiteStore
from bench.corpus import CorpusFile, generated_corpus, one_page_corpus
from bench.options import Options
from bench.report import Figure, at_most, judged, percentile
from bench.server_process import ROOT, submit
from server.client.api import Client
from server.service.app import DATABASE_NAME, Service
from server.service.settings import ServerSettings, UploadLimits

__all__ = ["watch_latency"]

MIXED_FILES = 200
ONE_PAGE_FILES = 400
WATCHERS = 50
_WAIT = 300.0


def watch_latency(options: Options) -> list[Figure]:
    """p99 from commit to arrival over every watcher, at two event rates; target 20 ms.

    Two batches, one after the other: mixed PDFs (the throughput scenario's corpus) and
    one-page PDFs, whose events come several times as fast.
    """
    workers = options.workers
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as scratch:
        root = Path(scratch)
        batches = {
            "mixed PDFs": generated_corpus(root / "mixed", options.files or MIXED_FILES),
            "one-page PDFs": one_page_corpus(root / "pages", options.files or ONE_PAGE_FILES),
        }
        largest = max(len(files) for files in batches.values())
        settings = ServerSettings(
            address="127.0.0.1:0",
            data_dir=root / "data",
            workers=workers,
            limits=UploadLimits(max_files_per_batch=max(largest, 1_000)),
            shutdown_grace=0,
        )
        stored: dict[tuple[str, int], float] = {}
        lock = threading.Lock()

        def note(event: BatchEvent) -> None:
            now = time.monotonic()
            with lock:
                stored.setdefault((event.batch_id, event.sequence), now)

        store = SQLiteStore(
            settings.data_dir / DATABASE_NAME, max_events_per_batch=settings.max_events_per_batch
        )
        unsubscribe = store.subscribe(note)
        figures = []
        try:
            service = Service(settings, store=store)
            try:
                service.start()
                for index, (what, files) in enumerate(batches.items()):
                    cpu_before = _cpu_seconds()
                    output = root / f"received-{index}.json"
                    run = _watch(service.address, files, workers, output)
                    server_cpu = _cpu_seconds() - cpu_before
                    figures.append(_figure(what, len(files), run, stored, server_cpu))
            finally:
                service.stop(grace=0)
        finally:
            unsubscribe()
            store.close()
    return figures


@dataclass(frozen=True, slots=True)
class _Run:
    batch_id: str
    received: list[list[list[float]]]
    watchers_cpu: float


def _figure(
    what: str, files: int, run: _Run, stored: dict[tuple[str, int], float], server_cpu: float
) -> Figure:
    latencies = [
        1000 * (arrived - stored[(run.batch_id, int(sequence))])
        for watcher in run.received
        for sequence, arrived in watcher
    ]
    if not latencies:
        raise RuntimeError(
            f"no event of the {what} arrived live: the batch settled before the watchers "
            "were connected; give it more files (--files)"
        )
    events = len({int(sequence) for watcher in run.received for sequence, _ in watcher})
    p50 = percentile(latencies, 0.5)
    return judged(
        "watch",
        f"watch latency p99, {WATCHERS} watchers, {files} {what}",
        percentile(latencies, 0.99),
        "ms",
        at_most(20),
        note=f"p50 {p50:.1f} ms; {events} events live, {len(latencies)} deliveries",
        detail={
            "files": files,
            "watchers": WATCHERS,
            "events": events,
            "deliveries": len(latencies),
            "p50_ms": p50,
            "p90_ms": percentile(latencies, 0.9),
            "p99_ms": percentile(latencies, 0.99),
            "max_ms": max(latencies),
            "server_cpu_seconds": server_cpu,
            "watchers_cpu_seconds": run.watchers_cpu,
        },
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _watch(address: str, files: list[CorpusFile], workers: int, output: Path) -> _Run:
    """Start the watchers, submit the batch, wait for every watcher to see it settle."""
    command = [sys.executable, "-m", "bench.watchers", address, str(WATCHERS), str(output)]
    with subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as watchers:
        assert watchers.stdin is not None
        assert watchers.stdout is not None
        try:
            if watchers.stdout.readline().strip() != "ready":
                raise RuntimeError("the watchers did not connect")
            with Client(address) as client:
                batch_id = submit(client, files, 2 * workers)
            watchers.stdin.write(batch_id + "\n")
            watchers.stdin.flush()
            if watchers.wait(_WAIT) != 0:
                raise RuntimeError("the watchers failed")
        finally:
            if watchers.poll() is None:
                watchers.kill()
    document = json.loads(output.read_text())
    return _Run(batch_id, document["received"], document["cpu_seconds"])
