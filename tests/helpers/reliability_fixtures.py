"""Real ``pdfbatch serve`` children for the reliability suite, and a memory gauge.

The service runs as a child process (``tests/helpers/crash_fixtures.py``) so that it can be
killed with SIGKILL, its workers found among its descendants, and its memory measured.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers.crash_fixtures import ServerLauncher

__all__ = ["Launch", "RssGauge", "launch"]

Launch = Callable[..., ServerLauncher]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Make launchers, one data directory each (settings as ``PDFBATCH_*`` keywords).

    Every life they started is killed after the test, whatever happened in it.
    """
    made: list[ServerLauncher] = []

    def make(**settings: object) -> ServerLauncher:
        root = tmp_path / f"service-{len(made)}"
        root.mkdir()
        launcher = ServerLauncher(
            root / "data", root / "server.log", **{k: str(v) for k, v in settings.items()}
        )
        made.append(launcher)
        return launcher

    try:
        yield make
    finally:
        for launcher in made:
            launcher.close()


class RssGauge:
    """Samples a process's resident memory on a thread of its own, every ``interval``.

    Args:
        pid: The process to measure (the service alone, not its workers).
        interval: Seconds between samples. Default 0.05.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.samples: list[int] = [self._process.memory_info().rss]
        self._thread = threading.Thread(target=self._run, name="test-rss-gauge")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                rss = self._process.memory_info().rss
            except psutil.NoSuchProcess:
                return
            with self._lock:
                self.samples.append(rss)

    @property
    def peak(self) -> int:
        """The largest sample so far, in bytes."""
        with self._lock:
            return max(self.samples)

    def close(self) -> None:
        """Stop sampling; idempotent."""
        self._stop.set()
        self._thread.join()
