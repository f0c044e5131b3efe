"""The client's side of TLS and mutual TLS: credentials from PEM files.

A client trusts the server through a CA (or the system's roots) and, for mutual TLS,
presents a certificate of its own. The server's side is :mod:`server.security.tls`.
"""

from __future__ import annotations

from pathlib import Path

import grpc

__all__ = ["CredentialsError", "channel_credentials"]


class CredentialsError(RuntimeError):
    """The client's TLS files cannot be used."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise CredentialsError(f"cannot read the {what} {path}: {error}") from None


def channel_credentials(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """A client's TLS credentials.

    Args:
        ca: PEM CA certificates to trust the server by. Default the system's roots.
        cert: The client's PEM certificate chain, for mutual TLS.
        key: PEM private key of ``cert``.

    Raises:
        CredentialsError: Only one of ``cert`` and ``key``, or a file that cannot be
            read.
    """
    if (cert is None) != (key is None):
        raise CredentialsError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA certificate") if ca is not None else None,
        private_key=_read(key, "client key") if key is not None else None,
        certificate_chain=_read(cert, "client certificate") if cert is not None else None,
    )
