"""Figures, the statistics behind them, the table and the JSON file.

A :class:`Figure` is one measured number next to its target, with the raw samples it
was computed from kept in ``detail`` so a reader of the JSON can check the arithmetic.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Figure",
    "at_least",
    "at_most",
    "judged",
    "median",
    "percentile",
    "render_table",
    "write_json",
]


@dataclass(frozen=True, slots=True)
class Figure:
    """One row of the table.

    Attributes:
        scenario: The scenario that measured it.
        name: What was measured, in words.
        value: The number; ``None`` when it was not measured.
        unit: ``"x"`` for a ratio, ``"ms"``, ``"MB"``, ``"threads"``, ``"s"``...
        target: The target in words (``">= 0.95"``); ``""`` for a figure without one.
        passed: Whether the target was met; ``None`` without a target or a value.
        note: Why it was not measured, or what to keep in mind reading it.
        detail: Raw samples and settings, for the JSON only.
    """

    scenario: str
    name: str
    value: float | None
    unit: str
    target: str = ""
    passed: bool | None = None
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def at_least(threshold: float) -> tuple[str, Callable[[float], bool]]:
    """A target the value must reach."""
    return f">= {threshold:g}", lambda value: value >= threshold


def at_most(threshold: float, strict: bool = True) -> tuple[str, Callable[[float], bool]]:
    """A target the value must stay under (``strict``) or at."""
    if strict:
        return f"< {threshold:g}", lambda value: value < threshold
    return f"<= {threshold:g}", lambda value: value <= threshold


def judged(
    scenario: str,
    name: str,
    value: float,
    unit: str,
    target: tuple[str, Callable[[float], bool]],
    **extra: Any,
) -> Figure:
    """A figure with its target applied."""
    words, test = target
    return Figure(scenario, name, value, unit, words, test(value), **extra)


def median(values: Sequence[float]) -> float:
    """The median; ``nan`` of nothing."""
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in (0, 1]): a value actually observed.

    With fewer than 100 samples the 99th percentile is the largest one, which is what a
    reader of "p99" over ten runs should assume anyway.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


_FORMATS = {"x": "{:.2f}", "ms": "{:.1f}", "s": "{:.2f}", "MB": "{:.0f}", "threads": "{:.0f}"}


def _value_text(figure: Figure) -> str:
    if figure.value is None:
        return "not measured"
    text = _FORMATS.get(figure.unit, "{:.3g}").format(figure.value)
    return f"{text} {figure.unit}".strip()


def _verdict(figure: Figure) -> str:
    if figure.passed is None:
        return "-"
    return "pass" if figure.passed else "FAIL"


def render_table(figures: Sequence[Figure], *, markdown: bool = False) -> str:
    """The figures as a text table (or a Markdown one), notes in the last column."""
    header = ("scenario", "figure", "measured", "target", "result", "notes")
    rows = [
        (f.scenario, f.name, _value_text(f), f.target or "-", _verdict(f), f.note) for f in figures
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(cell.ljust(width) for cell, width in cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def write_json(path: Path, figures: Sequence[Figure], settings: dict[str, Any]) -> None:
    """Write every figure with its detail, the settings and the machine to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "python": platform.python_version(),
            # Which build: the same version runs the service's Python an eighth faster
            # or slower by how it was compiled (docs/performance.md).
            "python_executable": os.path.realpath(sys.executable),
            "python_build": " ".join(platform.python_build()),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "settings": settings,
        "figures": [asdict(figure) for figure in figures],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
