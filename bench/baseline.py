"""The bare minimum the service is compared with: a warm process pool and the extractor.

The same number of worker processes as the service, started the same way (from the
fork server), each configured as a service worker configures itself (pypdf's
limits, pypdf's log quietened), reading each file from disk and returning its result
to the parent. No gRPC, no actors, no store, no retries, no timeouts, no isolation.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.pool import Pool
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

from actors.execution.classify import classify
from actors.execution.extract import PdfLimits, configure_pdf_limits, extract_pdf
from actors.policy.model import ExtractionResult

__all__ = ["BarePool", "BareRun", "configure_worker", "extract_data", "extract_file"]


def configure_worker() -> None:
    """Set a process up as a service worker sets itself up: pypdf limits, quiet pypdf."""
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    configure_pdf_limits(PdfLimits())


def extract_data(data: bytes) -> ExtractionResult | str:
    """Extract one file's bytes; the result, or the code of the failure."""
    try:
        return extract_pdf(data, None)
    # The failure is the file's outcome, as in the service: classified and counted.
    except Exception as exc:  # noqa: BLE001
        return classify(exc).value


def extract_file(path: str) -> ExtractionResult | str:
    """Read and extract one file; the result, or the code of the failure."""
    return extract_data(Path(path).read_bytes())


@dataclass(frozen=True, slots=True)
class BareRun:
    """One pass over the files: how long, what came out, the workers' CPU seconds, and
    the CPU seconds of the process that ran the pool (handing the files out and taking
    the results back: the bare pool's own control plane)."""

    seconds: float
    succeeded: int
    failed: int
    cpu_seconds: float
    parent_cpu_seconds: float


class BarePool:
    """A persistent pool of ``workers`` fork-server processes running :func:`extract_file`.

    Args:
        workers: Processes.
    """

    def __init__(self, workers: int) -> None:
        # Started as the service's workers are. The fork server's preloads are left as
        # they are (they are global to the process): they only speed up a start, and
        # the pool is warmed up before it is timed.
        context = multiprocessing.get_context("forkserver")
        self._pool: Pool = context.Pool(workers, initializer=configure_worker)

    def run(self, paths: Sequence[Path]) -> BareRun:
        """Extract every file, one per task as the service dispatches them; time it."""
        cpu = self.cpu_seconds()
        # Every thread of this process: the caller's and the pool's own.
        parent_cpu = time.process_time()
        started = time.perf_counter()
        succeeded = failed = 0
        for outcome in self._pool.imap_unordered(extract_file, map(str, paths), chunksize=1):
            if isinstance(outcome, ExtractionResult):
                succeeded += 1
            else:
                failed += 1
        seconds = time.perf_counter() - started
        parent_cpu = time.process_time() - parent_cpu
        return BareRun(seconds, succeeded, failed, self.cpu_seconds() - cpu, parent_cpu)

    def cpu_seconds(self) -> float:
        """CPU time the pool's workers used so far."""
        total = 0.0
        for child in multiprocessing.active_children():
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(child.pid).cpu_times()
                total += times.user + times.system
        return total

    def close(self) -> None:
        """Stop and reap every worker."""
        self._pool.close()
        self._pool.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
