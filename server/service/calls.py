"""Seeing every call from start to end: the one interceptor behind RPC metrics and traces.

:class:`ObservingInterceptor` wraps each method handler so that an observer learns when
a call starts, runs the handler's code inside the observer's scope (a trace span is
current there), and hears the call's final status code once gRPC has finished it.

The end comes from ``context.add_callback``, which gRPC runs when the call is over,
whoever ended it: a stream counts when it ends, not when its handler returns, and a
call whose client went away still ends. The code is the one the handler set
(``abort``, ``set_code``), else ``UNKNOWN`` when it raised, ``OK`` when it finished, and
``CANCELLED`` (``DEADLINE_EXCEEDED`` once the deadline passed) when the call ended
before its handler did. Calls to methods the server does not have are never seen: their
names come from the caller, and a label per made-up name would grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

__all__ = ["CallObserver", "CallScope", "Method", "ObservingInterceptor"]


@dataclass(frozen=True, slots=True)
class Method:
    """A method as gRPC names it: ``/pdfbatch.v1.BatchService/GetBatch``.

    Attributes:
        service: ``pdfbatch.v1.BatchService``.
        name: ``GetBatch``.
        kind: ``unary``, ``client_stream``, ``server_stream`` or ``bidi_stream``, as
            grpc-prometheus labels ``grpc_type``.
    """

    service: str
    name: str
    kind: str

    @property
    def full_name(self) -> str:
        """``pdfbatch.v1.BatchService/GetBatch``."""
        return f"{self.service}/{self.name}"


class CallScope(Protocol):
    """One call, as an observer follows it."""

    def running(self) -> AbstractContextManager[object]:
        """Entered around each stretch of the handler's code (a stream's every step)."""
        ...

    def returned(self, response: object) -> None:
        """The handler of a single-response method returned ``response``."""
        ...

    def ended(self, code: grpc.StatusCode) -> None:
        """The call is over with ``code``; called once, on a gRPC thread: be quick."""
        ...


class CallObserver(Protocol):
    """Told of every call to a method the server has."""

    def started(
        self, method: Method, context: grpc.ServicerContext, request: object | None
    ) -> CallScope:
        """A call began; ``request`` is its request message, ``None`` for a stream of them."""
        ...


class _Call:
    """What the wrapper learns of the handler, read by the end callback."""

    __slots__ = ("context", "outcome", "scope")

    def __init__(self, scope: CallScope, context: grpc.ServicerContext) -> None:
        self.scope = scope
        self.context = context
        # None while the handler runs; then "finished" or "raised".
        self.outcome: str | None = None

    def end(self) -> None:
        code: grpc.StatusCode | None = getattr(self.context, "code", lambda: None)()
        if code is None:
            if self.outcome == "finished":
                code = grpc.StatusCode.OK
            elif self.outcome == "raised":
                code = grpc.StatusCode.UNKNOWN
            elif _deadline_passed(self.context):
                code = grpc.StatusCode.DEADLINE_EXCEEDED
            else:
                code = grpc.StatusCode.CANCELLED
        self.scope.ended(code)


# The server's deadline is the client's, counted from when the call arrived: the
# client gives up (and the server hears of it) a transit time before the server's own
# deadline passes. A call cut off this close to its deadline ran out of time.
_DEADLINE_SLACK = 0.05


def _deadline_passed(context: grpc.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= _DEADLINE_SLACK


def _begin(
    observer: CallObserver, method: Method, context: grpc.ServicerContext, request: object | None
) -> _Call:
    call = _Call(observer.started(method, context, request), context)
    if not context.add_callback(call.end):
        call.end()  # over before it began: a client that left at once
    return call


@contextlib.contextmanager
def _outcome(call: _Call) -> Iterator[None]:
    try:
        yield
    except BaseException:
        call.outcome = "raised"
        raise


def _stepwise(call: _Call, responses: Iterator[Any]) -> Iterator[Any]:
    """The responses, each produced inside the call's scope; the end marked."""
    while True:
        with call.scope.running(), _outcome(call):
            try:
                response = next(responses)
            except StopIteration:
                call.outcome = "finished"
                return
        yield response


async def _stepwise_from_loop(call: _Call, responses: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """:func:`_stepwise` for a stream sent from the server's event loop."""
    async with contextlib.aclosing(responses) as stream:  # type: ignore[type-var]
        while True:
            with call.scope.running():
                try:
                    response = await anext(stream)
                except StopAsyncIteration:
                    call.outcome = "finished"
                    return
                except asyncio.CancelledError:
                    # The call ended elsewhere (its client left, its deadline passed).
                    raise
                except BaseException:
                    call.outcome = "raised"
                    raise
            yield response


def _steps(call: _Call, responses: Any) -> Any:
    """The responses of a stream, observed step by step, whichever way they come."""
    if hasattr(responses, "__anext__"):
        return _stepwise_from_loop(call, responses)
    return _stepwise(call, iter(responses))


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any], observer: CallObserver, method_path: str
) -> grpc.RpcMethodHandler[Any, Any]:
    service, _, name = method_path.lstrip("/").rpartition("/")
    decode, encode = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary
        method = Method(service, name, "unary")

        def one_to_one(request: Any, context: grpc.ServicerContext) -> Any:
            call = _begin(observer, method, context, request)
            with call.scope.running(), _outcome(call):
                response = unary_unary(request, context)
                call.scope.returned(response)
            call.outcome = "finished"
            return response

        return grpc.unary_unary_rpc_method_handler(one_to_one, decode, encode)
    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream
        method = Method(service, name, "server_stream")

        def one_to_many(request: Any, context: grpc.ServicerContext) -> Any:
            call = _begin(observer, method, context, request)
            with call.scope.running(), _outcome(call):
                responses = unary_stream(request, context)
            return _steps(call, responses)

        return grpc.unary_stream_rpc_method_handler(one_to_many, decode, encode)
    if handler.stream_unary is not None:
        stream_unary = handler.stream_unary
        method = Method(service, name, "client_stream")

        def many_to_one(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            call = _begin(observer, method, context, None)
            with call.scope.running(), _outcome(call):
                response = stream_unary(requests, context)
                call.scope.returned(response)
            call.outcome = "finished"
            return response

        return grpc.stream_unary_rpc_method_handler(many_to_one, decode, encode)
    assert handler.stream_stream is not None
    stream_stream = handler.stream_stream
    method = Method(service, name, "bidi_stream")

    def many_to_many(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        call = _begin(observer, method, context, None)
        with call.scope.running(), _outcome(call):
            responses = stream_stream(requests, context)
        return _steps(call, responses)

    return grpc.stream_stream_rpc_method_handler(many_to_many, decode, encode)


class ObservingInterceptor(grpc.ServerInterceptor):
    """Shows ``observer`` every call to a method the server has, start to end.

    Put it first among the interceptors to see the calls the others refuse too
    (authentication, undecodable requests).
    """

    def __init__(self, observer: CallObserver) -> None:
        self._observer = observer

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """See :meth:`grpc.ServerInterceptor.intercept_service`."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return _wrap(handler, self._observer, handler_call_details.method)
