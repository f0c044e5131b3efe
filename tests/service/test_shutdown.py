"""Graceful shutdown: NOT_SERVING, UNAVAILABLE for new calls, a grace for running work."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from actors.policy.model import FileState
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from tests.helpers.server_fixtures import (
    SEEN_RUNNING_PAGES,
    WAIT,
    RunningServer,
    ServerFactory,
    many_pages,
    refused,
    upload,
    wait_until_running,
)

SERVICE = "pdfbatch.v1.BatchService"


def _long_batch(server: RunningServer, files: int) -> pb.Batch:
    """One file at a time, each taking about a second to extract."""
    pages = many_pages(2000)
    batch = server.submit(
        *((f"{n}.pdf", pages) for n in range(files)), policy=pb.BatchPolicy(max_concurrency=1)
    )
    wait_until_running(server.stub, batch.batch_id)
    return batch


def test_shutdown_reports_not_serving_refuses_new_calls_and_lets_running_attempts_finish(
    serve: ServerFactory,
) -> None:
    server = serve(shutdown_grace=WAIT)
    health = health_pb2_grpc.HealthStub(server.channel)
    status = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=WAIT)
    assert next(status).status == health_pb2.HealthCheckResponse.SERVING
    batch = _long_batch(server, files=3)
    watch = server.stub.WatchBatch(pb.WatchBatchRequest(batch_id=batch.batch_id, follow=True))
    next(watch)

    before = server.store.load(batch.batch_id)
    assert before is not None
    running = {f.file_id for f in before.files if f.state is FileState.RUNNING}
    assert running
    stopping = threading.Thread(target=server.service.stop)
    stopping.start()

    assert next(status).status == health_pb2.HealthCheckResponse.NOT_SERVING
    status.cancel()
    checked = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=WAIT)
    assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING
    closing = refused(lambda: server.client.get(batch.batch_id))
    assert (closing.code, closing.reason) == (grpc.StatusCode.UNAVAILABLE, "SERVICE_CLOSING")
    assert closing.retry_delay == 1.0
    ended = refused(lambda: list(watch))
    assert (ended.code, ended.reason) == (grpc.StatusCode.UNAVAILABLE, "SERVICE_CLOSING")
    stopping.join(WAIT)
    assert not stopping.is_alive()

    after = server.stored(batch.batch_id)
    assert after is not None
    states = {f.file_id: f.state for f in after.files}
    # What ran at the signal had its grace and finished. Whatever started meanwhile was
    # stopped and stays RUNNING, with its attempt open, to resume on the next start:
    # nothing failed or was cancelled by the shutdown.
    assert all(states[file_id] is FileState.SUCCEEDED for file_id in running)
    assert set(states.values()) <= {FileState.SUCCEEDED, FileState.RUNNING, FileState.PENDING}


def test_without_grace_running_attempts_are_stopped_and_left_to_resume(
    serve: ServerFactory,
) -> None:
    server = serve(shutdown_grace=0.0)
    batch = _long_batch(server, files=2)

    server.service.stop()

    first = server.stored(batch.batch_id).files[0]  # type: ignore[union-attr]
    assert first.state is FileState.RUNNING
    assert first.attempts[-1].ended_at is None
    assert server.blob_files() != []
    assert list((server.data_dir / "work").iterdir()) == []


def test_serve_exits_cleanly_on_sigterm_mid_batch(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.main",
            "serve",
            "--address",
            "127.0.0.1:0",
            "--data-dir",
            str(data_dir),
            "--workers",
            "2",
            "--shutdown-grace",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on "), line
        address = line.removeprefix("listening on ").strip()
        with grpc.insecure_channel(address) as channel:
            stub = batch_pb2_grpc.BatchServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=WAIT)
            assert next(status).status == health_pb2.HealthCheckResponse.SERVING
            pages = many_pages(SEEN_RUNNING_PAGES)
            batch = stub.SubmitBatch(
                upload(
                    pb.BatchSpec(policy=pb.BatchPolicy(max_concurrency=1)),
                    [(f"{n}.pdf", pages) for n in range(4)],
                ),
                timeout=WAIT,
            )
            wait_until_running(stub, batch.batch_id)
            helpers = psutil.Process(process.pid).children(recursive=True)
            assert helpers, "the server runs its workers in child processes"

            process.send_signal(signal.SIGTERM)

            assert next(status).status == health_pb2.HealthCheckResponse.NOT_SERVING
            status.cancel()
            assert process.wait(WAIT) == 0
        _, alive = psutil.wait_procs(helpers, timeout=WAIT)
        assert alive == []
        assert [p.name for p in (data_dir / "blobs").rglob(".incoming-*")] == []
        assert list((data_dir / "work").iterdir()) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    logged = (tmp_path / "server.log").read_text()
    assert "signal_received" in logged
    assert "stopped" in logged
