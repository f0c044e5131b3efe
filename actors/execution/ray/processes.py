"""Ray worker processes from the service's side: where one runs, how it ended, its exit.

When Ray, rather than the processor, ends an attempt (the worker died, its node went
away, a cancel), :func:`classify_ray_failure` names the code the local pool gives the
same event.

``ray.cancel(force=True)`` kills the worker process running a task, but Ray reports the
task cancelled before that process has exited. :func:`await_exit` closes the gap: run on
the process's node (in the service when it is the same node, otherwise as a probe task
pinned there by :func:`reap_on_nodes`), it returns once nothing of the attempt runs.
Either the process is gone, and its temporary directory is removed, or the process no
longer runs the attempt: a task that had just finished when the cancel came is not
killed, and Ray may still report it cancelled. A worker tells which attempt it runs by
the :data:`BUSY_MARKER` file in its temporary directory, written before the task says
where it runs and removed before it answers. Linux only, as Ray clusters are: it reads
``/proc``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray
import structlog
from ray import exceptions as ray_errors
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.execution.classify import classify
from actors.execution.local.process import remove_tree
from actors.policy.catalogue import ErrorCode

__all__ = [
    "BUSY_MARKER",
    "PROBE_START_TIMEOUT",
    "REAP_TIMEOUT",
    "WorkerLocation",
    "await_exit",
    "cancel_quietly",
    "classify_ray_failure",
    "decode_location",
    "process_alive",
    "process_stat",
    "reap_on_nodes",
    "runtime_env_option",
]

log = structlog.get_logger(__name__)

# Ray's forced exit takes milliseconds; a process still there after this is reported.
REAP_TIMEOUT = 5.0
# A probe may need a fresh worker process on its node before it can run.
PROBE_START_TIMEOUT = 10.0
_POLL = 0.01
# In a worker's temporary directory: the id of the Ray task it runs, while it runs it.
BUSY_MARKER = ".pdfbatch-attempt"


@dataclass(frozen=True, slots=True)
class WorkerLocation:
    """Where an attempt runs.

    Attributes:
        node_id: The Ray node.
        pid: The worker process on that node.
        start_ticks: The process's start time (``/proc/<pid>/stat``), which tells it
            apart from a later process with the same pid.
        temp_dir: The process's private temporary directory on that node.
        task_id: The Ray task of the attempt.
    """

    node_id: str
    pid: int
    start_ticks: int
    temp_dir: str
    task_id: str

    def encode(self) -> bytes:
        """Serialize for the task's stream; see :func:`decode_location`."""
        return json.dumps(asdict(self)).encode()


def decode_location(data: object) -> WorkerLocation:
    """Parse what :meth:`WorkerLocation.encode` wrote.

    Raises:
        ValueError: ``data`` is not an encoded location.
    """
    if not isinstance(data, bytes):
        raise ValueError(f"malformed worker location: {type(data).__name__}")
    try:
        location = WorkerLocation(**json.loads(data))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"malformed worker location: {type(exc).__name__}") from exc
    types = (str, int, int, str, str)
    if not all(isinstance(v, t) for v, t in zip(asdict(location).values(), types, strict=True)):
        raise ValueError("malformed worker location: wrong field types")
    return location


def classify_ray_failure(exc: BaseException) -> ErrorCode:
    """The code of an attempt that Ray, rather than the processor, ended.

    The processor's own exceptions never get here: the task classifies them and returns
    them as data. What remains is Ray's machinery failing, mapped to the code the local
    pool gives the same event, and anything else to :func:`actors.execution.classify.classify`.

    Returns:
        ``WORKER_CRASHED`` (retryable) when the worker, its node or the object holding
        its answer went away, including Ray's memory monitor killing the worker (the
        local pool's counterpart is the kernel's OOM killer) and a cancel that was not
        ours; ``STORAGE_UNAVAILABLE`` when the object store is full; ``INTERNAL`` when
        our task code itself raised.
    """
    match exc:
        case ray_errors.RayTaskError():
            return ErrorCode.INTERNAL
        case (
            ray_errors.WorkerCrashedError()
            | ray_errors.NodeDiedError()
            | ray_errors.LocalRayletDiedError()
            | ray_errors.ObjectLostError()
            | ray_errors.TaskCancelledError()
            | ray_errors.OutOfMemoryError()
            | ray_errors.RaySystemError()
            | ray_errors.RpcError()
            | ray_errors.GetTimeoutError()
        ):
            return ErrorCode.WORKER_CRASHED
        case ray_errors.ObjectStoreFullError() | ray_errors.OutOfDiskError():
            return ErrorCode.STORAGE_UNAVAILABLE
        case _:
            return classify(exc)


