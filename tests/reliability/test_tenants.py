"""Hostile tenant: one tenant uses the API as allowed, or nearly, to deny the other.

A ``pdfbatch serve`` child with two tenants. In each round tenant B (globex) opens more
``WatchBatch(follow=true)`` streams than it may, 40 uploads that send a header and half
a file and then stall, and probes of A's batch ids (``GetBatch``, ``RetryFiles``,
``CancelBatch`` with request ids of its own); meanwhile tenant A (acme) submits batches,
watches each to its end and reads it. A's calls must all succeed, B's beyond its caps
be refused with the cap's reason, B's stalled uploads be ended by the idle timeout and
leave no byte behind, and B's probes never show in A's history.

A's latencies under the attack are measured and reported, never asserted (the bench
``bench/tenants.py`` measures them against a calm run).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from server.client.auth import BearerToken
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from tests.helpers.blob_checks import incoming_blobs
from tests.helpers.crash_processors import script
from tests.helpers.hostile_tenant import HeldCalls, held_watches, stalled_uploads
from tests.helpers.processes import eventually
from tests.helpers.reliability import REPORT
from tests.helpers.reliability_checks import Ledger, check_batches, check_no_temp_files, seeded
from tests.helpers.reliability_fixtures import Launch
from tests.helpers.security_fixtures import TOKENS, write_tokens_file
from tests.helpers.server_fixtures import upload

WAIT = 120.0
MAX_WATCHERS = 16  # 4 per tenant
MAX_UPLOADS = 8  # 2 per tenant
STALLED_UPLOADS = 40
IDLE_SECONDS = 2.0
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def _stub(address: str, tenant: str) -> tuple[grpc.Channel, batch_pb2_grpc.BatchServiceStub]:
    channel = grpc.insecure_channel(address)
    authed = grpc.intercept_channel(channel, BearerToken(TOKENS[tenant]))
    return channel, batch_pb2_grpc.BatchServiceStub(authed)


def _probe(b: batch_pb2_grpc.BatchServiceStub, batch_id: str, number: int) -> None:
    """B's calls on one of A's batches: each answered as for a batch that does not exist."""
    request_id = (("x-request-id", f"globex-probe-{number}"),)
    for call in (
        lambda: b.GetBatch(pb.GetBatchRequest(batch_id=batch_id), metadata=request_id),
        lambda: b.RetryFiles(pb.RetryFilesRequest(batch_id=batch_id), metadata=request_id),
        lambda: b.CancelBatch(pb.CancelBatchRequest(batch_id=batch_id), metadata=request_id),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        # RetryFiles may be throttled first: either way it learns nothing.
        assert raised.value.code() in (NOT_FOUND, EXHAUSTED)  # type: ignore[attr-defined]


def _timed(call: Callable[[], object]) -> float:
    began = time.monotonic()
    call()
    return time.monotonic() - began


def run_hostile_tenant(
    launch: Launch, tmp_path: Path, rng: random.Random, *, rounds: int, files: int
) -> None:
    tokens = write_tokens_file(tmp_path / "tokens.toml")
    launcher = launch(
        tokens_file=tokens,
        max_watchers=MAX_WATCHERS,
        max_uploads=MAX_UPLOADS,
        upload_idle_timeout_seconds=IDLE_SECONDS,
        # B's stalled uploads are within its submission rate: the caps must hold them.
        submission_burst=STALLED_UPLOADS * (rounds + 1),
    )
    life = launcher.start()
    a_channel, a = _stub(life.address, "acme")
    b_channel, b = _stub(life.address, "globex")
    ledger = Ledger()
    get_latencies: list[float] = []
    submit_latencies: list[float] = []
    ours: list[str] = []
    probes = 0
    try:
        # B's own batch, which its watches follow.
        theirs = b.SubmitBatch(_one_file("theirs"), timeout=WAIT).batch_id
        for number in range(rounds):
            watches = held_watches(b, theirs, MAX_WATCHERS // 4 + rng.randint(1, 8))
            uploads = stalled_uploads(b, STALLED_UPLOADS)
            try:
                _check_refused(watches, MAX_WATCHERS // 4, "TOO_MANY_TENANT_WATCHERS")
                _check_refused(uploads, MAX_UPLOADS // 4, "TOO_MANY_TENANT_UPLOADS")
                contents = [(f"a{number}-{n:04d}.pdf", script(b"ok")) for n in range(files)]
                began = time.monotonic()
                batch = ledger.submit(a, f"acme-{number}", contents)
                submit_latencies.append(time.monotonic() - began)
                ours.append(batch.batch_id)
                for target in rng.sample(ours, min(3, len(ours))):
                    _probe(b, target, probes)
                    probes += 1
                request = pb.GetBatchRequest(batch_id=batch.batch_id)
                get_latencies.append(_timed(lambda r=request: a.GetBatch(r, timeout=WAIT)))
                watch = pb.WatchBatchRequest(batch_id=batch.batch_id)
                for _ in a.WatchBatch(watch, timeout=WAIT):
                    get_latencies.append(_timed(lambda r=request: a.GetBatch(r, timeout=WAIT)))
                # B's stalled uploads are ended by the service, not by B.
                eventually(lambda u=uploads: u.held() == 0, timeout=WAIT)
                ended = {reason for _, reason in uploads.reasons()}
                assert ended == {"TOO_MANY_TENANT_UPLOADS", "UPLOAD_IDLE_TIMEOUT"}, ended
            finally:
                watches.close()
                uploads.close()
        check_batches(a, ledger)
        for batch_id in ours:
            history = a.GetFileHistory(
                pb.GetFileHistoryRequest(batch_id=batch_id, file_id="f00001"), timeout=WAIT
            )
            callers = {e.request.caller for e in history.entries if e.HasField("request")}
            assert callers == {"acme"}, callers
            assert "globex-probe" not in str(history)
        eventually(lambda: _temp_uploads(launcher.data_dir) == [])
    finally:
        a_channel.close()
        b_channel.close()
    life.stop()
    check_no_temp_files(launcher.data_dir, stopped=True)

    REPORT.attack("hostile tenant: watches beyond its cap", rounds)
    REPORT.attack("hostile tenant: stalled uploads", STALLED_UPLOADS * rounds)
    REPORT.attack("hostile tenant: probes of another tenant's batches", probes * 3)
    REPORT.invariant("a tenant's calls answered while another holds its caps", rounds)
    REPORT.invariant("stalled uploads ended by the idle timeout, nothing left", rounds)
    REPORT.invariant("another tenant's probes absent from the owner's history", len(ours))
    REPORT.figure("tenant A GetBatch under hostile tenant, slowest", max(get_latencies), "s")
    REPORT.figure(
        "tenant A GetBatch under hostile tenant, median", statistics.median(get_latencies), "s"
    )
    REPORT.figure(
        f"tenant A submit ({files} files) under hostile tenant, slowest",
        max(submit_latencies),
        "s",
    )


def _one_file(name: str) -> Iterator[pb.SubmitBatchRequest]:
    return upload(pb.BatchSpec(display_name=name), [("one.pdf", script(b"ok"))])


def _check_refused(calls: HeldCalls, allowed: int, reason: str) -> None:
    """Those beyond the tenant's cap are refused at once with ``reason``; the others
    were taken (they may have ended since: stalled uploads time out)."""
    beyond = len(calls.calls) - allowed
    eventually(lambda: sum(r == (EXHAUSTED, reason) for r in calls.reasons()) >= beyond)
    assert sum(r == (EXHAUSTED, reason) for r in calls.reasons()) == beyond


def _temp_uploads(data_dir: Path) -> list[Path]:
    return incoming_blobs(data_dir / "blobs")


def test_a_hostile_tenant_within_its_caps_leaves_the_other_working(
    launch: Launch, tmp_path: Path
) -> None:
    run_hostile_tenant(launch, tmp_path, seeded("hostile tenant"), rounds=2, files=20)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_soak_hostile_tenant(launch: Launch, tmp_path: Path) -> None:
    run_hostile_tenant(launch, tmp_path, seeded("hostile tenant, soak"), rounds=12, files=200)
