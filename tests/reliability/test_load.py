"""Load: concurrent batches, and watchers that stop reading, against a real service child.

Rounds of concurrent batches go through a ``pdfbatch serve`` child; each batch has one
watcher that reads it to the end. Calm rounds alternate with rounds in which dozens
more ``WatchBatch`` streams follow the same batches, from clients of their own, and
never read (or read the snapshot and stop). Every batch must still finish, the
service must keep answering other calls, its memory must not grow with the events the
stalled watchers leave unread, and once they hang up it must let go of them.

The processing rate of each round is measured and reported, never asserted: speed is
the benchmarks' business (``make bench``).
"""

from __future__ import annotations

import random
import re
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import grpc
import psutil
import pytest

from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from tests.helpers.crash_fixtures import ServerProcess
from tests.helpers.crash_processors import script
from tests.helpers.processes import eventually
from tests.helpers.reliability import REPORT
from tests.helpers.reliability_checks import Ledger, check_batches, check_no_temp_files, seeded
from tests.helpers.reliability_fixtures import Launch, RssGauge
from tests.helpers.server_fixtures import free_port

WAIT = 120.0
# Generous: a call answered this late still counts as answered. Not a speed target.
PROMPT_ENOUGH_SECONDS = 10.0
_MB = 1024 * 1024
# A connection per watcher, as separate clients have. Its window stays small (no BDP
# probing): by default a client's transport reads ahead megabytes that its application
# never asked for, and the service would never see the watcher stall.
STALLED_CLIENT = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 8192),
]


@dataclass
class StalledWatchers:
    """``WatchBatch`` streams that stop reading, each on a connection of its own.

    About half never read at all; the others read the first message (the snapshot)
    and stop. Their windows fill after a few dozen events, so the service's sends to
    them block and their queues overflow: the stall reaches the service.
    """

    address: str
    rng: random.Random
    _channels: list[grpc.Channel] = field(default_factory=list)
    # Each a grpc.Call that is also an iterator of events; the stubs type it as one only.
    _calls: list[Any] = field(default_factory=list)

    def open(self, batch_id: str, count: int) -> None:
        for _ in range(count):
            channel = grpc.insecure_channel(self.address, options=STALLED_CLIENT)
            self._channels.append(channel)
            call = batch_pb2_grpc.BatchServiceStub(channel).WatchBatch(
                pb.WatchBatchRequest(batch_id=batch_id, follow=True), timeout=WAIT * 2
            )
            self._calls.append(call)
            if self.rng.random() < 0.5:
                next(call)

    def __len__(self) -> int:
        return len(self._calls)

    def close(self) -> None:
        """Hang up every stream and connection."""
        for call in self._calls:
            call.cancel()
        for channel in self._channels:
            channel.close()


@dataclass
class Probe:
    """Calls ``GetBatch`` and ``ListBatches`` over and over on a thread; times them."""

    stub: batch_pb2_grpc.BatchServiceStub
    batch_id: str
    latencies: list[float] = field(default_factory=list)
    errors: list[grpc.StatusCode] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="test-probe")
        self._thread.start()

    def _run(self) -> None:
        # At once, then every 50 ms: a round that ends within 50 ms still gets a call.
        while True:
            began = time.monotonic()
            try:
                self.stub.GetBatch(
                    pb.GetBatchRequest(batch_id=self.batch_id, view=pb.BATCH_VIEW_FULL),
                    timeout=PROMPT_ENOUGH_SECONDS,
                )
                self.stub.ListBatches(
                    pb.ListBatchesRequest(page_size=10), timeout=PROMPT_ENOUGH_SECONDS
                )
            except grpc.RpcError as error:
                self.errors.append(error.code())
            self.latencies.append(time.monotonic() - began)
            if self._stop.wait(0.05):
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def run_round(
    life: ServerProcess,
    ledger: Ledger,
    name: str,
    *,
    batches: int,
    files: int,
    stalled: StalledWatchers | None,
    stalled_per_batch: int = 0,
) -> tuple[float, Probe]:
    """Submit ``batches`` batches at once, each followed to its end; files per second."""
    threads = []
    failures: list[BaseException] = []
    began = time.monotonic()
    probe: list[Probe] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        try:
            contents = [(f"{name}-{index}-{n:05d}.pdf", script(b"ok")) for n in range(files)]
            batch = ledger.submit(life.stub, f"{name}-{index}", contents)
            with lock:
                if stalled is not None:
                    stalled.open(batch.batch_id, stalled_per_batch)
                if not probe:
                    probe.append(Probe(life.stub, batch.batch_id))
            request = pb.WatchBatchRequest(batch_id=batch.batch_id)
            for _ in life.stub.WatchBatch(request, timeout=WAIT):
                pass
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            failures.append(error)

    for index in range(batches):
        threads.append(threading.Thread(target=one, args=(index,), name="test-batch"))
        threads[-1].start()
    for thread in threads:
        thread.join(WAIT * 2)
    seconds = time.monotonic() - began
    for each in probe:
        each.close()
    assert not failures, failures
    return batches * files / seconds, probe[0]


