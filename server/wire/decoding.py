"""Request messages that cannot be decoded are refused with ``INVALID_ARGUMENT``.

Left to itself, gRPC answers a request it cannot deserialize (bytes that are not the
method's message, a string field that is not UTF-8) with ``INTERNAL`` and logs a
traceback, as if the service had failed. :class:`DecodingInterceptor` gives every
handler a deserializer that cannot fail: an undecodable message becomes a marker, and
the call is refused as the caller's mistake, with the rich error model, before any
handler sees it. A client-streaming call is refused at the first bad message, through
the handler's own error handling, so a half-received upload is cleaned up as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final, NoReturn

import grpc
import structlog
from google.protobuf.message import DecodeError

from server.wire.errors import WireError, abort

__all__ = ["DecodingInterceptor", "MalformedRequest"]

log = structlog.get_logger(__name__)


class _Undecodable:
    """Stands in for a request message whose bytes did not decode."""


_UNDECODABLE: Final = _Undecodable()


class MalformedRequest(WireError):
    """A request message of ``method`` that is not a valid ``message_type``."""

    def __init__(self, method: str, message_type: str) -> None:
        super().__init__(
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_REQUEST",
            f"The request is not a valid {message_type} message (undecodable protobuf, or a "
            "string that is not UTF-8). Send the message the method's definition names.",
            metadata={"method": method},
        )


def _message_type(decode: Callable[[bytes], Any]) -> str:
    # The generated code registers ``SomeRequest.FromString``, bound to the class.
    owner = getattr(decode, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


def _tolerant(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode_or_mark(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError:
            return _UNDECODABLE

    return decode_or_mark


def _checked(requests: Iterator[Any], refusal: MalformedRequest) -> Iterator[Any]:
    for request in requests:
        if request is _UNDECODABLE:
            raise refusal
        yield request


def _guarded(
    handler: grpc.RpcMethodHandler[Any, Any], method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    assert handler.request_deserializer is not None
    refusal = MalformedRequest(method, _message_type(handler.request_deserializer))
    decode = _tolerant(handler.request_deserializer)
    serialize = handler.response_serializer

    def refuse(context: grpc.ServicerContext) -> NoReturn:
        log.warning("request_undecodable", method=method, peer=context.peer())
        abort(context, refusal)

    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        def one_to_one(request: Any, context: grpc.ServicerContext) -> Any:
            if request is _UNDECODABLE:
                refuse(context)
            return unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(one_to_one, decode, serialize)
    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        def one_to_many(request: Any, context: grpc.ServicerContext) -> Any:
            if request is _UNDECODABLE:
                refuse(context)
            return unary_stream(request, context)

        return grpc.unary_stream_rpc_method_handler(one_to_many, decode, serialize)
    if handler.stream_unary is not None:
        stream_unary = handler.stream_unary

        def many_to_one(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            try:
                return stream_unary(_checked(requests, refusal), context)
            except MalformedRequest:
                # A handler without its own error handling let the refusal through.
                refuse(context)

        return grpc.stream_unary_rpc_method_handler(many_to_one, decode, serialize)
    assert handler.stream_stream is not None
    stream_stream = handler.stream_stream

    def many_to_many(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from stream_stream(_checked(requests, refusal), context)
        except MalformedRequest:
            refuse(context)

    return grpc.stream_stream_rpc_method_handler(many_to_many, decode, serialize)


class DecodingInterceptor(grpc.ServerInterceptor):
    """Refuses undecodable request messages of every service with ``INVALID_ARGUMENT``."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """See :meth:`grpc.ServerInterceptor.intercept_service`."""
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _guarded(handler, handler_call_details.method)
