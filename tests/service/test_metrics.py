"""The Prometheus endpoint after a real batch through a real server."""

from __future__ import annotations

import http.client
import select
import socket
import time
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bench.samples import not_a_pdf, text_pdf
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.service.metrics_http import MetricsServer
from server.service.settings import ServerSettings
from tests.helpers.processes import eventually
from tests.helpers.server_fixtures import ServerFactory


def _scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_a_batch_with_mixed_outcomes(serve: ServerFactory) -> None:
    server = serve(metrics_port=0)
    assert server.service.metrics_address is not None
    batch = server.submit(
        ("a.pdf", text_pdf("one")), ("b.pdf", text_pdf("two")), ("c.pdf", not_a_pdf())
    )
    server.settle(batch.batch_id)
    samples = _scrape(server.service.metrics_address)

    assert samples[("pdfbatch_files_total", (("code", ""), ("outcome", "succeeded")))] == 2
    assert samples[("pdfbatch_files_total", (("code", "NOT_A_PDF"), ("outcome", "failed")))] == 1
    assert samples[("pdfbatch_attempts_total", (("outcome", "succeeded"),))] == 2
    assert samples[("pdfbatch_attempts_total", (("outcome", "failed"),))] == 1
    count = ("pdfbatch_attempt_duration_seconds_count", (("outcome", "succeeded"),))
    assert samples[count] == 2
    assert samples[("pdfbatch_batches", (("state", "partially_succeeded"),))] == 1
    assert samples[("pdfbatch_batches", (("state", "running"),))] == 0
    assert samples[("pdfbatch_workers", ())] == 2
    assert samples[("pdfbatch_workers_busy", ())] == 0
    assert samples[("pdfbatch_queue_depth", ())] == 0
    assert samples[("pdfbatch_watchers", ())] == 0


_SERVICE = "pdfbatch.v1.BatchService"


def _calls(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], method: str, kind: str
) -> dict[str, float]:
    """``grpc_server_handled_total`` of one method, by code."""
    labels = (("grpc_method", method), ("grpc_service", _SERVICE), ("grpc_type", kind))
    return {
        dict(key)["grpc_code"]: value
        for (name, key), value in samples.items()
        if name == "grpc_server_handled_total"
        and tuple(item for item in key if item[0] != "grpc_code") == labels
    }


def _rpc_sample(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, method: str, kind: str
) -> float:
    labels = (("grpc_method", method), ("grpc_service", _SERVICE), ("grpc_type", kind))
    return samples.get((name, labels), 0.0)


def test_calls_are_counted_by_method_and_code_and_timed_when_they_end(
    serve: ServerFactory,
) -> None:
    server = serve(metrics_port=0)
    address = server.service.metrics_address
    assert address is not None
    batch = server.submit(("a.pdf", text_pdf("one")))
    server.settle(batch.batch_id)
    server.stub.GetBatch(pb.GetBatchRequest(batch_id=batch.batch_id), timeout=60)
    with pytest.raises(grpc.RpcError) as missing:
        server.stub.GetBatch(pb.GetBatchRequest(batch_id="0" * 32), timeout=60)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    # A followed watch runs until its client leaves: started, not yet handled.
    followed = server.stub.WatchBatch(
        pb.WatchBatchRequest(batch_id=batch.batch_id, follow=True), timeout=60
    )
    assert next(followed).HasField("snapshot")
    expired = server.stub.WatchBatch(
        pb.WatchBatchRequest(batch_id=batch.batch_id, follow=True), timeout=1.0
    )
    with pytest.raises(grpc.RpcError) as late:
        list(expired)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    # The server hears of a call's end after its client does.
    def watches_ended() -> bool:
        return _calls(_scrape(address), "WatchBatch", "server_stream") == {
            "OK": 1,
            "DEADLINE_EXCEEDED": 1,
        }

    eventually(watches_ended, timeout=30)
    samples = _scrape(address)
    assert _rpc_sample(samples, "grpc_server_started_total", "WatchBatch", "server_stream") == 3
    assert _calls(samples, "GetBatch", "unary") == {"OK": 1, "NOT_FOUND": 1}
    assert _calls(samples, "SubmitBatch", "client_stream") == {"OK": 1}
    count = "grpc_server_handling_seconds_count"
    assert _rpc_sample(samples, count, "GetBatch", "unary") == 2
    assert _rpc_sample(samples, count, "WatchBatch", "server_stream") == 2
    # The expired watch lasted about its second (its deadline, less the trip), and the
    # histogram saw that, not just the instant its handler took to return a generator.
    assert (
        _rpc_sample(samples, "grpc_server_handling_seconds_sum", "WatchBatch", "server_stream")
        >= 0.5
    )

    followed.cancel()
    eventually(
        lambda: _calls(_scrape(address), "WatchBatch", "server_stream").get("CANCELLED") == 1,
        timeout=30,
    )


