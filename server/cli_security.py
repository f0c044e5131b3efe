"""The command line's security options: tokens, TLS, and ``pdfbatch hash-token``.

``pdfbatch serve`` takes ``--tokens-file`` and ``--tls-cert`` / ``--tls-key`` /
``--tls-client-ca``; every client command takes ``--token-file`` (or ``PDFBATCH_TOKEN``)
and ``--tls`` / ``--tls-ca`` / ``--tls-client-cert`` / ``--tls-client-key``. A token is
never a command-line word: other users of the machine can read those.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server.auth import check_token, generate_token, hash_token
from server.client import Client
from server.client_auth import read_token
from server.settings import ClientSettings, SecuritySettings
from server.tls import channel_credentials

__all__ = [
    "add_client_flags",
    "add_hash_token_flags",
    "add_serve_flags",
    "connect",
    "hash_token_command",
    "security_settings",
]

_SERVE_FLAGS = ("tokens_file", "tls_cert", "tls_key", "tls_client_ca")
_CLIENT_FLAGS = ("address", "token_file", "tls_ca", "tls_client_cert", "tls_client_key")


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``serve``'s authentication and TLS options."""
    parser.add_argument(
        "--tokens-file",
        type=Path,
        help="TOML or JSON file of each tenant's token hashes (env PDFBATCH_TOKENS_FILE); "
        "without one the service is single-tenant and listens on loopback only",
    )
    parser.add_argument("--tls-cert", type=Path, help="serve TLS with this PEM certificate")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        help="require client certificates signed by this PEM CA (mutual TLS)",
    )


def security_settings(args: argparse.Namespace) -> SecuritySettings:
    """``serve``'s security settings: the flags given, else ``PDFBATCH_*`` variables.

    Raises:
        pydantic.ValidationError: The combination is invalid (a key without a cert...).
    """
    given = {name: value for name in _SERVE_FLAGS if (value := getattr(args, name)) is not None}
    return SecuritySettings(**given)


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
        server.auth.ConfigurationError: A TLS file cannot be read or is missing its pair.
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


def add_hash_token_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``hash-token``'s options."""
    parser.add_argument(
        "--token-file", type=Path, help="read the token from this file (default standard input)"
    )
    parser.add_argument(
        "--generate", action="store_true", help="make a new random token; print it, then its hash"
    )


def hash_token_command(args: argparse.Namespace) -> int:
    """``pdfbatch hash-token``: print the line a tokens file lists for a token."""
    if args.generate:
        token = generate_token()
        print(token)
    else:
        try:
            text = args.token_file.read_text() if args.token_file else sys.stdin.read()
        except OSError as error:
            print(f"pdfbatch hash-token: {error}", file=sys.stderr)
            return 1
        lines = text.splitlines()
        token = lines[0].strip() if lines else ""
        try:
            check_token(token)
        except ValueError as error:
            print(f"pdfbatch hash-token: {error}", file=sys.stderr)
            return 1
    print(hash_token(token))
    return 0
