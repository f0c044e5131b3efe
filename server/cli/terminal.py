"""Lines on a terminal: one redrawn in place, fitted to the width it has at each redraw.

What matters least in a line goes first when the terminal is narrow (see
:func:`fit_line`), the last column is never written (a terminal may wrap there, leaving a
stale line at every redraw), and colour is used only on a terminal without ``NO_COLOR``.
Nothing else draws the lines: a library such as rich would cost every CLI start its
import for one line.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

__all__ = ["GREEN", "RED", "Line", "Part", "Rate", "bar", "duration", "fit_line", "human_bytes"]

RED = "31"
GREEN = "32"
# The bar's width when there is room for it, and below which it is left out.
_BAR_WIDTH = 24
_MIN_BAR_WIDTH = 8
_SEPARATOR = " · "
_ELLIPSIS = "…"


@dataclass(frozen=True, slots=True)
class Part:
    """A piece of a progress line: its text, how much it matters (0 most, kept longest)
    and its colour (an SGR code, or "")."""

    text: str
    rank: int
    style: str = ""


def bar(done: int, total: int, width: int) -> str:
    filled = width * done // total if total else 0
    return f"[{'#' * filled}{'-' * (width - filled)}]"


def _styled(text: str, style: str, color: bool) -> str:
    return f"\033[{style}m{text}\033[0m" if color and style and text else text


def fit_line(
    parts: Sequence[Part],
    columns: int,
    *,
    done: int,
    total: int,
    color: bool = False,
) -> str:
    """One line of at most ``columns - 1`` visible columns: a bar and ``parts``.

    The parts that matter least are dropped first, then the bar narrows (and is left
    out below 8 columns), then the text is cut with an ellipsis. The last column is never
    written: some terminals wrap there, which would leave a stale line at every redraw.
    Colour codes are added after fitting, so they never count as columns.
    """
    room = max(columns - 1, 1)
    kept = list(parts)

    def text_width(chosen: Sequence[Part]) -> int:
        return sum(len(p.text) for p in chosen) + len(_SEPARATOR) * max(len(chosen) - 1, 0)

    while len(kept) > 1 and text_width(kept) + _MIN_BAR_WIDTH + 3 > room:
        least = max(range(len(kept)), key=lambda i: (kept[i].rank, i))
        if kept[least].rank == 0:
            break
        del kept[least]
    bar_width = min(_BAR_WIDTH, room - text_width(kept) - 3)
    plain = _SEPARATOR.join(p.text for p in kept)
    if bar_width >= _MIN_BAR_WIDTH:
        drawn = bar(done, total, bar_width)
        if len(drawn) + 1 + len(plain) <= room:
            # Colours only where nothing was cut, so no escape code is ever split.
            shown = _SEPARATOR.join(_styled(p.text, p.style, color) for p in kept)
            return f"{_styled(drawn, GREEN, color)} {shown}"
    if len(plain) > room:
        plain = plain[: room - 1] + _ELLIPSIS
    return plain


def human_bytes(count: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Rate:
    """How fast something advances, over the last ``window`` seconds, and when it ends.

    Args:
        clock: Monotonic seconds. Default ``time.monotonic``.
        window: Seconds of samples the rate is measured over. Default 10.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, window: float = 10.0
    ) -> None:
        self._clock = clock
        self._window = window
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, done: float) -> None:
        """Note that ``done`` units are done by now."""
        now = self._clock()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()

    def per_second(self) -> float | None:
        """Units per second over the window, or ``None`` before it can tell."""
        if len(self._samples) < 2:
            return None
        (start, first), (end, last) = self._samples[0], self._samples[-1]
        if end <= start or last <= first:
            return None
        return (last - first) / (end - start)

    def parts(
        self, remaining: float, unit: str, *, show: Callable[[float], str] | None = None
    ) -> list[Part]:
        """The rate and the ETA of ``remaining`` units, as line parts."""
        rate = self.per_second()
        if rate is None:
            return []
        shown = show(rate) if show is not None else f"{rate:.1f} {unit}"
        parts = [Part(f"{shown}/s", 3)]
        if remaining > 0:
            parts.append(Part(f"ETA {duration(remaining / rate)}", 3))
        return parts


def _columns(stream: TextIO) -> int:
    """The terminal's width now (it may have been resized since the last redraw)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return shutil.get_terminal_size().columns


def _wants_color(stream: TextIO) -> bool:
    # https://no-color.org: present and not empty turns colour off.
    return not os.environ.get("NO_COLOR") and stream.isatty()


class Line:
    """One line redrawn in place on a terminal, with whole lines printed above it.

    Args:
        stream: Where to write.
        live: Redraw in place. Default: whether ``stream`` is a terminal.
        columns: The terminal's width, asked at every redraw. Default: the stream's
            terminal's, read again each time.
    """

    def __init__(self, stream: TextIO, live: bool | None, columns: Callable[[], int] | None):
        self._stream = stream
        self.live = stream.isatty() if live is None else live
        self._columns = columns or (lambda: _columns(stream))
        self.color = self.live and _wants_color(stream)
        self._drawn = False

    def width(self) -> int:
        return self._columns()

    def note(self, text: str) -> None:
        self._clear()
        self._stream.write(text + "\n")

    def draw(self, text: str) -> None:
        self._clear()
        self._stream.write(text)
        self._drawn = True

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False

    def _clear(self) -> None:
        if self._drawn:
            # Back to the start of the line and erase it: the new line may be shorter.
            self._stream.write("\r\033[K")
            self._drawn = False
