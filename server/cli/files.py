"""The commands that read a batch's files: ``status`` (the batch, its counts and its
files, failed and cancelled first), ``results`` (the text of succeeded files) and
``history`` (one file's state changes and the requests about its batch).

Each fetches its files or entries a page at a time as it prints them: none holds a
whole batch, whatever its size.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC
from pathlib import Path

from google.protobuf import json_format

from server.cli.arguments import BATCH_ID_HELP, AddCommand, non_negative, paths
from server.cli.output import print_json, print_json_line
from server.cli.progress import batch_state_name, exit_code, file_state_name, terminal_safe
from server.client.api import Client
from server.gen.pdfbatch.v1 import batch_pb2 as pb

__all__ = [
    "FILES_PER_CALL",
    "STATUS_JSON_FILES",
    "STATUS_MAX_LINES",
    "UNSUCCEEDED",
    "add_history",
    "add_results",
    "add_status",
]

# Lines `status` prints at most when its output is no terminal (a terminal: its height).
STATUS_MAX_LINES = 200
# Files `status --json` holds at most without --all (one bounded JSON object).
STATUS_JSON_FILES = 100
# Files `status` (and `results`) fetch per ListFiles call, as they print them.
FILES_PER_CALL = 1_000
UNSUCCEEDED = (pb.FILE_STATE_FAILED, pb.FILE_STATE_CANCELLED)
_OTHER_STATES = (
    pb.FILE_STATE_PENDING,
    pb.FILE_STATE_RUNNING,
    pb.FILE_STATE_BACKOFF,
    pb.FILE_STATE_SUCCEEDED,
)
_FILE_STATES = [
    v.name.removeprefix("FILE_STATE_") for v in pb.FileState.DESCRIPTOR.values if v.number
]


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
    states = list(chosen) or [*UNSUCCEEDED, *_OTHER_STATES]
    first = [s for s in states if s in UNSUCCEEDED]
    rest = [s for s in states if s not in UNSUCCEEDED]
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
            print_json_line(batch)
            for file in _status_files(client, args.batch_id, states):
                print_json_line(file)
        else:
            limit = STATUS_JSON_FILES if args.limit is None else args.limit
            files = _status_files(client, args.batch_id, states, limit)
            batch.files.extend(itertools.islice(files, limit))
            print_json(batch)
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
    # Not one file past the limit: reading it would fetch a page more.
    for file in itertools.islice(_status_files(client, args.batch_id, states, limit), limit):
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
                print_json_line(page.file)
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
            print_json_line(entry)
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


def add_status(command: AddCommand) -> None:
    """``pdfbatch status``."""
    status = command(
        "status",
        _status,
        "Show a batch, its counts and its files, failed and cancelled first: a screenful "
        f"(the terminal's height, or {STATUS_MAX_LINES} lines when not a terminal) unless "
        "--all or --limit says otherwise. With --json: one object with the batch and its "
        f"first {STATUS_JSON_FILES} files; with --json --all, JSON Lines: the batch, then "
        "one file per line.",
    )
    status.add_argument("batch_id", help=BATCH_ID_HELP)
    status.add_argument(
        "--all",
        action="store_true",
        help="list every file, fetched a page at a time as it is printed",
    )
    status.add_argument(
        "--limit",
        type=non_negative,
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


def add_history(command: AddCommand) -> None:
    """``pdfbatch history``."""
    history = command(
        "history",
        _history,
        "Show a file's state changes and the requests about its batch, oldest first, "
        "fetched a page at a time. With --json, JSON Lines: the file, then each entry.",
    )
    history.add_argument("batch_id", help=BATCH_ID_HELP)
    history.add_argument("file_id", help="the file, as `pdfbatch status` lists it (f00001)")
    history.add_argument(
        "--page-size",
        type=non_negative,
        default=0,
        help="entries fetched per call (default 0: the service's, 100)",
    )


def add_results(command: AddCommand) -> None:
    """``pdfbatch results``."""
    results = command("results", _results, "Print the text of succeeded files.")
    results.add_argument("batch_id", help=BATCH_ID_HELP)
    results.add_argument(
        "file_ids",
        nargs="*",
        metavar="FILE_ID",
        help="files to print (default: every succeeded one)",
    )
    paths(
        results.add_argument("--out", type=Path, help="write one .txt per file into this directory")
    )
