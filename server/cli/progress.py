"""Following a batch from its events, and showing how it goes.

On a terminal the progress is one line redrawn in place, with a line printed above it for
each file that fails or is retried; elsewhere (a log, a pipe) only those lines and the
batch's state changes are printed, never a redraw.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TextIO

from google.protobuf import timestamp_pb2

from server.gen.pdfbatch.v1 import batch_pb2 as pb

__all__ = [
    "BatchTracker",
    "ProgressDisplay",
    "batch_state_name",
    "exit_code",
    "failure_line",
    "file_state_name",
    "summary",
    "terminal_safe",
    "warning_lines",
]

# What a terminal would obey rather than show: controls but tab and line feed (escape
# sequences, carriage returns that overwrite a line), and the invisible characters that
# reorder or hide what follows (bidirectional overrides and isolates, line separators).
_OBEYED = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f"  # controls
    "\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069]"  # invisible, reordering
)

_OUTCOME_CODES = {
    pb.BATCH_STATE_SUCCEEDED: 0,
    pb.BATCH_STATE_PARTIALLY_SUCCEEDED: 2,
    pb.BATCH_STATE_FAILED: 3,
    pb.BATCH_STATE_CANCELLED: 3,
}


def terminal_safe(text: str) -> str:
    """``text`` as a terminal shows it faithfully: what it would obey is escaped, ``\\u202e``.

    For printing to a terminal only: the text itself (in a file, in JSON) is the
    document's, kept as it is.
    """
    return _OBEYED.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def exit_code(state: pb.BatchState.ValueType) -> int:
    """0 all succeeded, 2 partial success, 3 failed or cancelled; 0 while unsettled."""
    return _OUTCOME_CODES.get(state, 0)


def batch_state_name(state: pb.BatchState.ValueType) -> str:
    """``BATCH_STATE_RUNNING`` -> ``RUNNING``."""
    return pb.BatchState.Name(state).removeprefix("BATCH_STATE_")


def file_state_name(state: pb.FileState.ValueType) -> str:
    """``FILE_STATE_FAILED`` -> ``FAILED``."""
    return pb.FileState.Name(state).removeprefix("FILE_STATE_")


def _seconds_until(stamp: timestamp_pb2.Timestamp, now: timestamp_pb2.Timestamp) -> float:
    return max(0.0, (stamp.ToNanoseconds() - now.ToNanoseconds()) / 1e9)


def failure_line(file: pb.FileStatus) -> str:
    """The line that tells a person a file failed, and why."""
    name = terminal_safe(file.name)
    return f"FAILED    {name} [{file.file_id}] {file.error.code}: {file.error.message}"


def warning_lines(file: pb.FileStatus) -> list[str]:
    """The lines that tell a person what to know about a succeeded file's result."""
    name = terminal_safe(file.name)
    return [f"WARNING   {name} [{file.file_id}] {w.code}: {w.message}" for w in file.warnings]


