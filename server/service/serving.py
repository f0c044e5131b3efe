"""The gRPC server: grpc.aio's, on an event loop of its own, serving threaded-style handlers.

grpcio's threaded server sends each message of a stream as a handshake between the
handler's thread and the server's one completion-queue thread. With 50 watches open on
a busy batch that cost about 150 µs of CPU a message here, and every commit woke 50
threads at once. grpc.aio sends from one event loop: 58 µs a message in the same
scenario, counting everything else its loop and poller thread did meanwhile.

The handlers stay as they were written for the threaded server: each call's handler runs
on a thread of ``threads``, with a :class:`_Context` that behaves like the threaded
server's, in a copy of the context variables taken when the call arrived (every step of
a stream in the same copy, as the threaded server does). A handler handed to a thread
runs even if its client leaves before a thread is free, as on the threaded server: it
finds the call over and ends, and what a handler does at its end (the service audits the
call) still happens. A server stream whose handler returns an asynchronous iterator (a
watch) is then sent from the loop, without holding a thread between messages; any other
stream takes a thread for each message. A client stream reaches its handler as an
iterator that waits on the handler's thread.

The interceptors are ``grpc.ServerInterceptor``s, run on the loop when a call arrives,
as the threaded server runs them on its polling thread: they must not block.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeAlias

import grpc
import structlog
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # no stubs: see _keep_grpc_aio

__all__ = ["AsyncioServer"]

log = structlog.get_logger(__name__)

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_DONE = object()


class _Aborted(Exception):
    """Ends a handler that called :meth:`_Context.abort` (grpc's threaded server raises a
    bare ``Exception`` there: handlers that catch ``Exception`` behave the same)."""


class _RequestsBroken(grpc.RpcError):
    """The client's stream broke off: the call ended before its handler read it all."""


