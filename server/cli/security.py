"""How a client command proves who it is: its token and TLS options, and the connection.

Every client command takes ``--token-file`` (or ``PDFBATCH_TOKEN``) and ``--tls`` /
``--tls-ca`` / ``--tls-client-cert`` / ``--tls-client-key``. A token is never a
command-line word: other users of the machine can read those. The service's own options
(``serve``, ``hash-token``) are :mod:`server.service.commands`'.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from server.client.api import Client
from server.client.auth import read_token
from server.client.settings import ClientSettings
from server.client.tls import channel_credentials

__all__ = ["add_client_flags", "connect"]

_CLIENT_FLAGS = ("address", "token_file", "tls_ca", "tls_client_cert", "tls_client_key")


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    """Add the options a client command connects with (besides ``--address``)."""
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file whose first line is your token (env PDFBATCH_TOKEN_FILE, or the token "
        "itself in PDFBATCH_TOKEN)",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--tls-ca", type=Path, help="trust the server by this PEM CA (TLS)")
    parser.add_argument(
        "--tls-client-cert", type=Path, help="present this PEM certificate (mutual TLS)"
    )
    parser.add_argument("--tls-client-key", type=Path, help="PEM private key of the client cert")


def connect(args: argparse.Namespace) -> Client:
    """A client as the flags and ``PDFBATCH_*`` variables say.

    Raises:
        ValueError: Invalid settings, or an empty token file.
        OSError: The token file cannot be read.
        server.client.tls.CredentialsError: A TLS file cannot be read or lacks its pair.
    """
    given: dict[str, object] = {
        name: value for name in _CLIENT_FLAGS if (value := getattr(args, name)) is not None
    }
    if args.tls:
        given["tls"] = True
    settings = ClientSettings(**given)  # type: ignore[arg-type]
    secret = settings.token.get_secret_value() if settings.token is not None else None
    token = read_token(settings.token_file, secret)
    credentials = (
        channel_credentials(settings.tls_ca, settings.tls_client_cert, settings.tls_client_key)
        if settings.uses_tls
        else None
    )
    return Client(settings.address, token=token, credentials=credentials)
