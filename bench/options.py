"""What the command line passes to every scenario."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Options"]


@dataclass(frozen=True, slots=True)
class Options:
    """Scale of a run; ``None`` leaves each scenario its own default.

    Attributes:
        files: Files per run (each scenario says what that means for it).
        repeat: Runs or pairs of runs per scenario.
        corpus: A directory of PDFs for the throughput and peer scenarios.
        workers: Worker processes, for the service and the baselines alike. Default:
            one per CPU, as the service's own default.
    """

    files: int | None = None
    repeat: int | None = None
    corpus: Path | None = None
    workers: int = os.cpu_count() or 1
