"""A local worker process seen from the service: start it, kill it, reap it.

:class:`WorkerProcess` is the parent's handle on one process running
:func:`actors.execution.local.worker.run_worker`; :mod:`actors.execution.local.pool`
decides when.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path

import structlog

from actors.execution.local.worker import WorkerConfig, run_worker

__all__ = ["WorkerProcess", "describe_exit", "remove_tree"]

log = structlog.get_logger(__name__)


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
