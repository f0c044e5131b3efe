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
import itertools
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import grpc
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message

from server.cli.export import ExportTargetError, export
from server.cli.progress import (
    BatchTracker,
    ProgressDisplay,
    UploadDisplay,
    batch_state_name,
    exit_code,
    failure_line,
    file_state_name,
    summary,
    terminal_safe,
)
from server.cli.security import add_client_flags, connect
from server.cli.terminal import human_bytes
from server.client.api import Client, UploadFile, UploadProgress, collect_files, describe_error
from server.gen.pdfbatch.v1 import batch_pb2 as pb

__all__ = ["build_parser", "main"]

EXIT_FAILED_COMMAND = 1
EXIT_INTERRUPTED = 130
# As a process killed by SIGPIPE would report it: the reader stopped reading.
EXIT_CLOSED_PIPE = 141
AddCommands = Callable[[Callable[..., argparse.ArgumentParser]], None]
# Files not succeeded that a settled batch's summary lists before saying how many more.
_SUMMARY_FILES = 100
# Lines `status` prints at most when its output is no terminal (a terminal: its height).
STATUS_MAX_LINES = 200
# Files `status --json` holds at most without --all (one bounded JSON object).
STATUS_JSON_FILES = 100
# Files `status` (and `results`) fetch per ListFiles call, as they print them.
FILES_PER_CALL = 1_000
_UNSUCCEEDED = (pb.FILE_STATE_FAILED, pb.FILE_STATE_CANCELLED)
_OTHER_STATES = (
    pb.FILE_STATE_PENDING,
    pb.FILE_STATE_RUNNING,
    pb.FILE_STATE_BACKOFF,
    pb.FILE_STATE_SUCCEEDED,
)
_FILE_STATES = [
    v.name.removeprefix("FILE_STATE_") for v in pb.FileState.DESCRIPTOR.values if v.number
]
_BATCH_ID_HELP = "the batch, as `pdfbatch submit` or `pdfbatch list` prints it"
_COMPLETE_PATHS = {"bash": "_shtab_compgen_files", "zsh": "_files"}
_BATCH_STATES = [
    v.name.removeprefix("BATCH_STATE_") for v in pb.BatchState.DESCRIPTOR.values if v.number
]


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1: exit 2 means a partially succeeded batch here."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_FAILED_COMMAND, f"{self.prog}: error: {message}\n")


def _print_json(message: Message) -> None:
    print(json_format.MessageToJson(message, always_print_fields_with_no_presence=True))