def process_stat(pid: int) -> tuple[str, int] | None:
    """The process's state letter and start time, or ``None`` if there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: field 3 is the state, field 22 the start time.
    return fields[0], int(fields[19])


def process_alive(pid: int, start_ticks: int) -> bool:
    """Whether that very process still runs; a zombie does not."""
    stat = process_stat(pid)
    return stat is not None and stat[1] == start_ticks and stat[0] not in ("Z", "X")


def await_exit(pid: int, start_ticks: int, temp_dir: str, task_id: str, timeout: float) -> bool:
    """Wait until the process is gone or runs task ``task_id`` no more.

    A process that is gone has its temporary directory removed; one that lives on keeps
    it, for its next attempts.

    Returns:
        Whether that happened within ``timeout`` seconds.
    """
    marker = Path(temp_dir) / BUSY_MARKER
    deadline = time.monotonic() + timeout
    while process_alive(pid, start_ticks):
        if not _runs(marker, task_id):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    remove_tree(Path(temp_dir))
    return True


def _runs(marker: Path, task_id: str) -> bool:
    try:
        return marker.read_text() == task_id
    except OSError:
        return False


_exit_probe = ray.remote(num_cpus=0, max_retries=0)(await_exit)


def reap_on_nodes(
    locations: Sequence[WorkerLocation],
    *,
    timeout: float = REAP_TIMEOUT,
    runtime_env: Mapping[str, Any] | None = None,
) -> list[WorkerLocation]:
    """Run :func:`await_exit` for each location on its own node, all at once.

    A probe needs no CPU, so a busy node runs it at once, though perhaps only after Ray
    has started a worker process for it.

    Returns:
        The locations whose process was still there after ``timeout`` seconds. A node
        that died meanwhile took its processes with it and counts as done.
    """
    probes: dict[ray.ObjectRef[bool], WorkerLocation] = {}
    for where in locations:
        strategy = NodeAffinitySchedulingStrategy(where.node_id, soft=False)
        task = _exit_probe.options(scheduling_strategy=strategy, **runtime_env_option(runtime_env))
        probe = task.remote(where.pid, where.start_ticks, where.temp_dir, where.task_id, timeout)
        probes[probe] = where
    if not probes:
        return []
    ready, pending = ray.wait(
        list(probes), num_returns=len(probes), timeout=timeout + PROBE_START_TIMEOUT
    )
    survivors = [probes[probe] for probe in pending]
    for probe in ready:
        try:
            if not ray.get(probe):
                survivors.append(probes[probe])
        except (ray_errors.NodeDiedError, ray_errors.TaskUnschedulableError):
            pass  # the node is gone, and its processes with it
        except ray_errors.RayError as exc:
            log.error("exit probe failed", node_id=probes[probe].node_id, error=str(exc))
            survivors.append(probes[probe])
    for probe in pending:
        cancel_quietly(probe)
    return survivors


def cancel_quietly(ref: ray.ObjectRef[Any] | ray.ObjectRefGenerator[Any]) -> None:
    """``ray.cancel(ref, force=True)``, logging rather than raising if Ray refuses."""
    try:
        ray.cancel(ref, force=True)
    # Ray gone or refusing: the waiting that follows finds out what still runs.
    except Exception as exc:  # noqa: BLE001
        log.warning("ray.cancel failed", error=str(exc), exception_type=type(exc).__name__)


def runtime_env_option(runtime_env: Mapping[str, Any] | None) -> dict[str, Any]:
    """Task options for ``runtime_env``.

    Left out rather than ``None`` when there is none: tasks then inherit the job's.
    """
    return {} if runtime_env is None else {"runtime_env": dict(runtime_env)}
