"""The live progress lines on a real pseudo-terminal: each redraw fits the terminal's
width as it is at that moment (no line reaches the last column, where a terminal would
wrap it and leave a stale line behind), shows the rate and the ETA, and colours only
without ``NO_COLOR``."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import termios
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import pytest

from server.cli.progress import BatchTracker, ProgressDisplay, UploadDisplay
from server.cli.terminal import Part, fit_line
from server.gen.pdfbatch.v1 import batch_pb2 as pb

FILES = 1_000
_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")
_BREAKS = re.compile(r"\r\x1b\[K|\r?\n")


class Terminal:
    """A pseudo-terminal: the stream a display writes to, and what the screen got."""

    def __init__(self, stream: TextIO, reader: int, writer: int) -> None:
        self.stream = stream
        self._reader = reader
        self._writer = writer
        self.output = ""

    def resize(self, columns: int) -> None:
        size = struct.pack("HHHH", 24, columns, 0, 0)
        fcntl.ioctl(self._writer, termios.TIOCSWINSZ, size)

    def read(self) -> str:
        """What was written since the last read."""
        self.stream.flush()
        chunks = []
        while True:
            try:
                chunk = os.read(self._reader, 65536)
            except BlockingIOError:
                break
            chunks.append(chunk.decode())
        new = "".join(chunks)
        self.output += new
        return new


@contextmanager
def terminal(columns: int) -> Iterator[Terminal]:
    reader, writer = pty.openpty()
    os.set_blocking(reader, False)
    stream = os.fdopen(writer, "w", encoding="utf-8")
    screen = Terminal(stream, reader, writer)
    screen.resize(columns)
    try:
        yield screen
    finally:
        stream.close()
        os.close(reader)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _event(sequence: int, settled: int, failed: int = 0) -> pb.WatchBatchResponse:
    counts = pb.FileCounts(
        succeeded=settled - failed, failed=failed, running=4, pending=FILES - settled - 4
    )
    if sequence == 1:
        snapshot = pb.Batch(
            batch_id="b" * 32, state=pb.BATCH_STATE_RUNNING, counts=counts, file_count=FILES
        )
        return pb.WatchBatchResponse(
            sequence=1, batch_id="b" * 32, batch_state=pb.BATCH_STATE_RUNNING, snapshot=snapshot
        )
    return pb.WatchBatchResponse(
        sequence=sequence,
        batch_id="b" * 32,
        batch_state=pb.BATCH_STATE_RUNNING,
        batch_state_change=pb.BatchStateChange(state=pb.BATCH_STATE_RUNNING),
        counts=counts,
    )


def _drawn(output: str) -> list[str]:
    """Each line the terminal showed, colour codes left out."""
    return [_ESCAPES.sub("", line) for line in _BREAKS.split(output) if line]


def _follow(screen: Terminal, clock: Clock, steps: int = 20) -> None:
    tracker = BatchTracker()
    display = ProgressDisplay(screen.stream, clock=clock)
    for step in range(steps):
        clock.now += 1.0
        event = _event(step + 1, settled=10 * step, failed=step // 5)
        display.update(tracker, tracker.apply(event))
    display.close()


@pytest.mark.parametrize("columns", [30, 40, 60, 80, 120, 200])
def test_every_redraw_fits_the_terminal_and_shows_rate_and_eta(
    columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    clock = Clock()
    with terminal(columns) as screen:
        _follow(screen, clock)
        lines = _drawn(screen.read())

    # The lines printed above the bar (a batch's or a file's news) are whole lines and
    # may wrap; the redrawn one never does.
    progress = [line for line in lines if "/1000 files" in line]
    assert len(progress) == 20
    assert max(len(line) for line in progress) < columns, "never the last column"
    last = progress[-1]
    assert "190/1000 files" in last
    if columns >= 80:
        assert "10.0 files/s" in last
        assert "3 failed" in last
    if columns >= 120:
        assert last.startswith("[####")
        assert "ETA 1m21s" in last  # 810 files left at 10 a second
        assert "4 running" in last


def test_a_resized_terminal_is_followed_at_the_next_redraw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    clock = Clock()
    tracker = BatchTracker()
    with terminal(120) as screen:
        display = ProgressDisplay(screen.stream, clock=clock)
        display.update(tracker, tracker.apply(_event(1, 0)))
        wide = _drawn(screen.read())[-1]
        screen.resize(60)
        clock.now += 1
        display.update(tracker, tracker.apply(_event(2, 10)))
        narrow = screen.read()
        display.close()

    assert 60 < len(wide) < 120
    assert narrow.startswith("\r\x1b[K"), "the old line is erased first"
    assert 0 < len(_drawn(narrow)[-1]) < 60


def test_colour_only_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = {}
    for value in ("", "1"):
        monkeypatch.setenv("NO_COLOR", value)
        with terminal(120) as screen:
            _follow(screen, Clock(), steps=6)
            outputs[value] = screen.read()

    assert "\x1b[32m[" in outputs[""], "the bar in green"
    assert "\x1b[31m1 failed" in outputs[""]
    assert not _ESCAPES.search(outputs["1"])
    assert _drawn(outputs["1"]) == _drawn(outputs[""])


@pytest.mark.parametrize("columns", [40, 60, 100])
def test_the_upload_shows_files_bytes_rate_and_eta_within_the_width(columns: int) -> None:
    clock = Clock()
    with terminal(columns) as screen:
        upload = UploadDisplay(screen.stream, 10, 10 * 1024 * 1024, clock=clock, interval=0.5)
        for sent in range(1, 11):
            clock.now += 1.0
            upload.update(sent, sent * 1024 * 1024)
            upload.update(sent, sent * 1024 * 1024)  # nothing new: not drawn again
        upload.close()
        lines = _drawn(screen.read())

    assert len(lines) == 10
    assert max(len(line) for line in lines) < columns
    assert "uploading 5/10 files" in lines[4]
    assert "uploading 10/10 files" in lines[-1]
    if columns >= 60:
        assert "uploading 5/10 files · 5.0 MiB of 10.0 MiB" in lines[4]
    if columns >= 100:
        assert "1.0 MiB/s · ETA 5s" in lines[4]


def test_an_upload_draws_nothing_off_a_terminal() -> None:
    class Log:
        text = ""

        def write(self, text: str) -> int:
            self.text += text
            return len(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    log = Log()
    upload = UploadDisplay(log, 2, 10)  # type: ignore[arg-type]
    upload.update(1, 5)
    upload.update(2, 10)
    upload.close()

    assert log.text == ""


@pytest.mark.parametrize("columns", range(2, 130, 7))
def test_a_fitted_line_never_reaches_the_last_column(columns: int) -> None:
    parts = [
        Part("123456/1000000 files", 0),
        Part("123000 succeeded", 1),
        Part("456 failed", 1, style="31"),
        Part("4 running", 4),
        Part("1234.5 files/s", 3),
        Part("ETA 13m12s", 3),
        Part("PARTIALLY_SUCCEEDED", 2),
    ]

    line = fit_line(parts, columns, done=123456, total=1000000, color=True)

    assert len(_ESCAPES.sub("", line)) <= max(columns - 1, 1)
    assert line.startswith(("[", "\x1b[32m[", "123456/")) or line.endswith("…")
