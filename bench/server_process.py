"""``pdfbatch serve`` in a child process, as a user runs it, and what the bench asks of it.

The server gets its own process (and so its own interpreter lock), like a deployed one:
the bench's client never competes with it for the lock, only for the CPUs. Its log goes
to a file in its scratch directory. :class:`ResourceSampler` watches its memory and
threads from outside with psutil.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import psutil

from bench.corpus import CorpusFile
from server.client.api import Client, UploadFile
from server.gen.pdfbatch.v1 import batch_pb2 as pb

__all__ = [
    "ROOT",
    "ResourceSampler",
    "ServerProcess",
    "Settled",
    "chosen_settings",
    "is_running",
    "policy",
    "settle",
    "submit",
    "uploads",
    "wait_gone",
]

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
_MB = 1024 * 1024
# Limits a benchmark must not trip over; every other setting is the default.
_ENV = {
    "PDFBATCH_SUBMISSIONS_PER_SECOND": "10000",
    "PDFBATCH_SUBMISSION_BURST": "10000",
    "PDFBATCH_RETRIES_PER_SECOND": "10000",
    "PDFBATCH_RETRY_BURST": "10000",
    "PDFBATCH_MAX_ACTIVE_BATCHES": "10000",
}


# The settings the bench's command line gives every service (``--setting``), as
# ``PDFBATCH_*`` variables; see chosen_settings.
_CHOSEN: dict[str, str] = {}


@contextlib.contextmanager
def chosen_settings(variables: Mapping[str, str]) -> Iterator[None]:
    """Give every service started meanwhile these ``PDFBATCH_*`` variables: a service
    in this process reads them from its environment, a :class:`ServerProcess` gets
    them; the environment is as it was afterwards."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    _CHOSEN.update(variables)
    try:
        yield
    finally:
        _CHOSEN.clear()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class ServerProcess:
    """A ``pdfbatch serve`` child on a free loopback port.

    Args:
        data_dir: Its data directory; reuse one to restart on the same data.
        workers: Worker processes.
        processor: ``PDFBATCH_PROCESSOR``; default the PDF extractor.
        max_files_per_batch: Raised from the default 1,000 for the large batches.
        log: Where its standard error goes. Default ``<data_dir>.log``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        workers: int,
        processor: str | None = None,
        max_files_per_batch: int = 20_000,
        log: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self._workers = workers
        self._processor = processor
        self._max_files = max_files_per_batch
        self._log_path = log or data_dir.with_suffix(".log")
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        """The server's pid."""
        assert self._process is not None, "not started"
        return self._process.pid

    def start(self) -> Self:
        """Start it; returns once it printed ``listening on``.

        Raises:
            RuntimeError: It exited or stayed silent for a minute.
        """
        # Only the settings given here and those chosen on the bench's command line:
        # none from the caller's PDFBATCH_* or Ray cluster.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PDFBATCH_") and k != "RAY_ADDRESS"
        }
        env.update(_ENV, PYTHONPATH=str(ROOT))
        env.update(_CHOSEN)
        if self._processor is not None:
            env["PDFBATCH_PROCESSOR"] = self._processor
        command = [
            *(sys.executable, "-m", "server.main", "serve", "--address", "127.0.0.1:0"),
            *("--data-dir", str(self.data_dir), "--workers", str(self._workers)),
            *("--max-files-per-batch", str(self._max_files), "--shutdown-grace", "0"),
        ]
        self._log = self._log_path.open("ab")
        self.started_at = time.monotonic()
        self._process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self._log
        )
        line = _read_line(self._process, START_TIMEOUT)
        if not line.startswith("listening on "):
            self.kill()
            raise RuntimeError(f"the server did not start ({line!r}); see {self._log_path}")
        self.address = line.removeprefix("listening on ").strip()
        return self

    def client(self) -> Client:
        """A client of this server; close it after use."""
        return Client(self.address, timeout=120.0)

    def tree(self) -> list[psutil.Process]:
        """The server and every process below it."""
        try:
            me = psutil.Process(self.pid)
            return [me, *me.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time used so far by the server process, and by the processes below it."""
        own = children = 0.0
        for index, process in enumerate(self.tree()):
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                if index == 0:
                    own = times.user + times.system
                else:
                    children += times.user + times.system
        return own, children

    def stop(self) -> None:
        """SIGTERM, then wait; SIGKILL if it does not exit. Idempotent."""
        process = self._process
        if process is not None and process.poll() is None:
            tree = self.tree()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            wait_gone(tree)
        self._close_pipes()

    def kill(self) -> None:
        """SIGKILL, as a crash would; returns once every process of it is gone."""
        process = self._process
        if process is not None and process.poll() is None:
            tree = self.tree()
            process.kill()
            process.wait()
            wait_gone(tree)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self._process is not None and self._process.stdout is not None:
            self._process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return process.stdout.readline().decode()


def wait_gone(processes: Iterable[psutil.Process], timeout: float = STOP_TIMEOUT) -> None:
    """Wait until each process has exited (the fork server and workers go after it).

    Raises:
        RuntimeError: One is still running after ``timeout``.
    """
    _, alive = psutil.wait_procs(list(processes), timeout=timeout)
    running = [p.pid for p in alive if is_running(p.pid)]
    if running:
        raise RuntimeError(f"processes outlived the server: {running}")


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@dataclass
class ResourceSampler:
    """Peak RSS and threads of a process (and RSS of its children), sampled in a thread.

    Attributes:
        pid: The process.
        interval: Seconds between samples. Default 0.02.
    """

    pid: int
    interval: float = 0.02
    peak_rss: int = 0
    peak_tree_rss: int = 0
    peak_threads: int = 0
    samples: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler")

    def sample(self) -> None:
        """Take one sample now."""
        with contextlib.suppress(psutil.Error):
            me = psutil.Process(self.pid)
            with me.oneshot():
                rss, threads = me.memory_info().rss, me.num_threads()
            children = 0
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    children += child.memory_info().rss
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_tree_rss = max(self.peak_tree_rss, rss + children)
            self.peak_threads = max(self.peak_threads, threads)
            self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Self:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def peaks_mb(self) -> tuple[float, float]:
        """(server alone, server and children) peak RSS in MB."""
        return self.peak_rss / _MB, self.peak_tree_rss / _MB


def policy(max_concurrency: int) -> pb.BatchPolicy:
    """The default policy but for ``max_concurrency``."""
    return pb.BatchPolicy(max_concurrency=max_concurrency)


def uploads(files: Iterable[CorpusFile]) -> list[UploadFile]:
    """The client's view of corpus files."""
    return [UploadFile(f.path, f.name) for f in files]


def submit(client: Client, files: Iterable[CorpusFile], max_concurrency: int) -> str:
    """Upload ``files`` as one batch; its id."""
    batch = client.submit(uploads(files), policy=policy(max_concurrency), timeout=600)
    return batch.batch_id


@dataclass(frozen=True, slots=True)
class Settled:
    """How a batch ended."""

    state: int
    counts: pb.FileCounts
    events: int

    @property
    def unsettled(self) -> int:
        """Files not in a terminal state."""
        return self.counts.pending + self.counts.running + self.counts.backoff


def settle(client: Client, batch_id: str) -> Settled:
    """Watch the batch until it settles; how it ended."""
    events = 0
    for _ in client.watch(batch_id):
        events += 1
    batch = client.get(batch_id)
    return Settled(batch.state, batch.counts, events)
