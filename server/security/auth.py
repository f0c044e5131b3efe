"""Who is calling: bearer tokens, the tenants they stand for, and the gate that checks them.

A caller sends ``authorization: Bearer <token>`` with every call. The service keeps no
token, only its SHA-256 (``sha256:<hex>``, as ``pdfbatch hash-token`` prints it), per
tenant, in a TOML or JSON file::

    [tenants]
    acme = ["sha256:9f86d0...", "sha256:60303a..."]   # two tokens, e.g. during a rotation
    globex = ["sha256:fcde2b..."]

The presented token is hashed and compared with every configured hash in constant time
(``hmac.compare_digest``), so neither the answer nor its timing says how close a guess
came. A missing, malformed or unknown token gets ``UNAUTHENTICATED`` with one fixed
message and no details, whichever it was.

:class:`AuthInterceptor` checks every call before any handler runs; only the health
and reflection services stay open (load balancers probe health without credentials,
and reflection describes the public API, not data). Without a tokens file the service
is single-tenant: every caller is the anonymous tenant ``""`` and the service listens
on loopback only (:func:`check_listen_address`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import string
import threading
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog

from server.security.ratelimit import RateLimiter
from server.wire.errors import WireError, abort

__all__ = [
    "OPEN_SERVICES",
    "UNAUTHENTICATED_MESSAGE",
    "AuthInterceptor",
    "Authenticator",
    "ConfigurationError",
    "TenantTokens",
    "check_listen_address",
    "check_token",
    "generate_token",
    "hash_token",
    "is_loopback",
]

log = structlog.get_logger(__name__)

HASH_PREFIX = "sha256:"
MIN_TOKEN_CHARS = 16
UNAUTHENTICATED_MESSAGE = "A valid bearer token is required."
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + string.punctuation)


class ConfigurationError(RuntimeError):
    """The security configuration cannot be used: the service must not start."""


def hash_token(token: str) -> str:
    """The form a token is configured in: ``sha256:`` and its SHA-256 in hex."""
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def check_token(token: str) -> str:
    """Return ``token`` if it can be a bearer token worth its name.

    Raises:
        ValueError: Shorter than 16 characters, or other than printable ASCII without
            spaces (all a header value may carry).
    """
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"a token needs at least {MIN_TOKEN_CHARS} characters")
    if not set(token) <= _TOKEN_CHARS:
        raise ValueError("a token may only hold printable ASCII characters, without spaces")
    return token


def generate_token() -> str:
    """A new random token: 256 bits, URL-safe base64."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class TenantTokens:
    """The tenant of each configured token hash.

    Attributes:
        entries: (SHA-256 digest, tenant) pairs.
    """

    entries: tuple[tuple[bytes, str], ...]

    @property
    def tenants(self) -> frozenset[str]:
        """Every configured tenant."""
        return frozenset(tenant for _, tenant in self.entries)

    @classmethod
    def load(cls, path: Path) -> TenantTokens:
        """Read a tokens file: JSON if its name ends in ``.json``, TOML otherwise.

        Raises:
            ConfigurationError: The file cannot be read, or breaks a rule (at least one
                tenant; names of 1 to 64 letters, digits, ``.``, ``_``, ``-``; each with
                at least one ``sha256:<64 hex digits>``; no hash twice).
        """
        try:
            text = path.read_text()
            document = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ConfigurationError(f"cannot read tokens file {path}: {error}") from None
        tenants = document.get("tenants") if isinstance(document, dict) else None
        if not isinstance(tenants, dict) or not tenants:
            raise ConfigurationError(f"tokens file {path}: no [tenants] table with tenants in it")
        return cls(tuple(_entries(tenants, f"tokens file {path}")))


