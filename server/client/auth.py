"""The client's side of authentication: find the token, send it with every call.

The token comes from a file (``--token-file``, ``PDFBATCH_TOKEN_FILE``; its first line)
or from ``PDFBATCH_TOKEN``, never from a command-line word, which other users of the
machine could read in the process list. :class:`BearerToken` adds
``authorization: Bearer <token>`` to every call made on a channel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = ["BearerToken", "read_token"]


def read_token(token_file: Path | None, token: str | None) -> str | None:
    """The token to send: the first line of ``token_file`` if given, else ``token``.

    Raises:
        OSError: ``token_file`` cannot be read.
        ValueError: ``token_file`` holds no token.
    """
    if token_file is not None:
        lines = token_file.read_text().splitlines()
        if not lines or not lines[0].strip():
            raise ValueError(f"token file {token_file} is empty")
        return lines[0].strip()
    return token or None


@dataclass(frozen=True, slots=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Sends ``authorization: Bearer <token>`` with every call of an intercepted channel.

    Use ``grpc.intercept_channel(channel, BearerToken(token))``.

    Args:
        token: The caller's token.
    """

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:
        return "BearerToken(<hidden>)"

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [m for m in details.metadata or () if m[0] != "authorization"]
        return _CallDetails(
            details.method,
            details.timeout,
            (*metadata, self._header),
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        """Add the token to a unary call."""
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        """Add the token to a call with a streamed response."""
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        """Add the token to a call with a streamed request."""
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        """Add the token to a call streamed both ways."""
        return continuation(self._with_token(details), request_iterator)
