"""The server's own threads on a few CPUs, its workers on all of them.

CPython runs one thread at a time. The server's threads (the upload, the batch
supervisors and their commits, the worker pool's monitor, the watch's loop) hand the
interpreter to one another thousands of times a second, and a hand-over between two
CPUs costs more than on one: the thread that waits sleeps in the kernel until the
other CPU wakes it, and the interpreter's state moves between the CPUs' caches. Kept
on one CPU, the same server spent less CPU a file; but what its threads do outside the
interpreter (gRPC's sends, the store's writes and flushes) then shares that CPU, and
with many watches their events came later: so it is a setting, off by default
(docs/performance.md, "The server's threads on one CPU" and "Watches on one CPU").

:func:`pin_server` moves every thread of the process to the chosen CPUs; a thread
started afterwards inherits its starter's CPUs, and so does a process it starts, which
is why each local worker sets its own CPUs back to every CPU the server had at its
start (:attr:`~actors.execution.local.limits.ProcessLimits.cpus`). Ray's processes
are started before the pinning, with the server's CPUs as they were.
"""

from __future__ import annotations

import contextlib
import os

import structlog

__all__ = ["allowed_cpus", "pin_server", "server_cpus"]

log = structlog.get_logger(__name__)

_THREADS = "/proc/self/task"


def allowed_cpus() -> frozenset[int] | None:
    """The CPUs this process may run on; ``None`` where the system does not say."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return frozenset(os.sched_getaffinity(0))


def server_cpus(count: int, allowed: frozenset[int] | None) -> frozenset[int] | None:
    """The ``count`` highest-numbered CPUs of ``allowed`` (the lowest ones take most of
    the devices' interrupts); ``None`` to leave the threads where they are: a
    ``count`` of 0, as many CPUs as allowed or more, or no affinity to set.
    """
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    if allowed is None or count == 0 or count >= len(allowed):
        return None
    return frozenset(sorted(allowed)[-count:])


def pin_server(cpus: frozenset[int]) -> None:
    """Move every thread of this process to ``cpus``; a thread that ends meanwhile is
    passed over.

    The threads are listed again until no new one shows: a thread that a thread not
    moved yet starts meanwhile takes its starter's CPUs, not these.

    Raises:
        OSError: The kernel refused (none of ``cpus`` is allowed any more, say).
    """
    seen: set[str] = set()
    while new := set(os.listdir(_THREADS)) - seen:
        for name in new:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(name), cpus)
        seen |= new
    log.info("server_threads_pinned", cpus=sorted(cpus), threads=len(seen))