def _entries(tenants: Mapping[str, Any], where: str) -> Iterable[tuple[bytes, str]]:
    seen: set[str] = set()
    for tenant, hashes in tenants.items():
        if not _TENANT.fullmatch(tenant):
            raise ConfigurationError(
                f"{where}: tenant name {tenant!r} must be 1 to 64 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )
        if not isinstance(hashes, list) or not hashes:
            raise ConfigurationError(f"{where}: tenant {tenant!r} needs a list of token hashes")
        for entry in hashes:
            if not isinstance(entry, str) or not _HASH.fullmatch(entry):
                raise ConfigurationError(
                    f"{where}: tenant {tenant!r}: each token hash must look like "
                    "'sha256:<64 lowercase hex digits>', as `pdfbatch hash-token` prints it"
                )
            if entry in seen:
                raise ConfigurationError(f"{where}: a token hash is listed twice")
            seen.add(entry)
            yield bytes.fromhex(entry.removeprefix(HASH_PREFIX)), tenant


Metadata = Iterable[tuple[str, str | bytes]]


class Authenticator:
    """Tells the tenant of a call from its bearer token.

    Args:
        tokens: The configured tokens; ``None`` for the single-tenant service, where
            every caller is the anonymous tenant ``""``.
    """

    def __init__(self, tokens: TenantTokens | None) -> None:
        self._tokens = tokens

    @property
    def required(self) -> bool:
        """Whether callers must present a token."""
        return self._tokens is not None

    def tenant_for(self, metadata: Metadata | None) -> str | None:
        """The tenant whose token the call's metadata carries; ``None`` if none does."""
        if self._tokens is None:
            return ""
        values = [value for key, value in metadata or () if key == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        scheme, _, token = values[0].partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        presented = hashlib.sha256(token.encode()).digest()
        found = None
        # Every entry is compared, found or not: the time taken says nothing.
        for digest, tenant in self._tokens.entries:
            if hmac.compare_digest(digest, presented):
                found = tenant
        return found

    def caller(self, context: grpc.ServicerContext) -> str:
        """The calling tenant; owners of batches and idempotency keys are these names.

        Raises:
            WireError: ``UNAUTHENTICATED``: the call carries no valid token. The
                :class:`AuthInterceptor` refuses such calls before they get here.
        """
        tenant = self.tenant_for(context.invocation_metadata())
        if tenant is None:
            raise WireError(
                grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", UNAUTHENTICATED_MESSAGE
            )
        return tenant


def _peer_host(peer: str) -> str:
    """``ipv4:10.0.0.7:53512`` -> ``ipv4:10.0.0.7``: a peer's connections share one key."""
    return peer.rpartition(":")[0] or peer


def _denial(
    handler: grpc.RpcMethodHandler[Any, Any], failures: RateLimiter | None
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that refuses every call.

    A peer's failures beyond the ``failures`` limit are refused with
    ``RESOURCE_EXHAUSTED`` and a ``RetryInfo``, unlogged: a guesser learns to wait, and
    the log keeps at most the limit's lines per peer.
    """

    def deny(request: object, context: grpc.ServicerContext) -> Any:
        del request
        if failures is not None:
            try:
                failures.acquire(_peer_host(context.peer()))
            except WireError as throttled:
                abort(context, throttled)
        log.warning("call_unauthenticated", peer=context.peer())
        context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

    make: Callable[..., grpc.RpcMethodHandler[Any, Any]]
    match handler.request_streaming, handler.response_streaming:
        case (False, False):
            make = grpc.unary_unary_rpc_method_handler
        case (False, True):
            make = grpc.unary_stream_rpc_method_handler
        case (True, False):
            make = grpc.stream_unary_rpc_method_handler
        case _:
            make = grpc.stream_stream_rpc_method_handler
    # The request is never read: nothing of it is even deserialized.
    return make(deny, request_deserializer=None, response_serializer=None)


def _bounded(
    handler: grpc.RpcMethodHandler[Any, Any], slots: threading.BoundedSemaphore, limit: int
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler``'s streams (health's watches, reflection), at most ``limit`` at once in
    all; more are refused at once, so that callers without a token cannot hold the
    threads that tenants' calls need."""
    refusal = WireError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_OPEN_STREAMS",
        f"At most {limit} health watches and reflection streams may be open at once; "
        "close one, then try again.",
        retry_after=1.0,
    )

    def held(stream: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from stream
        finally:
            slots.release()

    def take(context: grpc.ServicerContext) -> None:
        if not slots.acquire(blocking=False):
            abort(context, refusal)

    decode, encode = handler.request_deserializer, handler.response_serializer
    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        def one_to_many(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            take(context)
            return held(unary_stream(request, context), context)

        return grpc.unary_stream_rpc_method_handler(one_to_many, decode, encode)
    stream_stream = handler.stream_stream
    assert stream_stream is not None

    def many_to_many(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        take(context)
        return held(stream_stream(requests, context), context)

    return grpc.stream_stream_rpc_method_handler(many_to_many, decode, encode)


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses every call without a valid token, except to :data:`OPEN_SERVICES`.

    Runs on the server's event loop when a call arrives, before a handler thread is
    taken, so it only hashes and compares; the refusal itself runs as a handler that
    never reads the request.

    Args:
        authenticator: Knows the tokens.
        failures: Failed authentications each peer may have before they are refused
            as too many. Default none: no limit. Right tokens never meet it.
        open_streams: Streams of the open services (health's watches, reflection),
            which hold a thread each, allowed at once for everyone together. Default 8.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        failures: RateLimiter | None = None,
        *,
        open_streams: int = 8,
    ) -> None:
        self._authenticator = authenticator
        self._failures = failures
        self._open_streams = threading.BoundedSemaphore(open_streams)
        self._open_limit = open_streams

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """See :meth:`grpc.ServerInterceptor.intercept_service`."""
        handler = continuation(handler_call_details)
        service = handler_call_details.method.lstrip("/").rpartition("/")[0]
        if handler is None:
            return handler
        if service in OPEN_SERVICES:
            # Anyone may open these: their streams, which hold a thread each, are bounded.
            if handler.unary_stream is None and handler.stream_stream is None:
                return handler
            return _bounded(handler, self._open_streams, self._open_limit)
        metadata = handler_call_details.invocation_metadata
        if self._authenticator.tenant_for(metadata) is not None:
            return handler
        return _denial(handler, self._failures)


def is_loopback(address: str) -> bool:
    """Whether a listening address (``host:port``, ``[v6]:port``, ``unix:path``) is local."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rpartition(":")[0].removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen_address(address: str, authenticator: Authenticator, *, tls: bool) -> None:
    """Refuse to serve anyone beyond this machine without authentication.

    Tokens sent in plaintext beyond loopback only get a warning: TLS may end at a proxy
    in front of the service.

    Raises:
        ConfigurationError: No tokens are configured and ``address`` is not loopback.
    """
    if is_loopback(address):
        return
    if authenticator.required:
        if not tls:
            log.warning("bearer_tokens_without_tls", address=address)
        return
    raise ConfigurationError(
        f"refusing to listen on {address}: without a tokens file the service has no "
        "authentication, so it listens on loopback only (127.0.0.1, ::1, localhost or a "
        "unix socket). Configure tenants' tokens (--tokens-file) to serve other hosts."
    )