def test_metrics_are_off_by_default(serve: ServerFactory) -> None:
    assert serve().service.metrics_address is None


def test_restarts_and_their_delays_are_counted() -> None:
    from actors.execution.local.pool import PoolStats
    from actors.policy.catalogue import ErrorCode
    from actors.policy.model import (
        Attempt,
        AttemptOutcome,
        BatchEvent,
        BatchState,
        FileError,
        FileRecord,
        FileState,
    )
    from actors.storage.store import MemoryStore
    from server.service.metrics import ServiceMetrics

    class Idle:
        def stats(self) -> PoolStats:
            return PoolStats(workers=2, busy=0, queued=0)

    metrics = ServiceMetrics(MemoryStore(), Idle(), lambda: 0)
    attempt = Attempt(1, 10.0, 12.5, AttemptOutcome.FAILED, ErrorCode.WORKER_CRASHED, 7, 3.0)
    backoff = FileRecord(
        "f1", "a.pdf", "0" * 64, 1, FileState.BACKOFF, (attempt,),
        error=FileError.of(ErrorCode.WORKER_CRASHED, 12.5),
    )  # fmt: skip
    metrics.observe(BatchEvent(3, "b", 12.5, BatchState.RUNNING, backoff, "", FileState.RUNNING))
    registry = metrics.registry
    assert (
        registry.get_sample_value("pdfbatch_file_restarts_total", {"code": "WORKER_CRASHED"}) == 1
    )
    assert registry.get_sample_value("pdfbatch_backoff_delay_seconds_sum") == 3.0
    assert (
        registry.get_sample_value("pdfbatch_attempt_duration_seconds_sum", {"outcome": "failed"})
        == 2.5
    )


def test_only_metrics_is_served_by_a_server_of_bounded_threads() -> None:
    server = MetricsServer(CollectorRegistry(), "127.0.0.1", 0, timeout=30, max_connections=2)
    try:
        address = f"127.0.0.1:{server.port}"
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"http://{address}/", timeout=10)
        assert raised.value.code == 404
        stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
        try:
            for connection in stalled:
                connection.sendall(b"GET /metr")
            # Two half-sent requests hold the two slots; the others are closed unanswered.
            closed: set[socket.socket] = set()
            deadline = time.monotonic() + 10
            while len(closed) < 18 and time.monotonic() < deadline:
                readable, _, _ = select.select([c for c in stalled if c not in closed], [], [], 1)
                for connection in readable:
                    assert connection.recv(1024) == b""
                    closed.add(connection)
            assert len(closed) == 18
            held = [c for c in stalled if c not in closed]
            assert select.select(held, [], [], 0.5)[0] == [], "held, not answered"
        finally:
            for connection in stalled:
                connection.close()
        # The slots come back as the held requests' threads see their clients gone.
        eventually(lambda: _answers(address), timeout=30)
    finally:
        server.close()


def _answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
            return bool(response.status == 200)
    except (http.client.RemoteDisconnected, ConnectionError):
        return False


def test_a_request_that_never_ends_is_dropped_after_the_timeout() -> None:
    server = MetricsServer(CollectorRegistry(), "127.0.0.1", 0, timeout=0.2)
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as connection:
            connection.sendall(b"GET /metr")
            connection.settimeout(10)
            assert connection.recv(1024) == b""
    finally:
        server.close()


def test_the_endpoint_has_its_own_address_loopback_by_default(serve: ServerFactory) -> None:
    assert ServerSettings().metrics_address == "127.0.0.1"

    server = serve(metrics_port=0, metrics_address="localhost", metrics_timeout_seconds=0.2)
    metrics = server.service._metrics_http
    assert metrics is not None
    with socket.create_connection(("localhost", metrics.port)) as stalled:
        stalled.sendall(b"GET /metr")
        stalled.settimeout(10)
        assert stalled.recv(1024) == b"", "dropped after the configured timeout"

    address = server.service.metrics_address
    assert address is not None
    assert address.startswith("localhost:")
    assert ("pdfbatch_watchers", ()) in _scrape(address)
