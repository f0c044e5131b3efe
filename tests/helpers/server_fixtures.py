"""A real pdfbatch server on loopback for the wire tests, and helpers to talk to it.

Every server runs real worker processes (``WorkerPool``, two workers) on real PDFs made
here with pypdf, behind a real gRPC server on an ephemeral port. ``serve`` shuts each
one down completely after its test, so the leak checks in ``conftest`` hold.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from actors.policy.model import BatchView
from actors.storage.sqlite_store import SQLiteStore
from actors.storage.store import Store
from bench.samples import text_pdf
from server.client.api import Client
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from server.service.app import DATABASE_NAME, Service
from server.service.settings import ServerSettings, UploadLimits
from server.service.tracing import Tracing
from tests.helpers.blob_checks import stored_blobs

WAIT = 60.0


class _Stderr:
    """Whatever ``sys.stderr`` is when written to (pytest swaps it per test)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture
def server_logs_to_stderr() -> Iterator[None]:
    """The server runs in the test's process: keep its log lines out of a CLI's output."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(_Stderr()))  # type: ignore[arg-type]
    yield
    structlog.reset_defaults()


def make_pdf(*texts: str, padding: int = 0, password: str | None = None) -> bytes:
    """A PDF with one page per text; ``padding`` random bytes ride along as an attachment."""
    return text_pdf(*texts, padding=padding, password=password)


def many_pages(count: int, prefix: str = "page") -> bytes:
    """A PDF of ``count`` pages, each saying ``"{prefix} {n}"``."""
    return make_pdf(*(f"{prefix} {n}" for n in range(1, count + 1)))


@dataclass
class RunningServer:
    """A started :class:`Service` and a channel to it."""

    service: Service
    channel: grpc.Channel
    stub: batch_pb2_grpc.BatchServiceStub
    client: Client
    data_dir: Path

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return self.service.address

    @property
    def store(self) -> Store:
        """The server's store, open while the server runs."""
        return self.service.store

    def stored(self, batch_id: str) -> BatchView | None:
        """The batch as its database file holds it; readable after the server stopped."""
        store = SQLiteStore(self.data_dir / DATABASE_NAME)
        try:
            return store.load(batch_id)
        finally:
            store.close()

    def blob_files(self) -> list[Path]:
        """Every blob under the blob store: files, temporary files and rows alike."""
        return stored_blobs(self.data_dir / "blobs")

    def submit(self, *files: tuple[str, bytes], **spec: Any) -> pb.Batch:
        """Upload ``(name, bytes)`` pairs in one stream."""
        return self.stub.SubmitBatch(upload(pb.BatchSpec(**spec), files), timeout=WAIT)

    def settle(self, batch_id: str) -> list[pb.WatchBatchResponse]:
        """Watch the batch from a snapshot until it is terminal; every event seen."""
        request = pb.WatchBatchRequest(batch_id=batch_id)
        return list(self.stub.WatchBatch(request, timeout=WAIT))


ServerFactory = Callable[..., RunningServer]


# Pages of a many_pages PDF that keeps a worker busy long enough to be seen running:
# the service shows a start only after show_running_after (0.1 s by default), and a
# 300-page file took 0.13 s on a fast interpreter. About 0.4 s here.
SEEN_RUNNING_PAGES = 1_000


def wait_until_running(stub: batch_pb2_grpc.BatchServiceStub, batch_id: str) -> None:
    """Return once a file of the batch is running (in the snapshot or a later event)."""
    stream = stub.WatchBatch(pb.WatchBatchRequest(batch_id=batch_id), timeout=WAIT)
    for event in stream:
        # Every event, the snapshot included, carries the batch's counts.
        if event.counts.running:
            break
    else:
        raise AssertionError("the batch settled before any file was seen running")
    stream.cancel()