class _Context(grpc.ServicerContext):
    """One call, as a handler on a thread sees it.

    What the call's C core object answers (peer, metadata) is read once on the loop when
    the call arrives: grpc.aio releases that object when the call ends, which may be
    before a handler thread asks.
    """

    def __init__(self, call: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._call = call
        self._loop = loop
        self._peer = str(call.peer())
        self._metadata = call.invocation_metadata()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self._reads: set[concurrent.futures.Future[Any]] = set()
        self._ended = False
        self._task = asyncio.current_task()
        self._initial_metadata: Sequence[tuple[str, str | bytes]] | None = None
        self._initial_metadata_sent = False
        self._abort: tuple[grpc.StatusCode, str, Any] | None = None
        self._code: grpc.StatusCode | None = None
        call.add_done_callback(lambda _: self._end())

    # The call as the handler sees it ------------------------------------------------

    def is_active(self) -> bool:
        return not self._ended

    def time_remaining(self) -> float | None:  # type: ignore[override]  # None: no deadline
        remaining: float | None = self._call.time_remaining()
        return remaining

    def cancel(self) -> bool:
        task = self._task
        if task is None or self._ended:
            return False
        self._loop.call_soon_threadsafe(task.cancel)
        return True

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if self._ended:
                return False
            self._callbacks.append(callback)
            return True

    def invocation_metadata(self) -> Any:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> Any:
        return None

    def peer_identity_key(self) -> str | None:
        return None

    def auth_context(self) -> dict[str, Any]:
        return {}

    def send_initial_metadata(self, initial_metadata: Any) -> None:
        # Sent by the loop ahead of the first message or the status.
        self._initial_metadata = tuple(initial_metadata)

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._call.set_trailing_metadata(tuple(trailing_metadata))

    def abort(self, code: grpc.StatusCode, details: str) -> Any:
        self._abort = (code, details, None)
        self._code = code
        raise _Aborted()

    def abort_with_status(self, status: Any) -> Any:
        self._abort = (status.code, status.details, tuple(status.trailing_metadata or ()))
        self._code = status.code
        raise _Aborted()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code
        self._call.set_code(code)

    def set_details(self, details: str) -> None:
        self._call.set_details(details)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    # The loop's side ---------------------------------------------------------------

    def _end(self) -> None:
        """The call is over (answered, refused, or its client gone): run the callbacks."""
        with self._lock:
            self._ended = True
            callbacks, self._callbacks = self._callbacks, []
            reads, self._reads = set(self._reads), set()
        for read in reads:
            read.cancel()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("call_callback_failed")

    async def _flush(self) -> None:
        if self._initial_metadata is not None and not self._initial_metadata_sent:
            self._initial_metadata_sent = True
            await self._call.send_initial_metadata(self._initial_metadata)

    async def _send_abort(self) -> None:
        assert self._abort is not None
        code, details, trailing = self._abort
        await self._flush()
        if trailing is None:
            await self._call.abort(code, details)
        else:
            await self._call.abort(code, details, trailing)

    def _read(self) -> Any:
        """The client's next message, on a handler thread; ``grpc.aio.EOF`` at its end."""
        with self._lock:
            if self._ended:
                raise _RequestsBroken()
            try:
                read = asyncio.run_coroutine_threadsafe(self._call.read(), self._loop)
            except RuntimeError as closed:
                raise _RequestsBroken() from closed
            self._reads.add(read)
        try:
            return read.result()
        except (concurrent.futures.CancelledError, Exception) as broken:
            raise _RequestsBroken() from broken
        finally:
            with self._lock:
                self._reads.discard(read)


def _next(steps: Iterator[Any]) -> Any:
    return next(steps, _DONE)


def _requests(context: _Context) -> Iterator[Any]:
    """The client's messages, read as the handler asks for them."""
    while True:
        message = context._read()
        if message is grpc.aio.EOF:
            if context._ended:
                raise _RequestsBroken()
            return
        yield message


class AsyncioServer:
    """The part of ``grpc.Server`` the service uses, on grpc.aio (see the module).

    Args:
        threads: Runs the handlers.
        interceptors: Applied in order, the first outermost, as ``grpc.server`` does.
        options: Channel arguments, as ``grpc.server`` takes them.
        maximum_concurrent_rpcs: Calls beyond it are refused with ``RESOURCE_EXHAUSTED``.
    """

    def __init__(
        self,
        threads: concurrent.futures.ThreadPoolExecutor,
        *,
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
        maximum_concurrent_rpcs: int | None = None,
    ) -> None:
        self._threads = threads
        self._interceptors = tuple(interceptors)
        self._registered: dict[str, _Handler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pdfbatch-grpc-loop", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._server: grpc.aio.Server = self._on_loop(
                self._make(tuple(options), maximum_concurrent_rpcs)
            )
        except BaseException:
            self.close()
            raise

    async def _make(
        self, options: tuple[tuple[str, Any], ...], maximum_concurrent_rpcs: int | None
    ) -> grpc.aio.Server:
        _keep_grpc_aio()
        return grpc.aio.server(
            handlers=[_Bridge(self)],
            options=options,
            maximum_concurrent_rpcs=maximum_concurrent_rpcs,
        )

    def _on_loop(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    # grpc.Server's methods -------------------------------------------------------------

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """See ``grpc.Server.add_generic_rpc_handlers``."""
        self._generic.extend(handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, _Handler]
    ) -> None:
        """See ``grpc.Server.add_registered_method_handlers``; the last one registered wins."""
        for method, handler in method_handlers.items():
            self._registered[f"/{service_name}/{method}"] = handler

    def add_insecure_port(self, address: str) -> int:
        """See ``grpc.Server.add_insecure_port``."""
        return int(self._on_loop(self._bind(address, None)))

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        """See ``grpc.Server.add_secure_port``."""
        return int(self._on_loop(self._bind(address, credentials)))

    async def _bind(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        if credentials is None:
            return self._server.add_insecure_port(address)
        return self._server.add_secure_port(address, credentials)

    def start(self) -> None:
        """See ``grpc.Server.start``."""
        self._on_loop(self._server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """See ``grpc.Server.stop``: set once every call has ended. The loop runs on, for
        handler threads that still finish; :meth:`close` ends it."""
        stopped = threading.Event()
        if self._closed:
            stopped.set()
            return stopped
        done = asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop)
        done.add_done_callback(lambda _: stopped.set())
        return stopped

    def close(self) -> None:
        """Stop the loop and its thread, after :meth:`stop` and once no handler runs."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._on_loop(self._loop.shutdown_asyncgens())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    # Calls -------------------------------------------------------------------------

    def _lookup(self, details: grpc.HandlerCallDetails) -> _Handler | None:
        handler = self._registered.get(details.method)
        if handler is not None:
            return handler
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None

    def _intercepted(self, details: grpc.HandlerCallDetails) -> _Handler | None:
        def after(index: int) -> Callable[[grpc.HandlerCallDetails], _Handler | None]:
            if index == len(self._interceptors):
                return self._lookup
            interceptor = self._interceptors[index]
            return lambda d: interceptor.intercept_service(after(index + 1), d)

        return after(0)(details)

    async def _run(self, context: contextvars.Context, function: Any, *args: Any) -> Any:
        # Shielded: a call whose client leaves while its handler waits for a free thread
        # still runs the handler, which finds the call over and ends as it would have a
        # moment later. Cancelling the wait would drop the queued handler, and with it
        # whatever the handler does at its end.
        handler = self._threads.submit(context.run, function, *args)
        return await asyncio.shield(asyncio.wrap_future(handler))

    async def _answer(
        self, call: Any, behavior: Any, request: Any, *, from_stream: bool, to_stream: bool
    ) -> Any:
        """Run ``behavior`` on a call thread; send what a stream of it yields, or return
        its one response. An abort on the thread becomes the call's status here."""
        context = _Context(call, self._loop)
        variables = contextvars.copy_context()
        argument = _requests(context) if from_stream else request
        try:
            response = await self._run(variables, behavior, argument, context)
            if to_stream:
                await self._send(call, context, variables, response)
                response = None
        except _Aborted:
            await context._send_abort()
            raise
        await context._flush()
        return response

    async def _send(
        self, call: Any, context: _Context, variables: contextvars.Context, responses: Any
    ) -> None:
        if not hasattr(responses, "__anext__"):
            await self._send_steps(call, context, variables, iter(responses))
            return
        async with contextlib.aclosing(responses):
            async for response in responses:
                await context._flush()
                await call.write(response)

    async def _send_steps(
        self, call: Any, context: _Context, variables: contextvars.Context, steps: Iterator[Any]
    ) -> None:
        """Send what ``steps`` yields, each step on a handler thread; then close it, in the
        call's context variables, once no step runs (also when the call ended first)."""
        step: concurrent.futures.Future[Any] | None = None
        try:
            while True:
                step = self._threads.submit(variables.run, _next, steps)
                # Shielded as in _run: a first step dropped from the queue would leave a
                # handler that never began, and so never ended.
                response = await asyncio.shield(asyncio.wrap_future(step))
                if response is _DONE:
                    return
                await context._flush()
                await call.write(response)
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                if step is None or step.done():
                    self._close_steps(variables, close)
                else:
                    step.add_done_callback(lambda _: self._close_steps(variables, close))

    def _close_steps(self, variables: contextvars.Context, close: Callable[[], None]) -> None:
        try:
            self._threads.submit(variables.run, close)
        except RuntimeError:
            variables.run(close)  # the threads are shut down: no step can run any more

    def _asynchronous(self, handler: _Handler) -> _Handler:
        """``handler``'s behaviour run as described in the module."""
        decode, encode = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            one_to_one = handler.unary_unary

            async def unary_unary(request: Any, call: Any) -> Any:
                return await self._answer(
                    call, one_to_one, request, from_stream=False, to_stream=False
                )

            return grpc.unary_unary_rpc_method_handler(unary_unary, decode, encode)
        if handler.stream_unary is not None:
            many_to_one = handler.stream_unary

            async def stream_unary(_: Any, call: Any) -> Any:
                return await self._answer(
                    call, many_to_one, None, from_stream=True, to_stream=False
                )

            return grpc.stream_unary_rpc_method_handler(stream_unary, decode, encode)
        if handler.unary_stream is not None:
            one_to_many = handler.unary_stream

            async def unary_stream(request: Any, call: Any) -> None:
                await self._answer(call, one_to_many, request, from_stream=False, to_stream=True)

            return grpc.unary_stream_rpc_method_handler(unary_stream, decode, encode)
        many_to_many = handler.stream_stream
        assert many_to_many is not None

        async def stream_stream(_: Any, call: Any) -> None:
            await self._answer(call, many_to_many, None, from_stream=True, to_stream=True)

        return grpc.stream_stream_rpc_method_handler(stream_stream, decode, encode)


@functools.cache
def _keep_grpc_aio() -> None:
    """Keep grpc.aio's process-wide state from the first server to the process's end.

    Its completion queue is one per process, polled by a thread of its own, and torn
    down when the last grpc.aio object is garbage collected: the thread would come and
    go with the collector's timing. Called on a server's loop, which it binds.
    """
    cygrpc.init_grpc_aio()


class _Bridge(grpc.GenericRpcHandler):
    """grpc.aio's one handler: the interceptors and handlers, adapted (see the module)."""

    def __init__(self, server: AsyncioServer) -> None:
        self._server = server

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> _Handler | None:
        handler = self._server._intercepted(handler_call_details)
        return None if handler is None else self._server._asynchronous(handler)
