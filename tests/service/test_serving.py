"""The asyncio server carrying threaded-style handlers: what a handler can count on."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from server.service.serving import AsyncioServer
from tests.helpers.processes import eventually

_WAIT = 30.0
_SERVICE = "test.Echo"
_call_name: contextvars.ContextVar[str] = contextvars.ContextVar("call_name", default="")


class _Echo:
    """Handlers that note what happened to them, for the tests to read."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.closed_in: list[str] = []
        self.stopped_reading = threading.Event()
        self.context: grpc.ServicerContext | None = None
        self.read: list[bytes] = []
        self.release = threading.Event()
        self.holding = 0
        self.noted: list[bool] = []
        self._lock = threading.Lock()

    def ticks(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        _call_name.set(request.decode())
        context.add_callback(self.ended.set)
        try:
            while context.is_active():
                yield b"tick"
        finally:
            self.closed_in.append(_call_name.get())

    def collect(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self.context = context
        try:
            for request in requests:
                self.read.append(request)
        finally:
            # grpc.RpcError, or the end of the stream: which depends on whether the
            # client's cancel or its stream's end reaches the server first.
            self.stopped_reading.set()
        return b"%d" % len(self.read)

    def hold(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.holding += 1
        self.release.wait(_WAIT)
        return b"held"

    def note(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.noted.append(context.is_active())
        return b"noted"

    def refuse(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.send_initial_metadata((("x-seen", request.decode()),))
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not now")
        raise AssertionError("abort returned")


class _CountedThreads(ThreadPoolExecutor):
    """A pool that counts the work handed to it: a call queued for a thread is seen."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers=max_workers)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


_THREADS = 4


@pytest.fixture
def served() -> Iterator[tuple[_Echo, grpc.Channel, _CountedThreads]]:
    """The handlers, served on loopback; a channel to them; the server's threads."""
    handlers = _Echo()
    threads = _CountedThreads(_THREADS)
    server = AsyncioServer(threads)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                _SERVICE,
                {
                    "Ticks": grpc.unary_stream_rpc_method_handler(handlers.ticks),
                    "Collect": grpc.stream_unary_rpc_method_handler(handlers.collect),
                    "Refuse": grpc.unary_unary_rpc_method_handler(handlers.refuse),
                    "Hold": grpc.unary_unary_rpc_method_handler(handlers.hold),
                    "Note": grpc.unary_unary_rpc_method_handler(handlers.note),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield handlers, channel, threads
    finally:
        handlers.release.set()  # a test that failed midway holds no thread
        channel.close()
        server.stop(None).wait(_WAIT)
        threads.shutdown(wait=True)
        server.close()


@pytest.fixture
def echo(served: tuple[_Echo, grpc.Channel, _CountedThreads]) -> tuple[_Echo, grpc.Channel]:
    handlers, channel, _ = served
    return handlers, channel


def _method(channel: grpc.Channel, kind: str, name: str) -> Any:
    return getattr(channel, kind)(f"/{_SERVICE}/{name}")


def test_a_stream_whose_client_left_runs_its_callbacks_and_closes_in_its_own_context(
    echo: tuple[_Echo, grpc.Channel],
) -> None:
    handlers, channel = echo
    stream = _method(channel, "unary_stream", "Ticks")(b"first", timeout=_WAIT)
    assert next(stream) == b"tick"

    stream.cancel()

    assert handlers.ended.wait(_WAIT)
    # The generator's finally ran, with the context variables its call set.
    eventually(lambda: handlers.closed_in == ["first"])


def test_a_client_stream_that_breaks_off_stops_the_handlers_reading(
    echo: tuple[_Echo, grpc.Channel],
) -> None:
    handlers, channel = echo
    sent, cancelled = threading.Event(), threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"a"
        yield b"b"
        sent.set()
        cancelled.wait(_WAIT)  # no end: the client cancels instead

    call = _method(channel, "stream_unary", "Collect").future(requests(), timeout=_WAIT)
    assert sent.wait(_WAIT)
    eventually(lambda: len(handlers.read) == 2)
    call.cancel()
    cancelled.set()

    assert handlers.stopped_reading.wait(_WAIT)
    assert handlers.read == [b"a", b"b"]
    context = handlers.context
    assert context is not None
    eventually(lambda: not context.is_active())


def test_a_client_stream_read_to_its_end(echo: tuple[_Echo, grpc.Channel]) -> None:
    _, channel = echo
    answer = _method(channel, "stream_unary", "Collect")(iter([b"x", b"y", b"z"]), timeout=_WAIT)
    assert answer == b"3"


def test_an_abort_on_a_handler_thread_reaches_the_client_with_the_initial_metadata(
    echo: tuple[_Echo, grpc.Channel],
) -> None:
    _, channel = echo
    with pytest.raises(grpc.RpcError) as refused:
        _method(channel, "unary_unary", "Refuse").with_call(b"42", timeout=_WAIT)
    error: Any = refused.value
    assert (error.code(), error.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "not now")
    assert ("x-seen", "42") in error.initial_metadata()


def test_a_call_whose_client_left_while_it_waited_for_a_thread_still_runs_its_handler(
    served: tuple[_Echo, grpc.Channel, _CountedThreads],
) -> None:
    # A handler that never runs never ends: the service's audit and call metrics,
    # which a handler's end writes, would not know the call came.
    handlers, channel, threads = served
    held = [
        _method(channel, "unary_unary", "Hold").future(b"", timeout=_WAIT) for _ in range(_THREADS)
    ]
    eventually(lambda: handlers.holding == _THREADS)
    noted = _method(channel, "unary_unary", "Note").future(b"", timeout=_WAIT)
    eventually(lambda: threads.submitted == _THREADS + 1)  # queued: no thread is free

    noted.cancel()
    # Answered on the server's loop after the cancel, which it therefore has read.
    with pytest.raises(grpc.RpcError) as unknown:
        _method(channel, "unary_unary", "Unknown")(b"", timeout=_WAIT)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    handlers.release.set()

    assert [call.result(_WAIT) for call in held] == [b"held"] * _THREADS
    eventually(lambda: handlers.noted == [False])
