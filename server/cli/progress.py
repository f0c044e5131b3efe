"""Following a batch from its events, and showing how it goes.

On a terminal the progress is one line redrawn in place, fitted to the terminal's width
at every redraw (:mod:`server.cli.terminal`), with a line printed above it for each file
that fails or is retried; elsewhere (a log, a pipe) only those lines and the batch's
state changes are printed, never a redraw. An upload shows its own line first: files
and bytes sent, rate and ETA.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TextIO

from google.protobuf import timestamp_pb2

from server.cli.terminal import RED, Line, Part, Rate, bar, fit_line, human_bytes
from server.gen.pdfbatch.v1 import batch_pb2 as pb

__all__ = [
    "BatchTracker",
    "ProgressDisplay",
    "UploadDisplay",
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

    It keeps no file, but the ids of the few that a listing told about (at most two
    hundred, see :meth:`told`): every event carries the batch's counts, so following a
    batch of a million files costs what following one of ten does.
    """

    def __init__(self) -> None:
        self.batch_id = ""
        self.state: pb.BatchState.ValueType = pb.BATCH_STATE_UNSPECIFIED
        self.reason = ""
        self.file_count = 0
        self._counts = pb.FileCounts()
        # Files already told about from a listing, each with the sequence its page was
        # read at: their events up to it are old news (see :meth:`told`).
        self._told: dict[str, int] = {}

    def told(self, file_ids: Iterable[str], sequence: int) -> None:
        """These files were told about as a listing read at ``sequence`` shows them
        (its ``ListFilesResponse.sequence``): an event of one of them up to that
        sequence says nothing new, and is not told again."""
        for file_id in file_ids:
            self._told[file_id] = sequence

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
            case "file" if self._told.get(event.file.file_id, -1) >= event.sequence:
                pass
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

    def settled(self) -> int:
        """Files in a terminal state."""
        counts = self.counts()
        return sum(
            counts[s]
            for s in (pb.FILE_STATE_SUCCEEDED, pb.FILE_STATE_FAILED, pb.FILE_STATE_CANCELLED)
        )

    def progress_parts(self, rate: Rate | None = None) -> list[Part]:
        """The progress line's parts, each with how much it matters (see :func:`fit_line`)."""
        counts = self.counts()
        total, settled = self.file_count, self.settled()
        failed = counts[pb.FILE_STATE_FAILED]
        parts = [
            Part(f"{settled}/{total} files", 0),
            Part(f"{counts[pb.FILE_STATE_SUCCEEDED]} succeeded", 1),
            Part(f"{failed} failed", 1, style=RED if failed else ""),
        ]
        for state, label in (
            (pb.FILE_STATE_CANCELLED, "cancelled"),
            (pb.FILE_STATE_BACKOFF, "retrying"),
            (pb.FILE_STATE_RUNNING, "running"),
        ):
            if counts[state]:
                parts.append(Part(f"{counts[state]} {label}", 4))
        if rate is not None:
            parts += rate.parts(total - settled, "files")
        parts.append(Part(batch_state_name(self.state), 2))
        return parts

    def progress_line(self, width: int = 24) -> str:
        """``[#####-----] 5/10 files · 4 succeeded · 1 failed · 2 running · RUNNING``, as
        long as it takes (:class:`ProgressDisplay` fits it to the terminal)."""
        parts = self.progress_parts()
        drawn = bar(self.settled(), self.file_count, width)
        return " · ".join([f"{drawn} {parts[0].text}", *(p.text for p in parts[1:])])


class ProgressDisplay:
    """Shows a tracker's progress on ``stream``.

    Args:
        stream: Where to write (the CLI uses standard error).
        live: Redraw one line in place. Default: whether ``stream`` is a terminal.
        columns: The terminal's width, asked at every redraw. Default: the stream's
            terminal's.
        clock: Monotonic seconds, for the rate and the ETA. Default ``time.monotonic``.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        live: bool | None = None,
        columns: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._line = Line(stream, live, columns)
        self._rate = Rate(clock)

    def update(self, tracker: BatchTracker, notes: list[str]) -> None:
        """Print ``notes``, then redraw the progress line (on a terminal)."""
        for note in notes:
            self._line.note(note)
        self._rate.add(tracker.settled())
        if self._line.live:
            self._line.draw(
                fit_line(
                    tracker.progress_parts(self._rate),
                    self._line.width(),
                    done=tracker.settled(),
                    total=tracker.file_count,
                    color=self._line.color,
                )
            )
        self._line.flush()

    def close(self) -> None:
        """End the progress line."""
        self._line.close()


class UploadDisplay:
    """Shows an upload's progress (files and bytes sent, rate, ETA) on a terminal.

    Args:
        stream: Where to write (the CLI uses standard error).
        files: Files to send.
        total_bytes: Bytes to send.
        live: Redraw one line in place. Default: whether ``stream`` is a terminal.
        columns: The terminal's width, asked at every redraw.
        clock: Monotonic seconds. Default ``time.monotonic``.
        interval: Least seconds between two redraws (a small file takes microseconds
            to send; redrawing for each would cost more than sending it). Default 0.1.
    """

    def __init__(
        self,
        stream: TextIO,
        files: int,
        total_bytes: int,
        *,
        live: bool | None = None,
        columns: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.1,
    ) -> None:
        self._line = Line(stream, live, columns)
        self._clock = clock
        self._rate = Rate(clock)
        self._files, self._total = files, total_bytes
        self._interval = interval
        self._last_draw: float | None = None
        self._shown: tuple[int, int] | None = None

    def update(self, files_sent: int, bytes_sent: int) -> None:
        """Redraw (on a terminal, at most every ``interval``) with what was sent so far."""
        if not self._line.live:
            return
        now = self._clock()
        shown = (files_sent, bytes_sent)
        if shown == self._shown:
            return
        finished = shown == (self._files, self._total)
        if self._last_draw is not None and now - self._last_draw < self._interval and not finished:
            return
        self._last_draw, self._shown = now, shown
        self._rate.add(bytes_sent)
        parts = [
            Part(f"uploading {files_sent}/{self._files} files", 0),
            Part(f"{human_bytes(bytes_sent)} of {human_bytes(self._total)}", 1),
            *self._rate.parts(self._total - bytes_sent, "B", show=human_bytes),
        ]
        self._line.draw(
            fit_line(
                parts,
                self._line.width(),
                done=bytes_sent,
                total=self._total,
                color=self._line.color,
            )
        )
        self._line.flush()

    def close(self) -> None:
        """End the progress line."""
        self._line.close()


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