def _print_json_line(message: Message) -> None:
    """``message`` as one line of JSON Lines."""
    print(
        json_format.MessageToJson(message, always_print_fields_with_no_presence=True, indent=None)
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _password_file(text: str) -> tuple[str, str]:
    """``KEY=PATH``: the password is the file's first line, never a command-line word."""
    key, path = _label(text)
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read password file {path!r}: {error}") from None
    return key, lines[0] if lines else ""


# Commands ---------------------------------------------------------------------------


def _follow(client: Client, batch_id: str, args: argparse.Namespace) -> int:
    """Watch with live progress until the batch settles; print the final batch.

    The final batch is its counts and the files that did not succeed (all of them with
    ``--json``; the first hundred otherwise, and how many more).
    """
    tracker = BatchTracker()
    display = ProgressDisplay(sys.stderr)
    try:
        # A message at a time: a watch that is behind gets its events together, and the
        # progress line is redrawn once for them.
        for event in client.watch_messages(batch_id, follow=getattr(args, "follow", False)):
            notes = tracker.apply(event)
            if event.HasField("snapshot") and event.snapshot.counts.failed:
                # Failures from before the watch started are news to whoever watches;
                # the first hundred of them, not a screen scrolling for minutes.
                failed = client.files(batch_id, states=[pb.FILE_STATE_FAILED], page_size=100)
                notes += [failure_line(file) for file in itertools.islice(failed, _SUMMARY_FILES)]
                if event.snapshot.counts.failed > _SUMMARY_FILES:
                    more = event.snapshot.counts.failed - _SUMMARY_FILES
                    notes.append(f"... and {more} more failed before this watch")
            display.update(tracker, notes)
    finally:
        display.close()
    batch = client.get(batch_id, with_files=False)
    unsucceeded = client.files(batch_id, states=_UNSUCCEEDED)
    if args.json:
        # Bounded, as `status --json`: the batch and its first failed or cancelled files.
        batch.files.extend(itertools.islice(unsucceeded, STATUS_JSON_FILES))
        _print_json(batch)
        return exit_code(batch.state)
    shown = list(itertools.islice(unsucceeded, _SUMMARY_FILES + 1))
    batch.files.extend(shown[:_SUMMARY_FILES])
    print("\n".join(summary(batch)))
    if len(shown) > _SUMMARY_FILES:
        more = batch.counts.failed + batch.counts.cancelled - _SUMMARY_FILES
        print(f"  ... and {more} more: pdfbatch status {batch_id} --all --state failed")
    return exit_code(batch.state)


def _submit(client: Client, args: argparse.Namespace) -> int:
    policy = pb.BatchPolicy()
    if args.max_attempts is not None:
        policy.retry.max_attempts = args.max_attempts
    if args.file_timeout is not None:
        policy.file_timeout.CopyFrom(_duration(args.file_timeout))
    if args.max_concurrency is not None:
        policy.max_concurrency = args.max_concurrency
    if args.layout:
        policy.extraction_mode = pb.EXTRACTION_MODE_LAYOUT
    passwords = dict(args.password_file)
    files = [UploadFile(f.path, f.name, passwords.get(f.name)) for f in collect_files(args.paths)]
    if not files:
        print(
            "pdfbatch submit: no files found (directories are searched for *.pdf)", file=sys.stderr
        )
        return EXIT_FAILED_COMMAND
    # Only the paths are held: each file is read a chunk at a time as it is sent.
    total_bytes = sum(f.path.stat().st_size for f in files)
    upload = UploadDisplay(sys.stderr, len(files), total_bytes)

    def uploaded(progress: UploadProgress) -> None:
        upload.update(progress.files_sent, progress.bytes_sent)

    try:
        batch = client.submit(
            files,
            name=args.name,
            labels=dict(args.label),
            policy=policy,
            idempotency_key=args.idempotency_key,
            progress=uploaded,
        )
    finally:
        upload.close()
    if args.watch:
        print(
            f"Submitted batch {batch.batch_id} ({batch.file_count} files, "
            f"{human_bytes(total_bytes)}).",
            file=sys.stderr,
        )
        return _follow(client, batch.batch_id, args)
    if args.json:
        _print_json(batch)
    else:
        print(batch.batch_id)
    return 0


def _status_files(
    client: Client,
    batch_id: str,
    chosen: Sequence[pb.FileState.ValueType],
    wanted: int | None = None,
) -> Iterator[pb.FileStatus]:
    """The batch's files in ``chosen`` states (all without), failed and cancelled first,
    fetched a page at a time as they are consumed: never all held at once. ``wanted``:
    how many will be read at most, so that no call fetches more (``None``: all)."""
    per_call = FILES_PER_CALL if wanted is None else max(min(wanted, FILES_PER_CALL), 1)
    states = list(chosen) or [*_UNSUCCEEDED, *_OTHER_STATES]
    first = [s for s in states if s in _UNSUCCEEDED]
    rest = [s for s in states if s not in _UNSUCCEEDED]
    for group in (first, rest):
        if group:
            yield from client.files(batch_id, states=group, page_size=per_call)


def _screen_lines() -> int:
    """Lines `status` may print: the terminal's height, else :data:`STATUS_MAX_LINES`."""
    if sys.stdout.isatty():
        return max(shutil.get_terminal_size().lines - 1, 5)
    return STATUS_MAX_LINES


def _status(client: Client, args: argparse.Namespace) -> int:
    args.all = args.all or args.limit == 0  # --limit 0 has always meant every file
    batch = client.get(args.batch_id, with_files=False)
    states = [pb.FileState.Value(f"FILE_STATE_{s}") for s in args.state]
    if args.json:
        if args.all:
            # JSON Lines: the batch, then each file as it arrives.
            _print_json_line(batch)
            for file in _status_files(client, args.batch_id, states):
                _print_json_line(file)
        else:
            limit = STATUS_JSON_FILES if args.limit is None else args.limit
            files = _status_files(client, args.batch_id, states, limit)
            batch.files.extend(itertools.islice(files, limit))
            _print_json(batch)
        return exit_code(batch.state)
    shown = terminal_safe if sys.stdout.isatty() else str
    name = f" {shown(repr(batch.display_name))}" if batch.display_name else ""
    layout = " (layout text)" if batch.policy.extraction_mode == pb.EXTRACTION_MODE_LAYOUT else ""
    header = [f"Batch {batch.batch_id}{name}: {batch_state_name(batch.state)}{layout}"]
    c = batch.counts
    warned = f" ({batch.files_with_warnings} with warnings)" if batch.files_with_warnings else ""
    header.append(
        f"  {batch.file_count} files: {c.succeeded} succeeded{warned}, {c.failed} failed, "
        f"{c.cancelled} cancelled, {c.running} running, {c.backoff} retrying, "
        f"{c.pending} pending"
    )
    if batch.reason:
        header.append(f"  {shown(batch.reason)}")
    print("\n".join(header))
    if args.all:
        limit = None
    elif args.limit is not None:
        limit = args.limit
    else:
        # The header, the files and the closing "... and N more" line fill a screen.
        limit = max(_screen_lines() - len(header) - 1, 1)
    listed = 0
    for file in _status_files(client, args.batch_id, states, limit):
        if limit is not None and listed >= limit:
            break
        error = f"  {file.error.code}: {file.error.message}" if file.HasField("error") else ""
        codes = ", ".join(dict.fromkeys(w.code for w in file.warnings))
        warnings = f"  warnings: {codes}" if codes else ""
        state = file_state_name(file.state)
        print(
            f"  {file.file_id}  {state:<10} {file.attempt_count} attempt(s)  "
            f"{shown(file.name)}{error}{warnings}"
        )
        listed += 1
    total = _matching(batch.counts, states) if states else batch.file_count
    if listed < total and not args.all:
        print(
            f"  ... and {total - listed} more: --all lists every file, "
            "--state FAILED only the failed ones."
        )
    return exit_code(batch.state)


def _matching(counts: pb.FileCounts, states: Sequence[pb.FileState.ValueType]) -> int:
    by_state = {
        pb.FILE_STATE_PENDING: counts.pending,
        pb.FILE_STATE_RUNNING: counts.running,
        pb.FILE_STATE_BACKOFF: counts.backoff,
        pb.FILE_STATE_SUCCEEDED: counts.succeeded,
        pb.FILE_STATE_FAILED: counts.failed,
        pb.FILE_STATE_CANCELLED: counts.cancelled,
    }
    return sum(by_state[state] for state in set(states))


def _watch(client: Client, args: argparse.Namespace) -> int:
    return _follow(client, args.batch_id, args)


def _list(client: Client, args: argparse.Namespace) -> int:
    states = [pb.BatchState.Value(f"BATCH_STATE_{s}") for s in args.state]
    batches = []
    for batch in client.list(states=states):
        batches.append(batch)
        if len(batches) >= args.limit:
            break
    if args.json:
        _print_json(pb.ListBatchesResponse(batches=batches))
        return 0
    if not batches:
        return 0
    shown = terminal_safe if sys.stdout.isatty() else str
    zone = datetime.now().astimezone().strftime("%z")
    print(f"{'BATCH':<32}  {f'CREATED ({zone})':<19}  {'STATE':<20} {'OK/FILES':<12} NAME")
    for batch in batches:
        created = (
            batch.create_time.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        )
        state = batch_state_name(batch.state)
        counts = f"{batch.counts.succeeded}/{batch.file_count} ok"
        name = shown(batch.display_name)
        print(f"{batch.batch_id:<32}  {created:<19}  {state:<20} {counts:<12} {name}")
    return 0


def _retry(client: Client, args: argparse.Namespace) -> int:
    batch = client.retry(args.batch_id, args.file_ids, passwords=dict(args.password_file))
    if args.watch:
        return _follow(client, batch.batch_id, args)
    if args.json:
        _print_json(batch)
    else:
        retried = len(args.file_ids) or "every failed and cancelled"
        print(f"Retrying {retried} file(s) of batch {batch.batch_id}.")
    return 0


def _cancel(client: Client, args: argparse.Namespace) -> int:
    # The files only matter to a caller who reads the whole batch as JSON.
    batch = client.cancel(args.batch_id, with_files=args.json)
    if args.json:
        _print_json(batch)
    else:
        print(f"Batch {batch.batch_id} {batch_state_name(batch.state)}.")
    return 0


def _results(client: Client, args: argparse.Namespace) -> int:
    # The succeeded files a page at a time, as they are printed.
    file_ids = args.file_ids or (
        f.file_id
        for f in client.files(
            args.batch_id, states=[pb.FILE_STATE_SUCCEEDED], page_size=FILES_PER_CALL
        )
    )
    for file_id in file_ids:
        if args.json:
            for chunk in client.result_chunks(args.batch_id, file_id):
                print(json_format.MessageToJson(chunk, indent=None))
            continue
        result = client.result(args.batch_id, file_id)
        meta = result.metadata
        name = terminal_safe(meta.name)
        for warning in meta.warnings:
            print(f"{name} [{file_id}]: warning: {warning.message}", file=sys.stderr)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            target = args.out / f"{Path(meta.name).stem}.{file_id}.txt"
            target.write_text("\f".join(result.pages), encoding="utf-8")
            print(f"{name} [{file_id}]: {meta.page_count} pages -> {terminal_safe(str(target))}")
            continue
        # The text is the document's own; only a terminal must not obey what it holds.
        shown = terminal_safe if sys.stdout.isatty() else str
        print(f"==> {shown(meta.name)} [{file_id}]: {meta.page_count} pages <==")
        for number, text in enumerate(result.pages, start=1):
            print(f"--- page {number} ---")
            print(shown(text))
    return 0


def _history(client: Client, args: argparse.Namespace) -> int:
    shown = terminal_safe if sys.stdout.isatty() else str
    for number, page in enumerate(
        client.history_pages(args.batch_id, args.file_id, page_size=args.page_size)
    ):
        if number == 0:
            # The file once (JSON Lines: its status first, then each entry).
            if args.json:
                _print_json_line(page.file)
            else:
                file = page.file
                print(f"{shown(file.name)} [{file.file_id}]: {file_state_name(file.state)}")
        _print_history(page, shown, as_json=args.json)
    return 0


def _print_history(
    page: pb.GetFileHistoryResponse, shown: Callable[[str], str], *, as_json: bool
) -> None:
    for entry in page.entries:
        if as_json:
            _print_json_line(entry)
            continue
        when = entry.time.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        if entry.HasField("transition"):
            change = entry.transition
            moved = f"{file_state_name(change.from_state)} -> {file_state_name(change.to_state)}"
            print(f"  {when}  {moved:<24} {shown(change.reason)}")
        else:
            asked = entry.request
            detail = f" ({shown(asked.detail)})" if asked.detail else ""
            print(
                f"  {when}  {asked.action:<24} by {shown(asked.caller) or 'anonymous'}: "
                f"{asked.outcome}{detail} [request {shown(asked.request_id)}]"
            )


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


def _delete(client: Client, args: argparse.Namespace) -> int:
    client.delete(args.batch_id)
    print(f"Deleted batch {args.batch_id}.")
    return 0


# Parser -----------------------------------------------------------------------------


def _version() -> str:
    try:
        return importlib.metadata.version("pdfbatch")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _paths(action: argparse.Action) -> None:
    """Let the shell complete file and directory names for ``action`` (shtab's hint,
    spelled out so that building the parser never imports shtab)."""
    action.complete = _COMPLETE_PATHS  # type: ignore[attr-defined]


def _add_export_and_completion(
    parser: argparse.ArgumentParser,
    command: Callable[..., argparse.ArgumentParser],
    standalone: Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser],
) -> None:
    exporting = command(
        "export",
        _export,
        "Write every file of a batch with its state, error, metadata and text, as JSON Lines "
        "or as text files.",
        json_flag=False,  # its output is JSON already
    )
    exporting.add_argument("batch_id", help=_BATCH_ID_HELP)
    _paths(
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


def _add_submit(submit: argparse.ArgumentParser) -> None:
    """The arguments of ``pdfbatch submit``."""
    _paths(
        submit.add_argument(
            "paths", nargs="+", metavar="FILE_OR_DIR", help="PDF files, or directories to search"
        )
    )
    submit.add_argument("--name", default="", help="display name")
    submit.add_argument(
        "--label",
        type=_label,
        action="append",
        default=[],
        metavar="K=V",
        help="a label of the batch (repeatable)",
    )
    submit.add_argument(
        "--password-file",
        type=_password_file,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="password of the file NAME, read from PATH's first line",
    )
    submit.add_argument("--idempotency-key", help="resubmitting with the same key is a no-op")
    submit.add_argument("--max-attempts", type=int, help="automatic attempts per file")
    submit.add_argument("--file-timeout", type=float, help="seconds one attempt may take")
    submit.add_argument("--max-concurrency", type=int, help="files of this batch at once")
    submit.add_argument("--watch", action="store_true", help="follow progress until it settles")
    submit.add_argument(
        "--layout",
        action="store_true",
        help="extract text laid out as on the page (columns, tables) rather than in reading order",
    )


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

    _add_submit(
        command("submit", _submit, "Upload files (or the *.pdf in directories) as a batch.")
    )

    status = command(
        "status",
        _status,
        "Show a batch, its counts and its files, failed and cancelled first: a screenful "
        f"(the terminal's height, or {STATUS_MAX_LINES} lines when not a terminal) unless "
        "--all or --limit says otherwise. With --json: one object with the batch and its "
        f"first {STATUS_JSON_FILES} files; with --json --all, JSON Lines: the batch, then "
        "one file per line.",
    )
    status.add_argument("batch_id", help=_BATCH_ID_HELP)
    status.add_argument(
        "--all",
        action="store_true",
        help="list every file, fetched a page at a time as it is printed",
    )
    status.add_argument(
        "--limit",
        type=_non_negative,
        help="list at most this many files (default: a screenful; 0: every file, as --all)",
    )
    status.add_argument(
        "--state",
        action="append",
        default=[],
        type=str.upper,
        choices=_FILE_STATES,
        help="list only files in this state (repeatable)",
    )

    for name, handler, text in (
        ("watch", _watch, "Follow a batch live until it settles."),
        ("cancel", _cancel, "Cancel a batch."),
        ("delete", _delete, "Delete a batch, its results and its stored bytes."),
    ):
        sub = command(name, handler, text)
        sub.add_argument("batch_id", help=_BATCH_ID_HELP)
        if name == "watch":
            sub.add_argument("--follow", action="store_true", help="keep following retries")

    listing = command("list", _list, "List batches, newest first.")
    listing.add_argument(
        "--state",
        action="append",
        default=[],
        type=str.upper,
        choices=_BATCH_STATES,
        help="list only batches in this state (repeatable)",
    )
    listing.add_argument("--limit", type=int, default=50, help="at most this many")

    retry = command("retry", _retry, "Retry files (default: every failed and cancelled one).")
    retry.add_argument("batch_id", help=_BATCH_ID_HELP)
    retry.add_argument(
        "file_ids",
        nargs="*",
        metavar="FILE_ID",
        help="files to retry (default: every failed and cancelled one)",
    )
    retry.add_argument(
        "--password-file",
        type=_password_file,
        action="append",
        default=[],
        metavar="FILE_ID=PATH",
        help="password of the file FILE_ID, read from PATH's first line",
    )
    retry.add_argument("--watch", action="store_true", help="follow progress until it settles")

    history = command(
        "history",
        _history,
        "Show a file's state changes and the requests about its batch, oldest first, "
        "fetched a page at a time. With --json, JSON Lines: the file, then each entry.",
    )
    history.add_argument("batch_id", help=_BATCH_ID_HELP)
    history.add_argument("file_id", help="the file, as `pdfbatch status` lists it (f00001)")
    history.add_argument(
        "--page-size",
        type=_non_negative,
        default=0,
        help="entries fetched per call (default 0: the service's, 100)",
    )

    results = command("results", _results, "Print the text of succeeded files.")
    results.add_argument("batch_id", help=_BATCH_ID_HELP)
    results.add_argument(
        "file_ids",
        nargs="*",
        metavar="FILE_ID",
        help="files to print (default: every succeeded one)",
    )
    _paths(
        results.add_argument("--out", type=Path, help="write one .txt per file into this directory")
    )

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
