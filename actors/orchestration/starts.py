"""Workers' starts of attempts, noted by the executor's thread for a batch supervisor.

A start is no message of its own: most attempts end before their start is due to be
stored (``show_running_after``), and their end stores the whole attempt (when a worker
started it, when it ended) in one change and one event. Only attempts still running by
then are stored as ``RUNNING``, with an event each. The first start noted after the
supervisor last took the notes wakes it with one
:class:`~actors.orchestration.messages.WorkersStarted`, so that it can wait for the
oldest start to come due.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["StartNote", "StartNotes"]


@dataclass(frozen=True, slots=True)
class StartNote:
    """A worker picked up ``attempt`` of ``file_id`` at ``at`` (the scheduler's clock)."""

    file_id: str
    attempt: int
    at: float


class StartNotes:
    """Starts noted from any thread, taken by the supervisor's.

    Args:
        now: The clock the notes are timed by.
        wake: Called (on the noting thread) for the first note after a :meth:`take`.
    """

    def __init__(self, now: Callable[[], float], wake: Callable[[], None]) -> None:
        self._now = now
        self._wake = wake
        # deque's append and popleft are atomic: no lock between the two threads.
        self._notes: deque[StartNote] = deque()
        self._woken = False

    def note(self, file_id: str, attempt: int) -> None:
        """On the executor's thread: a worker picked the attempt up now."""
        self._notes.append(StartNote(file_id, attempt, self._now()))
        # After the append: a take that cleared the flag before it has this note, or
        # this sees the flag cleared and wakes the supervisor for it.
        if not self._woken:
            self._woken = True
            self._wake()

    @property
    def due(self) -> bool:
        """Whether a start was noted since the last take for a commit (its notes may
        have been read since, for attempts that ended): a commit is due for it."""
        return self._woken

    def take(self, *, rearm: bool) -> list[StartNote]:
        """The notes so far, oldest first.

        Args:
            rearm: Whether the next note wakes the supervisor again: true when the
                notes are taken for a commit, false when they are read for an attempt's
                end (a wake already sent still comes, and its commit takes the rest).
        """
        if rearm:
            # Before the reads: a note appended after them sees the flag cleared.
            self._woken = False
        taken: list[StartNote] = []
        while self._notes:
            taken.append(self._notes.popleft())
        return taken
