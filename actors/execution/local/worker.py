"""What runs inside a local worker process: attempts from its pipe, one at a time.

A worker reads one :class:`~actors.execution.contract.AttemptJob` at a time from its
pipe, runs it with :func:`actors.execution.attempt.run_processor` (which reads the blob
itself) and answers with the reply's bytes. The parent's handle on a worker is
:mod:`actors.execution.local.process`; :mod:`actors.execution.local.pool` decides when
one starts and stops.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from multiprocessing import forkserver
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
    _let_the_fork_server_go()
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
            job.read_blob,
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


def _let_the_fork_server_go() -> None:
    """Close this worker's copy of the fork server's "service alive" pipe.

    multiprocessing hands every process started from the fork server the write end of
    the pipe whose end tells the fork server that the service is gone, so that the
    process could start processes of its own. A worker never does; holding it would
    keep the fork server alive after a ``kill -9`` of the service as long as a worker
    lives, and the worker alive as long as its parent, the fork server, lives: both
    would outlast the service by the rest of the attempt. Without it, the fork server
    exits with the service and the parent-death signal ends this worker at once.
    """
    server = forkserver._forkserver
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:
        with contextlib.suppress(OSError):
            os.close(alive)
        setattr(server, "_forkserver_alive_fd", None)  # noqa: B010 (a private attribute)


def _die_with_parent() -> None:
    # The fork server exits with the service; a hung worker must not outlive both.
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _cap_address_space(limit: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
