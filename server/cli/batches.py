"""The commands that act on batches: ``submit``, ``watch``, ``retry``, ``cancel``,
``delete`` and ``list``, with the live progress ``--watch`` follows a batch by.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from datetime import UTC, datetime

from google.protobuf import duration_pb2

from server.cli.arguments import BATCH_ID_HELP, AddCommand, label, password_file, paths
from server.cli.files import STATUS_JSON_FILES, UNSUCCEEDED
from server.cli.output import EXIT_FAILED_COMMAND, print_json
from server.cli.progress import (
    BatchTracker,
    ProgressDisplay,
    UploadDisplay,
    batch_state_name,
    exit_code,
    failure_line,
    summary,
    terminal_safe,
    warning_lines,
)
from server.cli.terminal import human_bytes
from server.client.api import Client, UploadFile, UploadProgress, collect_files
from server.gen.pdfbatch.v1 import batch_pb2 as pb

__all__ = ["add_batch_actions", "add_list", "add_retry", "add_submit"]

# Files not succeeded that a settled batch's summary lists before saying how many more.
_SUMMARY_FILES = 100
# Succeeded files a watch looks through for those that had warnings before it started.
_WARNING_SCAN_FILES = 10_000
_BATCH_STATES = [
    v.name.removeprefix("BATCH_STATE_") for v in pb.BatchState.DESCRIPTOR.values if v.number
]


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _failed_before(client: Client, batch_id: str, failed: int, tracker: BatchTracker) -> list[str]:
    """The failure lines of the first :data:`_SUMMARY_FILES` failed files, told to
    ``tracker`` so that their events up to the listing are not told again."""
    shown: list[str] = []
    for page in client.file_pages(batch_id, states=[pb.FILE_STATE_FAILED], page_size=100):
        files = page.files[: _SUMMARY_FILES - len(shown)]
        shown += [failure_line(file) for file in files]
        tracker.told([file.file_id for file in files], page.sequence)
        if len(shown) == _SUMMARY_FILES:
            break
    if failed > len(shown):
        shown.append(f"... and {failed - len(shown)} more failed before this watch")
    return shown


def _warned_before(client: Client, batch_id: str, warned: int, tracker: BatchTracker) -> list[str]:
    """The warning lines of the first of the ``warned`` succeeded files with warnings,
    looked for among the first :data:`_WARNING_SCAN_FILES` succeeded files; told to
    ``tracker`` as :func:`_failed_before` does."""
    shown: list[str] = []
    found = 0
    pages = client.file_pages(batch_id, states=[pb.FILE_STATE_SUCCEEDED])
    succeeded = ((file, page.sequence) for page in pages for file in page.files)
    for file, sequence in itertools.islice(succeeded, _WARNING_SCAN_FILES):
        if file.warnings:
            found += 1
            shown += warning_lines(file)
            tracker.told([file.file_id], sequence)
            if found == min(warned, _SUMMARY_FILES):
                break
    if warned > found:
        shown.append(
            f"... and {warned - found} more succeeded with warnings before this watch "
            f"(`status {batch_id} --state SUCCEEDED --json --all` lists them)"
        )
    return shown


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
            # Failures from before the watch started are news to whoever watches (the
            # first hundred of them, not a screen scrolling for minutes), and so are the
            # warnings of files that succeeded while the upload ran. A file listed here
            # may have ended after the snapshot: its event then comes too, and is not
            # told twice (the tracker knows what the listing showed).
            if event.HasField("snapshot") and event.snapshot.counts.failed:
                notes += _failed_before(client, batch_id, event.snapshot.counts.failed, tracker)
            if event.HasField("snapshot") and event.snapshot.files_with_warnings:
                warned = event.snapshot.files_with_warnings
                notes += _warned_before(client, batch_id, warned, tracker)
            display.update(tracker, notes)
    finally:
        display.close()
    batch = client.get(batch_id, with_files=False)
    unsucceeded = client.files(batch_id, states=UNSUCCEEDED)
    if args.json:
        # Bounded, as `status --json`: the batch and its first failed or cancelled files.
        batch.files.extend(itertools.islice(unsucceeded, STATUS_JSON_FILES))
        print_json(batch)
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
        print_json(batch)
    else:
        print(batch.batch_id)
    return 0


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
        print_json(pb.ListBatchesResponse(batches=batches))
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
        print_json(batch)
    else:
        retried = len(args.file_ids) or "every failed and cancelled"
        print(f"Retrying {retried} file(s) of batch {batch.batch_id}.")
    return 0


def _cancel(client: Client, args: argparse.Namespace) -> int:
    # The files only matter to a caller who reads the whole batch as JSON.
    batch = client.cancel(args.batch_id, with_files=args.json)
    if args.json:
        print_json(batch)
    else:
        print(f"Batch {batch.batch_id} {batch_state_name(batch.state)}.")
    return 0


def _delete(client: Client, args: argparse.Namespace) -> int:
    client.delete(args.batch_id)
    print(f"Deleted batch {args.batch_id}.")
    return 0


def add_submit(command: AddCommand) -> None:
    """``pdfbatch submit``."""
    submit = command("submit", _submit, "Upload files (or the *.pdf in directories) as a batch.")
    paths(
        submit.add_argument(
            "paths", nargs="+", metavar="FILE_OR_DIR", help="PDF files, or directories to search"
        )
    )
    submit.add_argument("--name", default="", help="display name")
    submit.add_argument(
        "--label",
        type=label,
        action="append",
        default=[],
        metavar="K=V",
        help="a label of the batch (repeatable)",
    )
    submit.add_argument(
        "--password-file",
        type=password_file,
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


def add_batch_actions(command: AddCommand) -> None:
    """``pdfbatch watch``, ``cancel`` and ``delete``: a batch id, and little else."""
    for name, handler, text in (
        ("watch", _watch, "Follow a batch live until it settles."),
        ("cancel", _cancel, "Cancel a batch."),
        ("delete", _delete, "Delete a batch, its results and its stored bytes."),
    ):
        sub = command(name, handler, text)
        sub.add_argument("batch_id", help=BATCH_ID_HELP)
        if name == "watch":
            sub.add_argument("--follow", action="store_true", help="keep following retries")


def add_list(command: AddCommand) -> None:
    """``pdfbatch list``."""
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


def add_retry(command: AddCommand) -> None:
    """``pdfbatch retry``."""
    retry = command("retry", _retry, "Retry files (default: every failed and cancelled one).")
    retry.add_argument("batch_id", help=BATCH_ID_HELP)
    retry.add_argument(
        "file_ids",
        nargs="*",
        metavar="FILE_ID",
        help="files to retry (default: every failed and cancelled one)",
    )
    retry.add_argument(
        "--password-file",
        type=password_file,
        action="append",
        default=[],
        metavar="FILE_ID=PATH",
        help="password of the file FILE_ID, read from PATH's first line",
    )
    retry.add_argument("--watch", action="store_true", help="follow progress until it settles")
