"""What runs inside a local worker process: attempts from its pipe, one at a time.

A worker reads one :class:`~actors.execution.contract.AttemptJob` at a time from its
pipe, runs it with :func:`actors.execution.attempt.run_processor` (which reads the blob
itself) and answers with the reply's bytes. The parent's handle on a worker is
:mod:`actors.execution.local.process`; :mod:`actors.execution.local.pool` decides when
one starts and stops.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from actors.execution.attempt import (
    WorkerFailed,
    empty_directory,
    load_processor,
    run_processor,
)
from actors.execution.extract import PdfLimits, configure_pdf_limits
from actors.execution.local.limits import ProcessLimits, apply_process_limits, start_cpu_budget
from actors.policy.results import ResultLimits

__all__ = ["WorkerConfig", "run_worker"]

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything a worker needs at start.

    Attributes:
        processor: Import path ``"module:function"`` of the processor.
        memory_limit_bytes: The worker's address-space cap; ``None`` for none.
        pdf_limits: pypdf's limits in the worker.
        temp_dir: The worker's private temporary directory, emptied after each attempt.
        process_limits: CPU time per attempt and open files. Default: none.
        result_limits: How big a result may be. Default ``ResultLimits()``.
    """

    processor: str
    memory_limit_bytes: int | None
    pdf_limits: PdfLimits
    temp_dir: str
    process_limits: ProcessLimits = field(default_factory=ProcessLimits)
    result_limits: ResultLimits = field(default_factory=ResultLimits)


def run_worker(conn: Connection, config: WorkerConfig) -> None:
    """Serve attempts from ``conn`` until it closes, ``None`` arrives or memory runs out.

    The target of every worker process.
    """
    # Shutdown is the parent's decision: a Ctrl-C reaching the whole process group
    # must not fail the attempt in progress.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if config.memory_limit_bytes is not None:
        _cap_address_space(config.memory_limit_bytes)
    apply_process_limits(config.process_limits)
    os.environ["TMPDIR"] = config.temp_dir
    tempfile.tempdir = config.temp_dir
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    configure_pdf_limits(config.pdf_limits)
    processor = load_processor(config.processor)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        start_cpu_budget(config.process_limits)
        reply, payload = run_processor(
            processor,
            Path(job.blob_path).read_bytes,
            job.password,
            job.attempt,
            config.result_limits,
        )
        empty_directory(Path(config.temp_dir))
        try:
            conn.send_bytes(payload)
        except OSError:
            return
        if isinstance(reply, WorkerFailed) and reply.worker_exiting:
            return


def _die_with_parent() -> None:
    # The fork server exits with the service; a hung worker must not outlive both.
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _cap_address_space(limit: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
