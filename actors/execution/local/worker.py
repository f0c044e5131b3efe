"""What runs inside a local worker process: chunks of attempts from its pipe.

The pool sends a worker a chunk (:func:`run_message`: one or several attempts, as
:data:`ChunkItem` tuples), which it runs one by one with
:func:`actors.execution.attempt.run_processor` (which reads the blob itself). After each
attempt it reads whatever else the pool sent meanwhile (a :func:`skip_message` drops
attempts of the chunk that were cancelled before they started), then answers with one
message that carries the attempt's reply and which attempt it starts next
(:func:`encode_outcome`): one write per file says both that it ended and that the next
one began, so the pool arms the next deadline when the worker really starts it. The
first attempt of a chunk starts when the chunk arrives.

Messages to a worker are plain tuples: pickling 16 frozen dataclasses took 117 µs
here, 16 tuples 1 µs. The parent's handle on a worker is
:mod:`actors.execution.local.process`;
:mod:`actors.execution.local.pool` decides when one starts and stops, and what it runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import signal
import struct
import sys
import tempfile
from collections import deque
from collections.abc import Callable
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
from actors.policy.document import ExtractionMode
from actors.policy.results import ResultLimits

__all__ = [
    "NOTHING_NEXT",
    "OUTCOME_HEADER_BYTES",
    "ChunkItem",
    "WorkerConfig",
    "decode_outcome_header",
    "encode_outcome",
    "run_message",
    "run_worker",
    "skip_message",
]

_PR_SET_PDEATHSIG = 1
# An outcome's header: the sequence number of the attempt that ended, and of the one
# the worker starts next (NOTHING_NEXT when it waits for another chunk).
_OUTCOME_HEADER = struct.Struct("<qq")
OUTCOME_HEADER_BYTES = _OUTCOME_HEADER.size
NOTHING_NEXT = -1


# One attempt as a worker needs it: (seq, blob_path, blob_content, password, attempt,
# extraction mode). ``seq`` is the pool's number for this hand-over, which outcomes name;
# no batch, file or tenant. ``blob_content`` carries a small upload's bytes (then
# ``blob_path`` is empty), see :class:`~actors.execution.contract.AttemptJob`.
ChunkItem = tuple[int, str, bytes | None, str | None, int, str]
_RUN = "run"
_SKIP = "skip"


def run_message(items: tuple[ChunkItem, ...]) -> tuple[str, tuple[ChunkItem, ...]]:
    """Attempts to run in this order; a worker gets one only when it has none left."""
    return (_RUN, items)


def skip_message(seqs: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """Attempts of the chunk in hand cancelled before they started: not to be run."""
    return (_SKIP, seqs)


def encode_outcome(done: int, next_seq: int, payload: bytes) -> bytes:
    """An attempt's reply, with the numbers of the attempt that ended and of the next."""
    return _OUTCOME_HEADER.pack(done, next_seq) + payload


def decode_outcome_header(data: bytes) -> tuple[int, int]:
    """The (ended, next) sequence numbers at the start of an outcome.

    Raises:
        ValueError: ``data`` is too short to hold them.
    """
    if len(data) < OUTCOME_HEADER_BYTES:
        raise ValueError("worker outcome shorter than its header")
    done, next_seq = _OUTCOME_HEADER.unpack_from(data)
    return done, next_seq


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything a worker needs at start.

    Attributes:
        processor: Import path ``"module:function"`` of the processor.
        memory_limit_bytes: The worker's address-space cap; ``None`` for none.
        pdf_limits: pypdf's limits in the worker.
        temp_dir: The worker's private temporary directory, emptied after each attempt.
        process_limits: CPU time per attempt, open files, CPU priority. Default: none.
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
    chunk: deque[ChunkItem] = deque()
    skipped: set[int] = set()
    while True:
        if not chunk:
            # Skips name attempts already sent; with none in hand, none is pending.
            skipped.clear()
            if not _take(_receive(conn), chunk, skipped):
                return
            continue
        seq, blob_path, blob_content, password, attempt, mode = chunk.popleft()
        if seq in skipped:
            skipped.discard(seq)
            continue
        start_cpu_budget(config.process_limits)
        reply, payload = run_processor(
            processor,
            _reader(blob_path, blob_content),
            password,
            attempt,
            config.result_limits,
            mode=ExtractionMode(mode),
        )
        empty_directory(Path(config.temp_dir))
        # What the pool sent while this attempt ran decides what runs next.
        going_on = True
        while going_on and _has_more(conn):
            going_on = _take(_receive(conn), chunk, skipped)
        exiting = not going_on or (isinstance(reply, WorkerFailed) and reply.worker_exiting)
        while chunk and chunk[0][0] in skipped:
            skipped.discard(chunk.popleft()[0])
        next_seq = chunk[0][0] if chunk and not exiting else NOTHING_NEXT
        try:
            conn.send_bytes(encode_outcome(seq, next_seq, payload))
        except OSError:
            return
        if exiting:
            return


def _receive(conn: Connection) -> object:
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


def _has_more(conn: Connection) -> bool:
    try:
        return conn.poll()
    except (EOFError, OSError):
        return False


def _reader(blob_path: str, blob_content: bytes | None) -> Callable[[], bytes]:
    """How an attempt reads its upload: the bytes it carries, else the file."""
    if blob_content is None:
        return Path(blob_path).read_bytes
    return lambda: blob_content


def _take(message: object, chunk: deque[ChunkItem], skipped: set[int]) -> bool:
    """Apply one message from the pool; ``False`` when the worker is to stop."""
    match message:
        case ("run", tuple(items)):
            chunk.extend(items)
        case ("skip", tuple(seqs)):
            skipped.update(seqs)
        case _:
            return False  # None (stop), a closed pipe, or nothing this worker knows
    return True


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