def open_watches(metrics: str) -> int:
    """The service's count of open ``WatchBatch`` streams, from its Prometheus metrics."""
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=WAIT) as response:
        text = response.read().decode()
    found = re.search(r"^pdfbatch_watchers (\S+)$", text, re.MULTILINE)
    assert found is not None, "no pdfbatch_watchers metric"
    return int(float(found.group(1)))


def run_load(
    launch: Launch,
    rng: random.Random,
    *,
    batches: int,
    files: int,
    stalled_per_batch: int,
    rounds: int,
) -> None:
    """``rounds`` pairs of rounds: one calm, one with stalled watchers on every batch.

    Calm and stalled rounds alternate, so that whatever else loads the machine weighs
    on both rates alike; the first calm round also warms the service up.
    """
    watchers = batches * stalled_per_batch
    metrics = f"127.0.0.1:{free_port()}"
    launcher = launch(max_watchers=watchers + batches + 16, metrics_port=metrics.split(":")[1])
    life = launcher.start()
    server = psutil.Process(life.process.pid)
    ledger = Ledger()
    calm_rates: list[float] = []
    stalled_rates: list[float] = []
    after_rounds: list[int] = []
    slowest = 0.0
    gauge: RssGauge | None = None
    try:
        for number in range(rounds):
            calm_rate, _ = run_round(
                life, ledger, f"calm{number}", batches=batches, files=files, stalled=None
            )
            calm_rates.append(calm_rate)
            if gauge is None:
                gauge = RssGauge(server.pid)
            stalled = StalledWatchers(life.address, random.Random(rng.getrandbits(64)))
            try:
                rate, probe = run_round(
                    life,
                    ledger,
                    f"stalled{number}",
                    batches=batches,
                    files=files,
                    stalled=stalled,
                    stalled_per_batch=stalled_per_batch,
                )
                assert len(stalled) == watchers
                # The attack landed: the service holds every stalled stream open.
                assert open_watches(metrics) >= watchers
            finally:
                stalled.close()
            assert probe.errors == [], f"calls failed under load: {probe.errors}"
            assert probe.latencies, "the probe made no call"
            slowest = max(slowest, *probe.latencies)
            stalled_rates.append(rate)
            after_rounds.append(server.memory_info().rss)
    finally:
        if gauge is not None:
            gauge.close()
    assert gauge is not None
    warm_rss, peak = gauge.samples[0], gauge.peak

    # Stalled streams hung up are let go.
    eventually(lambda: open_watches(metrics) == 0)
    check_batches(life.stub, ledger)
    life.stop()
    check_no_temp_files(launcher.data_dir, stopped=True)

    growth = (peak - warm_rss) / _MB
    drift = (after_rounds[-1] - after_rounds[0]) / _MB
    calm, stalled_median = statistics.median(calm_rates), statistics.median(stalled_rates)
    print(
        f"{batches} batches x {files} files per round, {watchers} stalled watchers: "
        f"calm {_rates(calm_rates)} files/s, stalled {_rates(stalled_rates)} files/s; "
        f"RSS warm {warm_rss / _MB:.0f} MB, peak {peak / _MB:.0f} MB, after each stalled "
        f"round {', '.join(f'{r / _MB:.0f}' for r in after_rounds)} MB; "
        f"slowest probe {slowest:.2f} s"
    )
    # Generous: a stalled watcher may hold its queue (4,096 shared events) and a stream window,
    # but never the whole history it has not read.
    assert growth < 150, f"server RSS grew {growth:.0f} MB under stalled watchers"
    assert drift < 50, f"server RSS kept growing round after round: {drift:.0f} MB"
    REPORT.attack("stalled watchers", watchers * rounds)
    REPORT.attack("concurrent batches", batches * rounds * 2)
    REPORT.invariant("batches finish despite stalled watchers", batches * rounds)
    REPORT.invariant("server answers other calls under load", rounds)
    REPORT.invariant("server memory bounded under stalled watchers")
    REPORT.invariant("hung-up watchers released")
    REPORT.figure(f"files/s, {batches} batches x {files}, no stalled watchers", calm, "files/s")
    REPORT.figure(
        f"files/s, {batches} batches x {files}, {watchers} stalled watchers",
        stalled_median,
        "files/s",
    )
    REPORT.figure("stalled/calm processing rate (median of pairs)", stalled_median / calm, "x")
    REPORT.figure("server RSS growth under stalled watchers", growth, "MB")
    REPORT.figure("server RSS peak under load", peak / _MB, "MB")
    REPORT.figure("slowest GetBatch+ListBatches under load", slowest, "s")


def _rates(rates: list[float]) -> str:
    return f"median {statistics.median(rates):.0f} ({', '.join(f'{r:.0f}' for r in rates)})"


def test_stalled_watchers_do_not_hold_the_service_back(launch: Launch) -> None:
    run_load(launch, seeded("load"), batches=2, files=300, stalled_per_batch=12, rounds=2)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_soak_stalled_watchers(launch: Launch) -> None:
    run_load(launch, seeded("load, soak"), batches=4, files=1000, stalled_per_batch=12, rounds=5)
