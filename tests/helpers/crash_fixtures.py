"""The real service as a subprocess on a data directory, to kill with SIGKILL and restart.

Each server runs in a session of its own, so that a kill reaches the whole process
group: the service's fork server and workers die with it (they would anyway: workers
die with their parent), and nothing outlives a test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from server.client.api import Client
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from tests.helpers.crash_processors import SCREENED

START_TIMEOUT = 30.0
WAIT = 30.0
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServerProcess:
    """One life of the service: a process, its address and a channel to it."""

    process: subprocess.Popen[str]
    address: str
    started_in: float
    channel: grpc.Channel = field(init=False)
    stub: batch_pb2_grpc.BatchServiceStub = field(init=False)
    client: Client = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.address)
        self.stub = batch_pb2_grpc.BatchServiceStub(self.channel)
        self.client = Client(self.address, channel=self.channel)

    def kill(self) -> None:
        """SIGKILL the service and everything it started; wait until all are gone."""
        _kill_group(self.process)
        self.channel.close()

    def stop(self) -> None:
        """SIGTERM, and wait for a clean exit (exit code 0)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            assert self.process.wait(WAIT) == 0
        finally:
            _kill_group(self.process)
            self.channel.close()


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(WAIT)
    if process.stdout is not None:
        process.stdout.close()
    deadline = time.monotonic() + WAIT
    while True:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "processes of a killed server are still alive"
        threading.Event().wait(0.02)


class ServerLauncher:
    """Starts lives of the service on one data directory; reaps them all at the end."""

    def __init__(self, data_dir: Path, log: Path, **settings: str) -> None:
        self.data_dir = data_dir
        self._log = log
        self._settings = settings
        self._lives: list[ServerProcess] = []

    def start(self) -> ServerProcess:
        """Start the service; return once it listens."""
        env = {
            **os.environ,
            "PDFBATCH_PROCESSOR": SCREENED,
            **{f"PDFBATCH_{k.upper()}": v for k, v in self._settings.items()},
        }
        began = time.monotonic()
        with self._log.open("a") as log:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "server.main", "serve"),
                    *("--address", "127.0.0.1:0", "--data-dir", str(self.data_dir)),
                    *("--workers", "2"),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
        address = _read_address(process)
        life = ServerProcess(process, address, time.monotonic() - began)
        self._lives.append(life)
        return life

    def close(self) -> None:
        """Kill whatever still runs."""
        for life in self._lives:
            if life.process.poll() is None or _group_alive(life.process.pid):
                life.kill()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _read_address(process: subprocess.Popen[str]) -> str:
    """The address from the ``listening on HOST:PORT`` line, read with a time limit."""
    assert process.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(START_TIMEOUT)
    if reader.is_alive() or not lines or not lines[0].startswith("listening on "):
        _kill_group(process)
        reader.join()
        raise AssertionError(f"the server did not start: {lines}")
    return lines[0].removeprefix("listening on ").strip()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[ServerLauncher]:
    """Lives of the service on ``tmp_path/data``, logging to ``tmp_path/server.log``."""
    started = ServerLauncher(tmp_path / "data", tmp_path / "server.log")
    try:
        yield started
    finally:
        started.close()


def watch_until(
    stub: batch_pb2_grpc.BatchServiceStub,
    batch_id: str,
    condition: object,
    seen: list[pb.WatchBatchResponse] | None = None,
) -> pb.Batch:
    """Follow the batch from a snapshot until ``condition(batch)`` holds; return the batch.

    The snapshot's files are read with ``ListFiles``, then every later event is applied,
    so the condition sees the batch as the server stored it at that event; events are
    appended to ``seen``.
    """
    call = stub.WatchBatch(pb.WatchBatchRequest(batch_id=batch_id, follow=True), timeout=WAIT)
    try:
        batch = pb.Batch()
        read_at = 0
        for event in call:
            if seen is not None:
                seen.append(event)
            if event.HasField("snapshot"):
                batch.CopyFrom(event.snapshot)
                page = stub.ListFiles(pb.ListFilesRequest(batch_id=batch_id, page_size=1000))
                batch.files.extend(page.files)
                read_at = page.sequence
            elif event.HasField("file") and event.sequence > read_at:
                for index, file in enumerate(batch.files):
                    if file.file_id == event.file.file_id:
                        batch.files[index].CopyFrom(event.file)
            batch.state = event.batch_state
            if condition(batch):  # type: ignore[operator]
                return batch
    finally:
        call.cancel()
    raise AssertionError(f"the watch ended before the condition held: {batch}")