class BatchTracker:
    """The batch as its events describe it: counts from the snapshot on, and the news.

    It keeps no file: every event carries the batch's counts, so following a batch of a
    million files costs what following one of ten does.
    """

    def __init__(self) -> None:
        self.batch_id = ""
        self.state: pb.BatchState.ValueType = pb.BATCH_STATE_UNSPECIFIED
        self.reason = ""
        self.file_count = 0
        self._counts = pb.FileCounts()

    def apply(self, message: pb.WatchBatchResponse) -> list[str]:
        """Take a ``WatchBatch`` message in; return the lines worth telling a person.

        A message carrying several events (its ``earlier_events``, then itself) is taken
        in as each of them in turn, oldest first.
        """
        notes: list[str] = []
        for event in message.earlier_events:
            notes += self._apply(event)
        return notes + self._apply(message)

    def _apply(self, event: pb.WatchBatchResponse) -> list[str]:
        notes: list[str] = []
        self.batch_id = event.batch_id
        if event.HasField("counts"):
            self._counts.CopyFrom(event.counts)
        match event.WhichOneof("change"):
            case "snapshot":
                self.file_count = event.snapshot.file_count
                self.reason = event.snapshot.reason
                notes.append(
                    f"batch {event.batch_id} {batch_state_name(event.batch_state)}: "
                    f"{self.file_count} files"
                )
            case "file":
                file = event.file
                if file.state == pb.FILE_STATE_FAILED:
                    notes.append(failure_line(file))
                elif file.state == pb.FILE_STATE_SUCCEEDED:
                    notes += warning_lines(file)
                elif file.state == pb.FILE_STATE_BACKOFF:
                    delay = _seconds_until(file.next_attempt_time, event.event_time)
                    notes.append(
                        f"RETRYING  {file.name} [{file.file_id}] {file.error.code}: attempt "
                        f"{file.attempt_count} failed, next in {delay:.1f} s"
                    )
            case "files":
                change = event.files
                # Listed or by state (a big batch's cancel or retry): the count says.
                moved = change.count or len(change.file_ids)
                if moved:
                    notes.append(
                        f"{moved:,} files {file_state_name(change.state)}: {change.reason}"
                    )
            case "batch_state_change":
                self.reason = event.batch_state_change.reason
                if event.batch_state != self.state:
                    reason = f": {self.reason}" if self.reason else ""
                    notes.append(f"batch {batch_state_name(event.batch_state)}{reason}")
        self.state = event.batch_state
        return notes

    def counts(self) -> Counter[pb.FileState.ValueType]:
        """Files per state, as of the last event."""
        c = self._counts
        return Counter(
            {
                pb.FILE_STATE_PENDING: c.pending,
                pb.FILE_STATE_RUNNING: c.running,
                pb.FILE_STATE_BACKOFF: c.backoff,
                pb.FILE_STATE_SUCCEEDED: c.succeeded,
                pb.FILE_STATE_FAILED: c.failed,
                pb.FILE_STATE_CANCELLED: c.cancelled,
            }
        )

    def progress_line(self, width: int = 24) -> str:
        """``[#####-----] 5/10 files · 4 succeeded · 1 failed · 2 running · RUNNING``."""
        counts = self.counts()
        total = self.file_count
        settled = sum(
            counts[s]
            for s in (pb.FILE_STATE_SUCCEEDED, pb.FILE_STATE_FAILED, pb.FILE_STATE_CANCELLED)
        )
        filled = width * settled // total if total else 0
        parts = [
            f"[{'#' * filled}{'-' * (width - filled)}] {settled}/{total} files",
            f"{counts[pb.FILE_STATE_SUCCEEDED]} succeeded",
            f"{counts[pb.FILE_STATE_FAILED]} failed",
        ]
        for state, label in (
            (pb.FILE_STATE_BACKOFF, "retrying"),
            (pb.FILE_STATE_RUNNING, "running"),
            (pb.FILE_STATE_CANCELLED, "cancelled"),
        ):
            if counts[state]:
                parts.append(f"{counts[state]} {label}")
        parts.append(batch_state_name(self.state))
        return " · ".join(parts)


class ProgressDisplay:
    """Shows a tracker's progress on ``stream``.

    Args:
        stream: Where to write (the CLI uses standard error).
        live: Redraw one line in place. Default: whether ``stream`` is a terminal.
    """

    def __init__(self, stream: TextIO, *, live: bool | None = None) -> None:
        self._stream = stream
        self._live = stream.isatty() if live is None else live
        self._drawn = False

    def update(self, tracker: BatchTracker, notes: list[str]) -> None:
        """Print ``notes``, then redraw the progress line (on a terminal)."""
        for note in notes:
            self._clear()
            self._stream.write(note + "\n")
        if self._live:
            self._clear()
            self._stream.write(tracker.progress_line())
            self._drawn = True
        self._stream.flush()

    def close(self) -> None:
        """End the progress line."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False

    def _clear(self) -> None:
        if self._drawn:
            self._stream.write("\r\033[K")
            self._drawn = False


def _with_warnings(batch: pb.Batch) -> str:
    warned = batch.files_with_warnings
    return f" ({warned} with warnings)" if warned else ""


def summary(batch: pb.Batch) -> list[str]:
    """Lines that sum a batch up: its state and counts, then each file not succeeded."""
    c = batch.counts
    lines = [
        f"Batch {batch.batch_id} {batch_state_name(batch.state)}: "
        f"{c.succeeded} succeeded{_with_warnings(batch)}, {c.failed} failed, "
        f"{c.cancelled} cancelled of {batch.file_count} files."
    ]
    if batch.reason:
        lines.append(f"  {batch.reason}")
    for file in batch.files:
        if file.state != pb.FILE_STATE_SUCCEEDED:
            error = f" {file.error.code}: {file.error.message}" if file.HasField("error") else ""
            state = file_state_name(file.state)
            lines.append(f"  {state:<10}{file.name} [{file.file_id}]{error}")
    return lines
