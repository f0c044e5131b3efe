"""One tenant cannot take the service from another within its own limits: its watches and
uploads are capped per tenant, a stalled upload ends, and the bytes an upload declares
are reserved against its tenant's quota while it arrives (issue #17, findings 2 and 6)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.policy.results import TEXT_PIECE_CHARS
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.security.concurrency import CallCap, Slot, TenantCaps
from server.security.pacing import AHEAD_MESSAGES, UploadPace, paced
from server.service.settings import ServerSettings
from server.wire.errors import WireError
from tests.helpers.blob_checks import incoming_blobs
from tests.helpers.hostile_tenant import held_watches, stalled_uploads
from tests.helpers.poison_pdfs import text_amplifier
from tests.helpers.processes import eventually
from tests.helpers.security_fixtures import SecureFactory, SecureServer, settle, submit
from tests.helpers.server_fixtures import WAIT, make_pdf, refused

PDF = make_pdf("small")
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _incoming(server: SecureServer) -> list[str]:
    """Uploads in progress: temporary files and incoming rows."""
    return [p.name for p in incoming_blobs(server.data_dir / "blobs")]


# Uploads staged as files, where a held upload's bytes can be seen on disk: a small one
# kept inline is in memory until its file ends.
ON_DISK = {"inline_blob_max_bytes": 0}


def _upload_readers() -> int:
    return sum(t.name == "pdfbatch-upload-reader" for t in threading.enumerate())


def test_a_tenant_holding_its_watches_leaves_the_others_theirs(
    secure_serve: SecureFactory,
) -> None:
    server = secure_serve(max_watchers=8)  # 2 per tenant
    acme, globex = server.stub("acme"), server.stub("globex")
    theirs = submit(globex, ("g.pdf", PDF))
    ours = submit(acme, ("a.pdf", PDF))

    # Globex tries to take every watch of the service.
    hostile = held_watches(globex, theirs.batch_id, 8)
    try:
        eventually(lambda: len(hostile.done()) == 6)
        assert set(hostile.reasons()) == {(EXHAUSTED, "TOO_MANY_TENANT_WATCHERS")}
        assert server.service.hub.open_watches == 2

        # Acme still watches its own batch, to its end.
        events = list(acme.WatchBatch(pb.WatchBatchRequest(batch_id=ours.batch_id), timeout=WAIT))
        assert events[-1].batch_state == pb.BATCH_STATE_SUCCEEDED
    finally:
        hostile.close()
    eventually(lambda: server.service.hub.open_watches == 0)
    # Its places come back once its watches end.
    settle(globex, theirs.batch_id)


def test_a_refused_watch_names_the_cap_and_the_setting(secure_serve: SecureFactory) -> None:
    server = secure_serve(max_watchers=40, max_watchers_per_tenant=1)
    globex = server.stub("globex")
    batch = submit(globex, ("g.pdf", PDF))
    hostile = held_watches(globex, batch.batch_id, 1)
    try:
        eventually(lambda: server.service.hub.open_watches == 1)
        request = pb.WatchBatchRequest(batch_id=batch.batch_id, follow=True)
        error = refused(lambda: list(globex.WatchBatch(request, timeout=WAIT)))
    finally:
        hostile.close()
    assert (error.code, error.reason) == (EXHAUSTED, "TOO_MANY_TENANT_WATCHERS")
    assert error.metadata == {"maxWatchersPerTenant": "1"}
    assert error.retry_delay == 5.0
    assert "the most one tenant may have (max_watchers_per_tenant)" in error.message


def test_stalled_uploads_of_one_tenant_leave_the_others_calls_answered(
    secure_serve: SecureFactory,
) -> None:
    # Fewer threads than the stalled uploads: before the caps, they held them all.
    server = secure_serve(max_watchers=4, max_uploads=8, max_exports=1, rpc_threads=24, **ON_DISK)
    acme, globex = server.stub("acme"), server.stub("globex")
    mine = submit(acme, ("a.pdf", PDF))

    hostile = stalled_uploads(globex, 40)
    try:
        # Two are held (a quarter of max_uploads), the others refused at once.
        eventually(lambda: len(hostile.done()) == 38)
        assert set(hostile.reasons()) == {(EXHAUSTED, "TOO_MANY_TENANT_UPLOADS")}
        eventually(lambda: len(_incoming(server)) == 2)
        assert server.service.open_uploads.held("globex") == 2

        assert acme.GetBatch(pb.GetBatchRequest(batch_id=mine.batch_id), timeout=5).batch_id
        settle(acme, submit(acme, ("b.pdf", PDF)).batch_id)
    finally:
        hostile.close()
    eventually(lambda: server.service.open_uploads.held() == 0)
    eventually(lambda: _incoming(server) == [])


def test_uploads_of_all_tenants_together_are_capped_too(secure_serve: SecureFactory) -> None:
    server = secure_serve(max_uploads=2, max_uploads_per_tenant=2)
    globex = server.stub("globex")
    hostile = stalled_uploads(globex, 2)
    try:
        eventually(lambda: server.service.open_uploads.held() == 2)
        error = refused(lambda: submit(server.stub("acme"), ("a.pdf", PDF)))
    finally:
        hostile.close()
    assert (error.code, error.reason) == (EXHAUSTED, "TOO_MANY_UPLOADS")
    assert error.metadata == {"maxUploads": "2"}
    assert error.retry_delay == 5.0


def test_a_stalled_upload_is_ended_with_its_reason_and_leaves_nothing(
    secure_serve: SecureFactory,
) -> None:
    server = secure_serve(limits={"upload_idle_timeout_seconds": 0.5}, **ON_DISK)
    globex = server.stub("globex")
    hostile = stalled_uploads(globex, 1)
    try:
        (call,) = hostile.calls
        with pytest.raises(grpc.RpcError):
            call.result(WAIT)
        ((code, reason),) = hostile.reasons()
    finally:
        hostile.close()
    assert (code, reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPLOAD_IDLE_TIMEOUT")
    assert "nothing of it was stored" in call.exception().details()
    assert server.service.store.list_batches() == []
    eventually(lambda: _incoming(server) == [])
    # The reading thread ends with the call; the tenant's place and bytes come back.
    eventually(lambda: _upload_readers() == 0)
    assert server.service.open_uploads.held() == 0
    assert server.service.quotas.reserved("globex") == 0


def test_an_upload_that_trickles_past_its_longest_time_is_ended(
    secure_serve: SecureFactory,
) -> None:
    server = secure_serve(
        limits={"upload_idle_timeout_seconds": 5.0, "max_upload_seconds": 1.0}, **ON_DISK
    )
    stop = threading.Event()

    def trickle() -> Iterator[pb.SubmitBatchRequest]:
        yield pb.SubmitBatchRequest(spec=pb.BatchSpec())
        yield pb.SubmitBatchRequest(file=pb.FileHeader(name="slow.pdf", size_bytes=1 << 20))
        while not stop.wait(0.1):
            yield pb.SubmitBatchRequest(chunk=b"x")

    try:
        error = refused(lambda: server.stub("acme").SubmitBatch(trickle(), timeout=WAIT))
    finally:
        stop.set()
    assert (error.code, error.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPLOAD_TOO_SLOW")
    assert error.metadata == {"maxUploadSeconds": "1"}
    eventually(lambda: _incoming(server) == [])
    assert server.service.store.list_batches() == []


def test_paced_requests_time_out_on_an_injected_clock_and_pass_errors_through() -> None:
    now = [0.0]
    pace = UploadPace(idle_seconds=0.05, max_seconds=10.0)
    blocked = threading.Event()

    def stalls() -> Iterator[int]:
        yield 1
        blocked.wait(WAIT)

    messages = paced(stalls(), pace, clock=lambda: now[0])
    assert next(messages) == 1
    with pytest.raises(WireError) as idle:
        next(messages)
    assert idle.value.reason == "UPLOAD_IDLE_TIMEOUT"
    blocked.set()

    def broken() -> Iterator[int]:
        yield 1
        raise ConnectionError("client gone")

    messages = paced(broken(), pace, clock=lambda: now[0])
    assert next(messages) == 1
    now[0] = 5.0
    with pytest.raises(ConnectionError):
        next(messages)

    endless = paced(iter(range(100)), pace, clock=lambda: now[0])
    assert next(endless) == 0
    now[0] = 20.0
    with pytest.raises(WireError) as slow:
        next(endless)
    assert slow.value.reason == "UPLOAD_TOO_SLOW"
    eventually(lambda: _upload_readers() == 0)


@pytest.mark.parametrize(
    ("size", "ahead_bytes", "most_ahead"),
    [(10, 25, 2), (1, 10**6, AHEAD_MESSAGES), (100, 25, 1)],
)
def test_paced_requests_are_read_ahead_of_the_handler_within_a_bound(
    size: int, ahead_bytes: int, most_ahead: int
) -> None:
    """At most ``ahead_bytes`` (by ``size``) and AHEAD_MESSAGES wait for the handler, and
    always one: a message over the bound alone is still read."""
    total = AHEAD_MESSAGES + 8
    pulled = [0]

    def counted() -> Iterator[int]:
        for n in range(total):
            pulled[0] += 1
            yield n

    pace = UploadPace(idle_seconds=WAIT, max_seconds=WAIT)
    messages = paced(counted(), pace, size=lambda _: size, ahead_bytes=ahead_bytes)
    seen: list[int] = []
    for taken, n in enumerate(messages, start=1):
        assert n == taken - 1
        # The reader holds what it may, and waits to hand over the one it read next.
        expected = min(taken + most_ahead + 1, total)
        eventually(lambda: pulled[0] >= expected)  # noqa: B023 - used at once
        seen.append(pulled[0] - taken)
    assert len(seen) == total
    assert max(seen) == most_ahead + 1
    eventually(lambda: _upload_readers() == 0)


def _open_upload(size: int, go: threading.Event, data: bytes) -> Iterator[pb.SubmitBatchRequest]:
    """A header declaring ``size`` bytes; once ``go`` is set, ``data`` and ``end``."""
    yield pb.SubmitBatchRequest(spec=pb.BatchSpec())
    yield pb.SubmitBatchRequest(file=pb.FileHeader(name="big.pdf", size_bytes=size))
    go.wait(WAIT)
    yield pb.SubmitBatchRequest(chunk=data)
    yield pb.SubmitBatchRequest(end=pb.UploadEnd(file_count=1))


def test_parallel_uploads_cannot_together_go_past_the_quota(secure_serve: SecureFactory) -> None:
    big = make_pdf("big", padding=2000)
    server = secure_serve(security={"max_stored_bytes": len(big) + len(big) // 2}, **ON_DISK)
    acme = server.stub("acme")
    go = threading.Event()
    first = acme.SubmitBatch.future(_open_upload(len(big), go, big), timeout=WAIT)
    try:
        eventually(lambda: server.service.quotas.reserved("acme") == len(big))
        # The first upload's declared bytes are reserved: a second does not fit, and is
        # refused at its header, before any of its bytes are taken.
        error = refused(lambda: submit(acme, ("second.pdf", big)))
        assert (error.code, error.reason) == (EXHAUSTED, "TENANT_STORAGE_FULL")
        assert f"reserved {len(big)} more" in error.message
        assert len(_incoming(server)) == 1
        # Another tenant's quota is its own.
        settle(server.stub("globex"), submit(server.stub("globex"), ("g.pdf", big)).batch_id)
    finally:
        go.set()
    batch = first.result(WAIT)
    settle(acme, batch.batch_id)
    assert server.service.quotas.reserved("acme") == 0


def test_an_aborted_upload_gives_its_reservation_back(secure_serve: SecureFactory) -> None:
    big = make_pdf("big", padding=2000)
    server = secure_serve(security={"max_stored_bytes": len(big) + 100})
    acme = server.stub("acme")
    go = threading.Event()
    broken = acme.SubmitBatch.future(_open_upload(len(big), go, b""), timeout=WAIT)
    eventually(lambda: server.service.quotas.reserved("acme") == len(big))
    broken.cancel()
    go.set()
    eventually(lambda: server.service.quotas.reserved("acme") == 0)
    settle(acme, submit(acme, ("whole.pdf", big)).batch_id)


def test_a_tenant_holding_its_exports_leaves_the_others_theirs(
    secure_serve: SecureFactory,
) -> None:
    server = secure_serve(max_exports=4)  # 1 per tenant
    acme, globex = server.stub("acme"), server.stub("globex")
    # A text far beyond what the transport buffers: an export unread waits on its reader.
    long = text_amplifier(16 * TEXT_PIECE_CHARS, fan_out=256)
    theirs = submit(globex, ("long.pdf", long)).batch_id
    ours = submit(acme, ("a.pdf", PDF)).batch_id
    settle(globex, theirs)
    settle(acme, ours)
    held = globex.ExportResults(pb.ExportResultsRequest(batch_id=theirs), timeout=WAIT)
    try:
        assert next(held).HasField("batch")
        error = refused(
            lambda: list(globex.ExportResults(pb.ExportResultsRequest(batch_id=theirs)))
        )
        assert (error.code, error.reason) == (EXHAUSTED, "TOO_MANY_TENANT_EXPORTS")
        assert error.metadata == {"maxExportsPerTenant": "1"}
        # Acme's export is its own.
        mine = list(acme.ExportResults(pb.ExportResultsRequest(batch_id=ours), timeout=WAIT))
        assert [m.file.status.name for m in mine if m.HasField("file")] == ["a.pdf"]
    finally:
        held.cancel()


def test_the_thread_budget_leaves_room_beyond_every_long_call() -> None:
    settings = ServerSettings(max_watchers=64, max_uploads=32)
    # Watches hold no thread: they are sent from the server's event loop.
    long_calls = 32 + settings.max_exports + settings.security.max_open_streams
    assert settings.threads == long_calls + 32
    assert settings.concurrent_rpcs == 2 * settings.threads + 64
    assert settings.watchers_per_tenant(tenants=True) == 16
    assert settings.uploads_per_tenant(tenants=True) == 8
    assert settings.watchers_per_tenant(tenants=False) is None
    assert settings.exports_per_tenant(tenants=True) == 2
    with pytest.raises(ValueError, match="max_uploads \\+ max_exports \\+ max_open_streams"):
        ServerSettings(max_watchers=8, max_uploads=16, rpc_threads=32)


@given(
    per_tenant=st.integers(1, 4),
    total=st.integers(1, 8),
    steps=st.lists(st.tuples(st.booleans(), st.sampled_from("abc")), max_size=60),
)
def test_caps_never_let_a_tenant_or_everyone_past_their_limit(
    per_tenant: int, total: int, steps: list[tuple[bool, str]]
) -> None:
    caps = TenantCaps(
        CallCap(per_tenant, "TOO_MANY_TENANT_UPLOADS", "max_uploads_per_tenant", "{limit}"),
        CallCap(total, "TOO_MANY_UPLOADS", "max_uploads", "{limit}"),
    )
    held: dict[str, list[Slot]] = {"a": [], "b": [], "c": []}
    for take, tenant in steps:
        if take:
            mine, everyone = len(held[tenant]), sum(map(len, held.values()))
            if mine >= per_tenant or everyone >= total:
                # Refused exactly when a cap is full, the tenant's named first.
                with pytest.raises(WireError) as refused_take:
                    caps.take(tenant)
                expected = "TOO_MANY_TENANT_UPLOADS" if mine >= per_tenant else "TOO_MANY_UPLOADS"
                assert refused_take.value.reason == expected
            else:
                held[tenant].append(caps.take(tenant))
        elif held[tenant]:
            slot = held[tenant].pop()
            slot.release()
            slot.release()  # a second release gives nothing back twice
        assert caps.held(tenant) == len(held[tenant])
        assert caps.held() == sum(map(len, held.values()))
