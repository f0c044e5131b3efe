"""The server's own threads on a few CPUs, its workers on all of them.

CPython runs one thread at a time. The server's threads (the upload, the batch
supervisors and their commits, the worker pool's monitor, the watch's loop) hand the
interpreter to one another thousands of times a second, and a hand-over between two
CPUs costs more than on one: the thread that waits sleeps in the kernel until the
other CPU wakes it, and the interpreter's state moves between the CPUs' caches. Kept
on one CPU, the same server spent less CPU a file (docs/performance.md, "The server's
threads on one CPU"). But what its threads do outside the interpreter then shares that
CPU too, and with many watches open that is mostly gRPC's sends: 50 watches got their
events later on one CPU than on every CPU ("Watches on one CPU"). So
:class:`ThreadPlacement` keeps the threads on their CPUs while few watches are open,
and lets them run on every CPU while many are.

:func:`pin_server` moves every thread of the process to the chosen CPUs; a thread
started afterwards inherits its starter's CPUs, and so does a process it starts, which
is why each local worker sets its own CPUs back to every CPU the server had at its
start (:attr:`~actors.execution.local.limits.ProcessLimits.cpus`). Ray's processes
are started before the pinning, with the server's CPUs as they were.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

import structlog

__all__ = ["ThreadPlacement", "allowed_cpus", "pin_server", "server_cpus"]

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


def pin_server(cpus: frozenset[int]) -> int:
    """Move every thread of this process to ``cpus``; a thread that ends meanwhile is
    passed over. Returns how many threads it moved.

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
    return len(seen)


class ThreadPlacement:
    """The server's threads on ``pinned`` while at most ``max_watches`` watches are
    open, on ``everywhere`` while more are; back on ``pinned`` once no more than half
    of ``max_watches`` are open again, so that a count that wavers about the bound does
    not move them at every watch.

    Args:
        pinned: The CPUs of :func:`server_cpus`.
        everywhere: Every CPU the server may use (:func:`allowed_cpus` at its start).
        max_watches: The most open watches with the threads kept on ``pinned``; 0 for
            no bound.
        pin: What moves the threads (a test's stand-in). Default :func:`pin_server`.
    """

    def __init__(
        self,
        pinned: frozenset[int],
        everywhere: frozenset[int],
        max_watches: int,
        *,
        pin: Callable[[frozenset[int]], object] = pin_server,
    ) -> None:
        if max_watches < 0:
            raise ValueError(f"max_watches must not be negative, got {max_watches}")
        self._pinned = pinned
        self._everywhere = everywhere
        self._max_watches = max_watches
        self._pin = pin
        self._lock = threading.Lock()
        self._spread = False

    @property
    def everywhere(self) -> frozenset[int]:
        """Every CPU the server may use."""
        return self._everywhere

    @property
    def spread(self) -> bool:
        """Whether the threads run on every CPU now."""
        with self._lock:
            return self._spread

    def place(self) -> None:
        """Move every thread of the process to the pinned CPUs.

        Raises:
            OSError: The kernel refused (see :func:`pin_server`).
        """
        with self._lock:
            threads = self._pin(self._pinned)
            self._spread = False
        log.info("server_threads_pinned", cpus=sorted(self._pinned), threads=threads)

    def watches(self, open_watches: int) -> None:
        """The number of open watches changed to ``open_watches``: move the threads if
        it crossed a bound. A refusal of the kernel is logged: the threads stay where
        they are, which only costs time. Once released, nothing moves them again."""
        with self._lock:
            if not self._max_watches:
                return
            if not self._spread and open_watches > self._max_watches:
                cpus, spread = self._everywhere, True
            elif self._spread and open_watches <= self._max_watches // 2:
                cpus, spread = self._pinned, False
            else:
                return
            try:
                threads = self._pin(cpus)
            except OSError as exc:
                log.warning("server_threads_not_moved", cpus=sorted(cpus), error=str(exc))
                return
            self._spread = spread
            log.info(
                "server_threads_moved",
                cpus=sorted(cpus),
                threads=threads,
                open_watches=open_watches,
            )

    def release(self) -> None:
        """Every thread of the process back on every CPU, for good (for a process that
        goes on with other work once the service stopped): a watch that ends later
        does not pin them again."""
        with self._lock:
            with contextlib.suppress(OSError):
                self._pin(self._everywhere)
            self._spread = True
            self._max_watches = 0
