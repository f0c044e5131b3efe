"""Scenario 4: from a state change to each of 50 watchers receiving it.

The service runs in this process; the watchers run in two child processes of 25
streams each (:mod:`bench.watchers`), one connection per stream. A watcher's latency
for an event is the wall-clock time the event arrived minus its ``event_time`` (one
clock for every process of the machine), so it counts the commit, the fan-out and the
sending. Only events after a stream's snapshot count. The bench also subscribes to the
store ahead of the service and notes when each event was committed, so that the
latency splits into deciding and committing (``event_time`` to commit) and fanning out
and sending (commit to arrival).

The batch is 1,000 one-page PDFs through the real extractor, whose events come as fast
as the service makes them. Its files wait in the workers until every watcher has its
snapshot (:data:`bench.processors.GATED`), so that every event is live whatever the
batch's size and the machine's speed. It runs twice per repeat, side by side on the
same service: with one event per message (``max_events_per_message`` 1, what a client
that does not ask gets) and coalesced (256, what the Python client and the CLI ask
for), so that the difference is the message shape alone. The CPU time of the service's
process (upload, processing and fan-out) and of the watchers' is kept in the detail.

The service's threads are placed as ``pdfbatch serve`` places them
(:func:`server.service.app.place_threads`) while the scenario runs; the watchers'
processes, started from them, are given every CPU back, like the service's workers.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
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
from actors.storage.store import each_event
from bench.corpus import CorpusFile, one_page_corpus
from bench.options import Options
from bench.processors import GATED, gate_path
from bench.report import Figure, at_most, judged, percentile
from bench.server_process import ROOT, submit
from server.client.api import Client
from server.service.app import DATABASE_NAME, Service, freeze_startup_heap, place_threads
from server.service.settings import ServerSettings, UploadLimits

__all__ = ["watch_latency"]

ONE_PAGE_FILES = 1_000
WATCHERS = 50
WATCHER_PROCESSES = 2
MODES = {"one event per message": 1, "coalesced": 256}
_WAIT = 300.0


def watch_latency(options: Options) -> list[Figure]:
    """p99 from ``event_time`` to arrival over every watcher, per message shape; target 20 ms."""
    workers = options.workers
    files_count = options.files or ONE_PAGE_FILES
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as scratch:
        root = Path(scratch)
        files = one_page_corpus(root / "pages", files_count)
        settings = ServerSettings(
            address="127.0.0.1:0",
            data_dir=root / "data",
            workers=workers,
            limits=UploadLimits(max_files_per_batch=max(files_count, 1_000)),
            shutdown_grace=0,
        )
        runs: dict[str, list[_Run]] = {mode: [] for mode in MODES}
        committed: dict[tuple[str, int], float] = {}
        lock = threading.Lock()

        def note(event: BatchEvent) -> None:
            now = time.time()
            with lock:
                committed.setdefault((event.batch_id, event.sequence), now - event.at)

        store = SQLiteStore(
            settings.data_dir / DATABASE_NAME, max_events_per_batch=settings.max_events_per_batch
        )
        unsubscribe = store.subscribe(each_event(note))
        try:
            service = Service(settings, store=store, processor=GATED)
            gate = gate_path(settings.data_dir / "work")
            # As `pdfbatch serve` does before it starts; undone when the scenario ends.
            placement = place_threads(service, settings)
            freeze_startup_heap()
            try:
                service.start()
                for index in range(options.repeat or 1):
                    for mode, per_message in MODES.items():
                        cpu_before = _cpu_seconds()
                        output = root / f"received-{index}-{per_message}"
                        run = _watch(
                            service.address,
                            files,
                            workers,
                            per_message,
                            output,
                            gate=gate,
                            cpus=None if placement is None else placement.everywhere,
                        )
                        with lock:
                            to_commit = [
                                ms for (b, _), ms in committed.items() if b == run.batch_id
                            ]
                        runs[mode].append(
                            run.measured(_cpu_seconds() - cpu_before, [1000 * s for s in to_commit])
                        )
            finally:
                service.stop(grace=0)
                gc.unfreeze()
                if placement is not None:
                    placement.release()
        finally:
            unsubscribe()
            store.close()
    return [_figure(mode, files_count, mode_runs) for mode, mode_runs in runs.items()]


@dataclass(frozen=True, slots=True)
class _Run:
    batch_id: str
    latencies: list[float]
    events: int
    messages: int
    watchers_cpu: float
    server_cpu: float = 0.0
    # Milliseconds from each event's event_time to its commit.
    to_commit: tuple[float, ...] = ()

    def measured(self, server_cpu: float, to_commit: list[float]) -> _Run:
        return _Run(
            self.batch_id,
            self.latencies,
            self.events,
            self.messages,
            self.watchers_cpu,
            server_cpu,
            tuple(to_commit),
        )


def _figure(mode: str, files: int, runs: list[_Run]) -> Figure:
    latencies = [ms for run in runs for ms in run.latencies]
    if not latencies:
        raise RuntimeError("no event reached a watcher after its snapshot")
    events = sum(run.events for run in runs)
    messages = sum(run.messages for run in runs)
    server_cpu = sum(run.server_cpu for run in runs)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    to_commit = [ms for run in runs for ms in run.to_commit] or [float("nan")]
    return judged(
        "watch",
        f"watch latency p99, {WATCHERS} watchers, {files} one-page PDFs, {mode}",
        p99,
        "ms",
        at_most(20),
        note=(
            f"p50 {p50:.1f} ms; {len(latencies)} deliveries in {messages} messages; "
            f"event_time to commit p50 {percentile(to_commit, 0.5):.1f} ms, p99 "
            f"{percentile(to_commit, 0.99):.1f} ms; server CPU {server_cpu:.1f} s"
        ),
        detail={
            "files": files,
            "runs": len(runs),
            "watchers": WATCHERS,
            "events": events,
            "deliveries": len(latencies),
            "messages": messages,
            "p50_ms": p50,
            "p90_ms": percentile(latencies, 0.9),
            "p99_ms": p99,
            "max_ms": max(latencies),
            "to_commit_p50_ms": percentile(to_commit, 0.5),
            "to_commit_p99_ms": percentile(to_commit, 0.99),
            "server_cpu_seconds": server_cpu,
            "server_cpu_us_per_delivery": 1e6 * server_cpu / len(latencies),
            "watchers_cpu_seconds": sum(run.watchers_cpu for run in runs),
        },
    )


def _on_cpus(process: subprocess.Popen[str], cpus: frozenset[int] | None) -> subprocess.Popen[str]:
    """``process``, just started from the service's CPUs, given ``cpus`` back (all it
    had before the pinning, as a worker is) while its interpreter is still starting:
    it has no other thread yet to keep the service's."""
    if cpus is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(process.pid, cpus)
    return process


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _watch(
    address: str,
    files: list[CorpusFile],
    workers: int,
    per_message: int,
    output: Path,
    *,
    gate: Path,
    cpus: frozenset[int] | None,
) -> _Run:
    """Start the watchers, submit the batch, let its files run once every watcher has
    its snapshot (by creating ``gate``), wait for every watcher to see it settle."""
    shares = [WATCHERS // WATCHER_PROCESSES] * WATCHER_PROCESSES
    shares[0] += WATCHERS - sum(shares)
    outputs = [output.with_suffix(f".{n}.json") for n in range(len(shares))]
    command = [sys.executable, "-m", "bench.watchers", address]
    processes = [
        _on_cpus(
            subprocess.Popen(
                [*command, str(share), str(out), str(per_message)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            ),
            cpus,
        )
        for share, out in zip(shares, outputs, strict=True)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("the watchers did not connect")
        gate.unlink(missing_ok=True)
        with Client(address) as client:
            batch_id = submit(client, files, 2 * workers)
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(batch_id + "\n")
            process.stdin.flush()
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "watching":
                raise RuntimeError("the watchers did not receive their snapshots")
        gate.touch()
        for process in processes:
            if process.wait(_WAIT) != 0:
                raise RuntimeError("the watchers failed")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
    documents = [json.loads(out.read_text()) for out in outputs]
    received = [watcher for document in documents for watcher in document["received"]]
    return _Run(
        batch_id=batch_id,
        latencies=[1000 * latency for watcher in received for _, latency in watcher],
        events=len({int(sequence) for watcher in received for sequence, _ in watcher}),
        messages=sum(document["messages"] for document in documents),
        watchers_cpu=sum(document["cpu_seconds"] for document in documents),
    )
