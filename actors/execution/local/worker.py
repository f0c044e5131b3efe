"""A worker process: the code that runs inside it, and the parent's handle on it.

A worker reads one :class:`~actors.execution.contract.AttemptJob` at a time from its pipe, reads
the blob itself, runs the processor and answers with a :class:`WorkerReply`. Replies
cross the pipe as JSON rather than pickle: a worker parses hostile files, so the parent
never unpickles what a worker sends. :class:`WorkerProcess` starts, kills and reaps one
worker; :mod:`actors.execution.local.pool` decides when.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import inspect
import json
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

import structlog

from actors.execution.classify import classify
from actors.execution.contract import AttemptJob
from actors.execution.extract import PdfLimits, configure_pdf_limits
from actors.execution.local.limits import ProcessLimits, apply_process_limits, start_cpu_budget
from actors.policy.catalogue import ErrorCode
from actors.policy.model import DocumentInfo, ExtractionResult, ResultWarning, WarningCode
from actors.policy.results import ResultLimits, make_storable

__all__ = [
    "MAX_DETAIL_CHARS",
    "Processor",
    "WorkerConfig",
    "WorkerFailed",
    "WorkerProcess",
    "WorkerReply",
    "WorkerSucceeded",
    "decode_reply",
    "describe_exit",
    "encode_reply",
    "load_processor",
    "remove_tree",
    "run_worker",
    "storable_reply",
]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

MAX_DETAIL_CHARS = 2_000
MAX_TRACEBACK_CHARS = 8_000
_PR_SET_PDEATHSIG = 1

Processor = Callable[..., ExtractionResult]


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


@dataclass(frozen=True, slots=True)
class WorkerSucceeded:
    """The processor returned a result."""

    result: ExtractionResult


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    """The attempt failed inside the worker.

    Attributes:
        code: The code :func:`actors.execution.classify.classify` gave the exception.
        exception_type: The exception's class name.
        detail: The exception's text, cut to :data:`MAX_DETAIL_CHARS`.
        worker_exiting: The worker exits after this reply and must get no more jobs.
    """

    code: ErrorCode
    exception_type: str
    detail: str
    worker_exiting: bool = False


WorkerReply = WorkerSucceeded | WorkerFailed


def encode_reply(reply: WorkerReply) -> bytes:
    """Serialize ``reply`` for the pipe.

    Raises:
        UnicodeEncodeError: A text holds a surrogate: a result must pass through
            :func:`actors.policy.results.make_storable` first.
    """
    if isinstance(reply, WorkerSucceeded):
        payload: dict[str, Any] = {"ok": asdict(reply.result)}
    else:
        payload = {"failed": asdict(reply)}
    # UTF-8 rather than ASCII escapes: three bytes for a CJK character, not six.
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def decode_reply(data: bytes) -> WorkerReply:
    """Parse a reply written by :func:`encode_reply`.

    Raises:
        ValueError: ``data`` is not a well-formed reply.
    """
    try:
        payload = json.loads(data)
        if "ok" in payload:
            fields = payload["ok"]
            result = ExtractionResult(
                page_count=_typed(fields["page_count"], int),
                encrypted=_typed(fields["encrypted"], bool),
                info=DocumentInfo(**{k: _optional_str(v) for k, v in fields["info"].items()}),
                pages=tuple(_typed(page, str) for page in fields["pages"]),
                warnings=tuple(
                    ResultWarning(
                        WarningCode(warning["code"]),
                        _typed(warning["place"], str),
                        _typed(warning["count"], int),
                    )
                    for warning in fields["warnings"]
                ),
            )
            return WorkerSucceeded(result)
        fields = payload["failed"]
        return WorkerFailed(
            code=ErrorCode(fields["code"]),
            exception_type=_typed(fields["exception_type"], str),
            detail=_typed(fields["detail"], str),
            worker_exiting=_typed(fields["worker_exiting"], bool),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"malformed worker reply: {type(exc).__name__}") from exc


def _typed(value: object, kind: type[_T]) -> _T:
    if not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _optional_str(value: object) -> str | None:
    return None if value is None else _typed(value, str)


def load_processor(path: str) -> Processor:
    """Import the processor named ``"module:function"``.

    Raises:
        ValueError: ``path`` is malformed or names nothing callable.
    """
    module_name, _, function_name = path.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"processor must look like 'module:function', got {path!r}")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load processor {path!r}: {exc}") from exc
    if not callable(function):
        raise ValueError(f"processor {path!r} is not callable")
    return function  # type: ignore[no-any-return]


def storable_reply(result: object, limits: ResultLimits) -> WorkerSucceeded:
    """The reply for what a processor returned: its result, made fit to store and send.

    Shared by the local and the Ray worker, so that both report a result the same way.

    Raises:
        ResultTooLargeError: The text is over the limit.
        TypeError: The processor returned something else than a result.
    """
    return WorkerSucceeded(make_storable(result, limits))  # type: ignore[arg-type]


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
    takes_attempt = "attempt" in inspect.signature(processor).parameters
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        start_cpu_budget(config.process_limits)
        reply, payload = _encoded(_attempt(processor, takes_attempt, job, config.result_limits))
        _empty_directory(Path(config.temp_dir))
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


def _attempt(
    processor: Processor, takes_attempt: bool, job: AttemptJob, limits: ResultLimits
) -> WorkerReply:
    try:
        data = Path(job.blob_path).read_bytes()
        if takes_attempt:
            result = processor(data, job.password, attempt=job.attempt)
        else:
            result = processor(data, job.password)
        return storable_reply(result, limits)
    # Whatever the processor does, only a real process death may end the worker.
    except BaseException as exc:  # noqa: BLE001
        return _failure(exc)


def _failure(exc: BaseException) -> WorkerFailed:
    code = classify(exc)
    return WorkerFailed(
        code=code,
        exception_type=type(exc).__name__,
        # An error nobody classified is a bug to fix: its engineers need the traceback.
        detail=_traceback(exc) if code is ErrorCode.INTERNAL else _describe(exc),
        # A heap that ran out may be fragmented or half-built: start afresh.
        worker_exiting=code is ErrorCode.MEMORY_LIMIT_EXCEEDED,
    )


def _encoded(reply: WorkerReply) -> tuple[WorkerReply, bytes]:
    try:
        return reply, encode_reply(reply)
    except BaseException as exc:  # noqa: BLE001 (a result too big to encode fails its attempt)
        failure = _failure(exc)
        return failure, encode_reply(failure)


def _traceback(exc: BaseException) -> str:
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # noqa: BLE001 (a broken __str__ must not hide the failure)
        return _describe(exc)
    # The innermost frames say most; keep the end.
    return text[-MAX_TRACEBACK_CHARS:]


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)[:MAX_DETAIL_CHARS]
    except Exception:  # noqa: BLE001 (an exception whose __str__ fails still has a type)
        return f"<unprintable {type(exc).__name__}>"


def _empty_directory(directory: Path) -> None:
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        log.warning("cannot list temporary directory", path=str(directory), error=str(exc))
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError as exc:
            log.warning("cannot remove temporary file", path=entry.path, error=str(exc))


class WorkerProcess:
    """One worker process, seen from the parent.

    Args:
        context: The fork-server context to start it from.
        config: What the worker needs; its ``temp_dir`` must exist.

    Raises:
        Exception: Whatever starting a process raises (out of pids, fork server gone).
    """

    def __init__(self, context: ForkServerContext, config: WorkerConfig) -> None:
        self.temp_dir = Path(config.temp_dir)
        self.conn, child_conn = context.Pipe(duplex=True)
        # Daemonic, so that multiprocessing's exit handler kills it if all else failed.
        self.process: BaseProcess = context.Process(
            target=run_worker, args=(child_conn, config), name="pdfbatch-worker", daemon=True
        )
        try:
            self.process.start()
        except BaseException:
            self.conn.close()
            raise
        finally:
            child_conn.close()
        self.pid: int = self.process.pid or 0

    def kill(self) -> None:
        """Send SIGKILL, unless the process is known to have exited."""
        # exitcode reads the fork server's report first, so a reaped pid is never signalled.
        if self.process.exitcode is None:
            try:
                self.process.kill()
            except OSError as exc:
                log.warning("cannot kill worker", pid=self.pid, error=str(exc))

    def reap(self, timeout: float) -> int | None:
        """Kill, wait for the exit and remove the temporary directory.

        Returns:
            The exit code; ``None`` if the process still runs after ``timeout`` seconds.
        """
        self.kill()
        self.process.join(timeout)
        if self.process.exitcode is None:
            log.error("worker survived SIGKILL", pid=self.pid)
        remove_tree(self.temp_dir)
        return self.process.exitcode

    def close_fds(self) -> None:
        """Close the pipe and the sentinel; only once nobody polls them any more."""
        self.conn.close()
        if self.process.exitcode is not None:
            self.process.close()


def describe_exit(exitcode: int | None) -> str:
    """A process's exit status for the log, naming the signal that killed it."""
    if exitcode is None:
        return "still running after SIGKILL"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"exit code {exitcode} ({signal.Signals(-exitcode).name})"
    return f"exit code {exitcode}"


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything below it; log what could not be removed."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        log.warning("cannot remove temporary files", path=str(path))