def upload(
    spec: pb.BatchSpec, files: Iterable[tuple[str, bytes]], chunk: int = 64 * 1024
) -> Iterator[pb.SubmitBatchRequest]:
    """The messages of an upload: spec, each file's header and chunks, then ``end``."""
    yield pb.SubmitBatchRequest(spec=spec)
    count = 0
    for name, data in files:
        yield pb.SubmitBatchRequest(file=pb.FileHeader(name=name, size_bytes=len(data)))
        for start in range(0, len(data), chunk):
            yield pb.SubmitBatchRequest(chunk=data[start : start + chunk])
        count += 1
    yield pb.SubmitBatchRequest(end=pb.UploadEnd(file_count=count))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers (settings as keywords, ``limits=`` as a dict); stop them all after."""
    running: list[RunningServer] = []

    def start(
        *,
        store: Store | None = None,
        limits: dict[str, int] | None = None,
        tracing: Tracing | None = None,
        **settings: Any,
    ) -> RunningServer:
        data_dir = tmp_path / f"server-{len(running)}"
        settings.setdefault("workers", 2)
        settings.setdefault("memory_limit_bytes", 1 << 30)
        settings.setdefault("shutdown_grace", 0.0)
        service = Service(
            ServerSettings(
                address="127.0.0.1:0",
                data_dir=data_dir,
                limits=UploadLimits(**(limits or {})),
                **settings,
            ),
            store=store,
            tracing=tracing,
        )
        service.start()
        channel = grpc.insecure_channel(service.address)
        server = RunningServer(
            service,
            channel,
            batch_pb2_grpc.BatchServiceStub(channel),
            Client(service.address, channel=channel),
            data_dir,
        )
        running.append(server)
        return server

    yield start
    for server in running:
        server.channel.close()
        server.service.stop(grace=0)


@pytest.fixture
def server(serve: ServerFactory) -> RunningServer:
    """One server with the default settings."""
    return serve()


@dataclass(frozen=True)
class RichError:
    """A refused call as the rich error model describes it."""

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    violations: list[tuple[str, str]]
    localized: str
    retry_delay: float | None


def rich_error(error: grpc.RpcError) -> RichError:
    """Decode ``google.rpc.Status`` details of a failed call with ``grpc_status``."""
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status on {error.code()}: {error.details()}"
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    localized = error_details_pb2.LocalizedMessage()
    retry = error_details_pb2.RetryInfo()
    for detail in status.details:
        for message in (info, bad, localized, retry):
            if detail.Is(message.DESCRIPTOR):
                detail.Unpack(message)
    return RichError(
        code=error.code(),
        message=status.message,
        reason=info.reason,
        domain=info.domain,
        metadata=dict(info.metadata),
        violations=[(v.field, v.description) for v in bad.field_violations],
        localized=localized.message,
        retry_delay=retry.retry_delay.ToTimedelta().total_seconds()
        if retry.HasField("retry_delay")
        else None,
    )


def refused(call: Callable[[], object]) -> RichError:
    """Run ``call``, which must fail, and decode its status."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return rich_error(raised.value)


def audited(data_dir: Path, action: str, request_id: str | None = None) -> list[str]:
    """The outcome of every ``action`` call (with ``request_id``, if given) the service
    in ``data_dir`` is done with.

    A call is audited before its answer leaves, and also when its client has gone: a
    test waits on this for the server to finish a call whose client cancelled it.
    """
    query = "SELECT outcome FROM audit WHERE action = ?"
    if request_id is not None:
        query += " AND request_id = ?"
    with contextlib.closing(sqlite3.connect(data_dir / DATABASE_NAME)) as db:
        rows = db.execute(f"{query} ORDER BY id", (action, *filter(None, [request_id])))
        return [str(outcome) for (outcome,) in rows]


def free_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_files(directory: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` into ``directory`` (created); return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


class TcpProxy:
    """Forwards loopback connections to ``target``; :meth:`drop` cuts every one at once.

    Stands in for a network that fails: the client's streams break off exactly as if a
    load balancer or a router had gone away, while the server keeps running.
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._owned: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name="test-proxy")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self.accepted += 1
                self._sockets |= {downstream, upstream}
                self._owned += [downstream, upstream]
            self._start(self._pump, downstream, upstream)
            self._start(self._pump, upstream, downstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._cut(source, sink)

    def _cut(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        """Cut every open connection; new ones are still accepted."""
        with self._lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        self._cut(*sockets)

    def close(self) -> None:
        """Stop accepting, cut everything and wait for every thread."""
        self._cut(self._listener)
        self._listener.close()
        self.drop()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(WAIT)
        for sock in self._owned:
            sock.close()


@pytest.fixture
def proxy_to() -> Iterator[Callable[[str], TcpProxy]]:
    """Make proxies to a server address; close them after the test."""
    proxies: list[TcpProxy] = []

    def make(target: str) -> TcpProxy:
        proxies.append(TcpProxy(target))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()
