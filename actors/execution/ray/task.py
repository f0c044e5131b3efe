"""What runs inside a Ray worker process: one attempt, from the object store's bytes on.

An attempt is a streaming Ray task, :func:`run_attempt`. It yields twice: first where it
runs (a :class:`~actors.execution.ray.processes.WorkerLocation`) as soon as a worker has
picked it up, which is the executor's "started" signal; then the outcome, encoded by
:func:`actors.execution.local.worker.encode_reply` exactly as a local worker answers.
The processor's exceptions are classified here, in the worker, with
:func:`actors.execution.classify.classify`, and travel as data, so the codes are the
local pool's. Both items are JSON, parsed and checked by the executor; Ray itself still
moves them with pickle (see docs/ray.md on trust).

Unlike a local worker, a Ray worker stays after a ``MemoryError``: a task cannot make its
process leave without Ray failing the task, and sometimes losing its answer.

A Ray worker process serves many attempts, like a local worker, but is started by Ray, not
by us. Its own state is therefore set up on the first attempt it runs (a module-level
guard): a private temporary directory (mode 0700, emptied after every attempt) and the
address space the process had before any PDF was read. That baseline matters because an
idle Ray worker already maps several GB (the object store, Ray's threads): an absolute
``RLIMIT_AS`` as the local pool sets would leave it no room at all. Here the cap is the
baseline plus ``memory_limit_bytes``, set anew by every attempt, so the limit in force is
always the current attempt's even though rlimits outlive tasks. Only our own tasks run in
these processes: Ray never lends a worker to another job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import ray
import structlog

from actors.execution.attempt import (
    Processor,
    empty_directory,
    encode_reply,
    failure,
    load_processor,
    run_processor,
)
from actors.execution.extract import PdfLimits, configure_pdf_limits
from actors.execution.ray.processes import BUSY_MARKER, WorkerLocation, process_alive, process_stat
from actors.policy.document import ExtractionMode
from actors.policy.results import ResultLimits

__all__ = ["RayAttemptConfig", "run_attempt"]

log = structlog.get_logger(__name__)

_TEMP_PREFIX = "pdfbatch-ray-"


@dataclass(frozen=True, slots=True)
class RayAttemptConfig:
    """What every attempt carries to its Ray worker.

    Attributes:
        processor: Import path ``"module:function"`` of the processor.
        memory_limit_bytes: Address space an attempt may add to what the Ray worker
            process maps for itself; ``None`` for no cap.
        pdf_limits: pypdf's limits.
        result_limits: How big one file's result may be.
    """

    processor: str
    memory_limit_bytes: int | None
    pdf_limits: PdfLimits
    result_limits: ResultLimits = field(default_factory=ResultLimits)


def run_attempt(
    config: RayAttemptConfig,
    data: bytes,
    password: str | None,
    attempt: int,
    mode: ExtractionMode,
) -> Iterator[bytes]:
    """The Ray task of one attempt: yield the location, then the encoded outcome.

    Never raises for anything the processor does: a failure is an outcome. Run as a
    streaming task with ``max_retries=0``; the data arrives through the object store.
    """
    state = _process_state(len(data))
    task_id = ray.get_runtime_context().get_task_id() or ""
    _mark_busy(state.temp_dir, task_id)
    yield replace(state.location, task_id=task_id).encode()
    try:
        processor = _prepare(state, config)
    # A failure to prepare (no temporary directory, a processor that does not import)
    # is the attempt's, classified like any other.
    except BaseException as exc:  # noqa: BLE001
        payload = encode_reply(failure(exc))
    else:
        _, payload = run_processor(
            processor, lambda: data, password, attempt, config.result_limits, mode=mode
        )
    empty_directory(state.temp_dir)
    yield payload


# -- inside the worker process --------------------------------------------------------


@dataclass(slots=True)
class _ProcessState:
    location: WorkerLocation  # without a task
    temp_dir: Path
    baseline_address_space: int
    processors: dict[str, Processor]


_state: _ProcessState | None = None


def _process_state(data_size: int) -> _ProcessState:
    global _state  # noqa: PLW0603 (one per process: that is the point)
    if _state is None:
        pid = os.getpid()
        stat = process_stat(pid)
        start_ticks = stat[1] if stat is not None else 0
        root = Path(tempfile.gettempdir())
        temp_dir = root / f"{_TEMP_PREFIX}{pid}-{start_ticks}"
        location = WorkerLocation(
            ray.get_runtime_context().get_node_id(), pid, start_ticks, str(temp_dir), ""
        )
        # The attempt's bytes are already in memory; they count against its cap, as in a
        # local worker, so they are not part of the baseline.
        baseline = max(0, _address_space() - data_size)
        _state = _ProcessState(location, temp_dir, baseline, {})
        logging.getLogger("pypdf").setLevel(logging.ERROR)
        _sweep(root)
    return _state


def _mark_busy(temp_dir: Path, task_id: str) -> None:
    """Say which task runs here; emptying the directory after the attempt unsays it."""
    try:
        if not temp_dir.is_dir():
            temp_dir.mkdir(mode=0o700)
            os.environ["TMPDIR"] = str(temp_dir)
            tempfile.tempdir = str(temp_dir)
        (temp_dir / BUSY_MARKER).write_text(task_id)
    # The attempt fails in _prepare for the same reason, classified; a cancel meanwhile
    # sees no marker and does not wait for the process.
    except OSError as exc:
        log.warning("cannot mark the worker busy", path=str(temp_dir), error=str(exc))


def _prepare(state: _ProcessState, config: RayAttemptConfig) -> Processor:
    if not state.temp_dir.is_dir():
        raise FileNotFoundError(f"no temporary directory {state.temp_dir}")
    _cap_address_space(state.baseline_address_space, config.memory_limit_bytes)
    # pypdf's configuration is a ContextVar and Ray may run each task in a fresh context.
    configure_pdf_limits(config.pdf_limits)
    if config.processor not in state.processors:
        state.processors[config.processor] = load_processor(config.processor)
    return state.processors[config.processor]


def _cap_address_space(baseline: int, limit: int | None) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    wanted = hard if limit is None else baseline + limit
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted != soft:
        resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def _sweep(root: Path) -> None:
    """Remove the temporary directories of worker processes that died on this node."""
    for entry in root.glob(f"{_TEMP_PREFIX}*"):
        pid, _, ticks = entry.name.removeprefix(_TEMP_PREFIX).partition("-")
        with contextlib.suppress(ValueError):
            if not process_alive(int(pid), int(ticks)):
                shutil.rmtree(entry, ignore_errors=True)
