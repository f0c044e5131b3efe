"""``pdfbatch``: use the service from the command line.

Exit codes: 0 every file succeeded (or the command did what it was asked), 2 the batch
partially succeeded, 3 the batch failed or was cancelled, 1 the command itself failed
(bad usage, server unreachable, request refused), 130 interrupted, 141 the reader of
the output stopped early.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import grpc

from server.cli.arguments import BATCH_ID_HELP, AddCommand, paths
from server.cli.batches import add_batch_actions, add_list, add_retry, add_submit
from server.cli.export import ExportTargetError, export
from server.cli.files import add_history, add_results, add_status
from server.cli.output import EXIT_CLOSED_PIPE, EXIT_FAILED_COMMAND, EXIT_INTERRUPTED
from server.cli.security import add_client_flags, connect
from server.client.api import Client, describe_error

__all__ = ["build_parser", "main"]

AddCommands = Callable[[Callable[..., argparse.ArgumentParser]], None]


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1: exit 2 means a partially succeeded batch here."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_FAILED_COMMAND, f"{self.prog}: error: {message}\n")


def _export(client: Client, args: argparse.Namespace) -> int:
    try:
        return export(client, args.batch_id, args.output, args.after)
    except ExportTargetError as error:
        print(f"pdfbatch export: {error}", file=sys.stderr)
        return EXIT_FAILED_COMMAND


def _completion(parser: argparse.ArgumentParser, shell: str) -> int:
    """Print the completion script of ``shell`` for ``parser``: made here, once, by the
    user, so that completing on a command line runs no Python at all."""
    import shtab  # noqa: PLC0415 - only this command needs it

    print(shtab.complete(parser, shell=shell), end="")
    return 0


def _version() -> str:
    try:
        return importlib.metadata.version("pdfbatch")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _add_export_and_completion(
    parser: argparse.ArgumentParser,
    command: AddCommand,
    standalone: Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser],
) -> None:
    exporting = command(
        "export",
        _export,
        "Write every file of a batch with its state, error, metadata and text, as JSON Lines "
        "or as text files.",
        json_flag=False,  # its output is JSON already
    )
    exporting.add_argument("batch_id", help=BATCH_ID_HELP)
    paths(
        exporting.add_argument(
            "-o",
            "--output",
            default="-",
            metavar="OUT",
            help="a .jsonl file (one JSON object per file), a directory ending with '/' or "
            "existing (a .txt per succeeded file and index.jsonl), or '-' for standard output "
            "(default). An interrupted export leaves OUT.partial (or index.jsonl.partial): the "
            "same command again goes on from it",
        )
    )
    exporting.add_argument(
        "--after",
        metavar="FILE_ID",
        help="start after this file (for '-o -', after the last line written); a file "
        "target is then written anew rather than resumed",
    )

    completion = standalone(
        "completion",
        lambda args: _completion(parser, args.shell),
        'Print the shell completion script: eval "$(pdfbatch completion bash)" in ~/.bashrc, '
        "or pdfbatch completion zsh > a directory of $fpath as _pdfbatch.",
    )
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete in")


def build_parser(service_commands: AddCommands | None = None) -> argparse.ArgumentParser:
    """The ``pdfbatch`` parser, with the service's commands if ``service_commands`` adds
    them (see :func:`main`)."""
    parser = _Parser(prog="pdfbatch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pdfbatch {_version()}")
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        parser_class=_Parser,
        metavar="COMMAND",
        help="what to do; `pdfbatch COMMAND --help` tells more",
    )

    def command(
        name: str, handler: Callable[..., int], help_text: str, *, json_flag: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler, standalone=False)
        sub.add_argument("--address", help="server host:port (env PDFBATCH_ADDRESS)")
        if json_flag:
            sub.add_argument("--json", action="store_true", help="print protobuf JSON")
        add_client_flags(sub)
        return sub

    def standalone(
        name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler, standalone=True)
        return sub

    if service_commands is not None:
        service_commands(standalone)

    # In the order `pdfbatch --help` lists them.
    add_submit(command)
    add_status(command)
    add_batch_actions(command)
    add_list(command)
    add_retry(command)
    add_history(command)
    add_results(command)
    _add_export_and_completion(parser, command, standalone)
    return parser


def main(argv: Sequence[str] | None = None, service_commands: AddCommands | None = None) -> int:
    """Run ``pdfbatch`` with ``argv`` (default: the process's); returns the exit code.

    Args:
        argv: The arguments, without the program's name.
        service_commands: Adds commands that need no client (``serve``), given the
            function that makes one: ``(name, handler(args) -> int, help)``.
    """
    parser = build_parser(service_commands)
    given = sys.argv[1:] if argv is None else list(argv)
    if not given:
        parser.print_help()
        return 0
    args = parser.parse_args(given)
    return _quiet_on_closed_pipe(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.standalone:
        code: int = args.handler(args)
        return code
    try:
        client = connect(args)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"pdfbatch {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILED_COMMAND
    try:
        with client:
            code = args.handler(client, args)
            return code
    except grpc.RpcError as error:
        described = describe_error(error)
        reason = f" ({described.reason})" if described.reason else ""
        print(
            f"pdfbatch {args.command}: {described.code.name}{reason}: {described.message}",
            file=sys.stderr,
        )
        for field, description in described.violations:
            print(f"  {field}: {description}", file=sys.stderr)
        return EXIT_FAILED_COMMAND
    except BrokenPipeError:
        raise  # the reader of the output went away: not the command's failure
    except OSError as error:
        print(f"pdfbatch {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILED_COMMAND
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _quiet_on_closed_pipe(run: Callable[[], int]) -> int:
    """``run()``, ending quietly when the reader of standard output goes away.

    ``pdfbatch list | head`` closes the pipe early: that is no error to report, and the
    interpreter must not report one either when it flushes standard output at exit.
    """
    try:
        code = run()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
