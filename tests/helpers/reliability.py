"""What the reliability suite did, counted as it runs and printed at the end of the session.

Tests of the suite record each attack they make, each invariant they check and each
fault the service survived, and the figures they measured on the way (a rate, a peak
of memory: measured, never asserted); ``tests/conftest.py`` prints it all in pytest's
terminal summary, so a green run also says how hard it pushed.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["REPORT", "ReliabilityReport"]


@dataclass
class ReliabilityReport:
    """Counters by kind, safe to update from any thread."""

    attacks: Counter[str] = field(default_factory=Counter)
    invariants: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    figures: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def attack(self, kind: str, count: int = 1) -> None:
        """Count ``count`` attacks of ``kind`` (a request sent, a process killed...)."""
        with self._lock:
            self.attacks[kind] += count

    def invariant(self, name: str, count: int = 1) -> None:
        """Count ``count`` checks of the invariant ``name`` that held."""
        with self._lock:
            self.invariants[name] += count

    def fault(self, kind: str, count: int = 1) -> None:
        """Count ``count`` faults of ``kind`` that the service survived."""
        with self._lock:
            self.faults[kind] += count

    def figure(self, name: str, value: float, unit: str) -> None:
        """Record a measured figure (the last value measured under ``name`` is kept)."""
        with self._lock:
            self.figures[name] = f"{value:.4g} {unit}"

    def empty(self) -> bool:
        return not (self.attacks or self.invariants or self.faults or self.figures)

    def lines(self) -> list[str]:
        """The report as text, one line per kind, largest first within each section."""
        out: list[str] = []
        for title, counter in (
            ("attacks made", self.attacks),
            ("invariants checked", self.invariants),
            ("faults survived", self.faults),
        ):
            total = sum(counter.values())
            out.append(f"{title}: {total}")
            out.extend(f"  {count:>8}  {kind}" for kind, count in counter.most_common())
        if self.figures:
            out.append("figures measured:")
            out.extend(f"  {value:>14}  {name}" for name, value in sorted(self.figures.items()))
        return out


REPORT = ReliabilityReport()
