"""TLS and mutual TLS: the server's credentials, from PEM files.

The server serves TLS with ``--tls-cert`` and ``--tls-key``; with ``--tls-client-ca``
too it requires every client to present a certificate signed by that CA (mutual TLS),
and refuses the handshake otherwise. Clients trust the server through ``--tls-ca`` (or
the system's roots) and present ``--tls-client-cert`` / ``--tls-client-key``.
Certificates authenticate the connection; the tenant is still the bearer token's. The
client's side is :mod:`server.client.tls`.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from server.security.auth import ConfigurationError

__all__ = ["server_credentials"]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigurationError(f"cannot read the {what} {path}: {error}") from None


def server_credentials(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> grpc.ServerCredentials | None:
    """The server's TLS credentials; ``None`` to serve plaintext (nothing given).

    Args:
        cert: PEM certificate chain of the server.
        key: PEM private key of ``cert``.
        client_ca: PEM CA certificates that sign the clients' certificates; given,
            clients must present one.

    Raises:
        ConfigurationError: Only one of ``cert`` and ``key``, a ``client_ca`` without
            them, or a file that cannot be read.
    """
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigurationError("a client CA (mutual TLS) needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise ConfigurationError("TLS needs both --tls-cert and --tls-key")
    roots = _read(client_ca, "client CA") if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(_read(key, "TLS key"), _read(cert, "TLS certificate"))],
        root_certificates=roots,
        require_client_auth=roots is not None,
    )
