"""The service's commands: ``pdfbatch serve`` and ``pdfbatch hash-token``.

They run the service or prepare its configuration, so they live beside it, not in the
command-line client (which never imports the service); :mod:`server.main` puts both
sets of commands under one ``pdfbatch``. A token is never a command-line word: other
users of the machine can read those.

Adding the commands to the parser loads nothing of the service: every run of
``pdfbatch`` adds them, and a client command (``status``) that loaded the settings,
the runtime and the actors with them would spend most of its time starting (about
half of its imports, 0.35 s of 0.7 s here). Each handler imports what it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_service_commands"]

_EXIT_FAILED_COMMAND = 1
_SERVE_FLAGS = ("tokens_file", "tls_cert", "tls_key", "tls_client_ca")

Command = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def add_service_commands(command: Command) -> None:
    """Add ``serve`` and ``hash-token``; ``command(name, handler, help)`` makes each."""
    serve = command("serve", _serve, "Run the service until SIGTERM or SIGINT.")
    serve.add_argument("--address", help="listen host:port (env PDFBATCH_ADDRESS)")
    serve.add_argument("--data-dir", type=Path, help="storage directory (env PDFBATCH_DATA_DIR)")
    serve.add_argument("--workers", type=int, help="worker processes (env PDFBATCH_WORKERS)")
    serve.add_argument("--max-file-bytes", type=int, help="largest file accepted")
    serve.add_argument("--max-batch-bytes", type=int, help="largest batch accepted")
    serve.add_argument("--max-files-per-batch", type=int, help="most files in one batch")
    serve.add_argument("--shutdown-grace", type=float, help="seconds running work gets on stop")
    serve.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on this port (default off)"
    )
    serve.add_argument("--metrics-address", help="the metrics endpoint's host (default 127.0.0.1)")
    serve.add_argument(
        "--executor",
        choices=("local", "ray", "auto"),
        help="where attempts run: local worker processes (default) or a Ray cluster",
    )
    serve.add_argument("--ray-address", help="the Ray cluster to join (env RAY_ADDRESS)")
    serve.add_argument(
        "--tokens-file",
        type=Path,
        help="TOML or JSON file of each tenant's token hashes (env PDFBATCH_TOKENS_FILE); "
        "without one the service is single-tenant and listens on loopback only",
    )
    serve.add_argument("--tls-cert", type=Path, help="serve TLS with this PEM certificate")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        help="require client certificates signed by this PEM CA (mutual TLS)",
    )
    hashing = command(
        "hash-token",
        _hash_token,
        "Print the hash of a token (read from --token-file or standard input) for a tokens file.",
    )
    hashing.add_argument(
        "--token-file", type=Path, help="read the token from this file (default standard input)"
    )
    hashing.add_argument(
        "--generate", action="store_true", help="make a new random token; print it, then its hash"
    )


def _serve(args: argparse.Namespace) -> int:
    # Only `serve` needs these (see the module's docstring).
    from pydantic import ValidationError  # noqa: PLC0415

    from server.service.app import serve  # noqa: PLC0415
    from server.service.logs import configure_logging  # noqa: PLC0415
    from server.service.settings import (  # noqa: PLC0415
        SecuritySettings,
        ServerSettings,
        UploadLimits,
    )

    limits = {
        name: value
        for name in ("max_file_bytes", "max_batch_bytes", "max_files_per_batch")
        if (value := getattr(args, name)) is not None
    }
    given = {
        name: value
        for name in (
            *("address", "data_dir", "workers", "shutdown_grace", "metrics_port"),
            "metrics_address",
            *("executor", "ray_address"),
        )
        if (value := getattr(args, name)) is not None
    }
    security = {name: value for name in _SERVE_FLAGS if (value := getattr(args, name)) is not None}
    try:
        settings = ServerSettings(
            limits=UploadLimits(**limits), security=SecuritySettings(**security), **given
        )
    except ValidationError as error:
        print(f"pdfbatch serve: invalid settings:\n{error}", file=sys.stderr)
        return _EXIT_FAILED_COMMAND
    configure_logging()
    try:
        return serve(settings)
    except (RuntimeError, OSError) as error:
        print(f"pdfbatch serve: cannot start: {error}", file=sys.stderr)
        return _EXIT_FAILED_COMMAND


def _hash_token(args: argparse.Namespace) -> int:
    """``pdfbatch hash-token``: print the line a tokens file lists for a token."""
    from server.security.auth import check_token, generate_token, hash_token  # noqa: PLC0415

    if args.generate:
        token = generate_token()
        print(token)
    else:
        try:
            text = args.token_file.read_text() if args.token_file else sys.stdin.read()
        except OSError as error:
            print(f"pdfbatch hash-token: {error}", file=sys.stderr)
            return _EXIT_FAILED_COMMAND
        lines = text.splitlines()
        token = lines[0].strip() if lines else ""
        try:
            check_token(token)
        except ValueError as error:
            print(f"pdfbatch hash-token: {error}", file=sys.stderr)
            return _EXIT_FAILED_COMMAND
    print(hash_token(token))
    return 0
