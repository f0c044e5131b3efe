"""What a worker process may use, enforced by the kernel from inside the worker.

A worker parses hostile files, so it runs fenced in: files it creates are private
(umask 077: files 0600, directories 0700), it leaves no core dump (which would hold a
password in memory), it can open only a few files, and each attempt gets a CPU-time
budget. The memory cap (``RLIMIT_AS``) is set by :mod:`actors.execution.local.worker`.

A worker may also run at a lower CPU priority than the service (a niceness): on a
machine whose CPUs the workers keep busy, the service's threads (uploads, commits,
watches) then run as soon as they wake instead of waiting for a worker's time slice.
And it may run on other CPUs than the process that started it: the service keeps its
own threads on few CPUs (:mod:`server.service.affinity`), its workers on all of them.

The CPU budget is the soft ``RLIMIT_CPU``, moved before each attempt to the CPU time
the worker has used so far plus the budget. Past it, the kernel sends ``SIGXCPU``,
whose default action kills the worker even inside a C call that never returns to
Python; the parent classifies that death (:func:`actors.execution.classify.classify_exit`). The
hard limit is left as it is, so the next attempt can move the soft one again.
"""

from __future__ import annotations

import math
import os
import resource
import signal
from dataclasses import dataclass

__all__ = ["ProcessLimits", "apply_process_limits", "start_cpu_budget"]

_PRIVATE_UMASK = 0o077
# The highest niceness, the lowest priority, that Linux gives a process.
_LOWEST_PRIORITY = 19


@dataclass(frozen=True, slots=True)
class ProcessLimits:
    """Limits of a worker process, besides its memory cap.

    Attributes:
        cpu_seconds_per_attempt: CPU time (user plus system) one attempt may use, in
            whole seconds; the kernel's accounting may let it run up to one second more.
            ``None`` for no limit.
        max_open_files: Most file descriptors the worker may hold at once (soft and hard
            ``RLIMIT_NOFILE``); ``None`` to leave the inherited limit.
        niceness: How much lower than its parent's the worker's CPU priority is, 0
            (the same) to 19 (the lowest); an unprivileged process cannot undo it.
        cpus: The CPUs the worker runs on (its affinity); ``None`` for its parent's.

    Raises:
        ValueError: A limit is not positive, the niceness is outside 0 to 19, or
            ``cpus`` is empty or names a negative CPU.
    """

    cpu_seconds_per_attempt: int | None = None
    max_open_files: int | None = None
    niceness: int = 0
    cpus: frozenset[int] | None = None

    def __post_init__(self) -> None:
        for name in ("cpu_seconds_per_attempt", "max_open_files"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 <= self.niceness <= _LOWEST_PRIORITY:
            raise ValueError(f"niceness must be 0 to {_LOWEST_PRIORITY}, got {self.niceness}")
        if self.cpus is not None and (not self.cpus or min(self.cpus) < 0):
            raise ValueError(f"cpus must name at least one CPU, none negative, got {self.cpus}")


def apply_process_limits(limits: ProcessLimits) -> None:
    """Fence in the calling process for good; run once, at the worker's start.

    Raises:
        OSError: The kernel refused a limit (one above the hard limit, say).
    """
    os.umask(_PRIVATE_UMASK)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Whatever the parent did with SIGXCPU, the CPU budget must kill, not be caught.
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    if limits.max_open_files is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        cap = _within(limits.max_open_files, hard)
        # Lowering the hard limit too is for good: nothing in the worker can raise it.
        resource.setrlimit(resource.RLIMIT_NOFILE, (cap, cap))
    if limits.niceness:
        os.nice(limits.niceness)
    if limits.cpus is not None:
        os.sched_setaffinity(0, limits.cpus)


def start_cpu_budget(limits: ProcessLimits) -> None:
    """Give the attempt about to start its own CPU-time budget; nothing without one."""
    if limits.cpu_seconds_per_attempt is None:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(
        resource.RLIMIT_CPU, (_within(used + limits.cpu_seconds_per_attempt, hard), hard)
    )


def _within(value: int, hard: int) -> int:
    return value if hard == resource.RLIM_INFINITY else min(value, hard)
