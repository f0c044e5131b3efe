"""Changes by state applied when rows are read: what a SQL store needs to make a cancel or
a retry of every file cost the same for ten files or a million.

A change by state (:class:`~actors.policy.model.BulkChange` with a ``from_state``) is
stored as one numbered *move* on its batch instead of an update of every row it moves.
Each file row carries ``moved``: the number of the last move it already shows (a row
written by the batch's supervisor shows every move before it). A move numbered above a
row's ``moved`` is *pending* for that row. Reading a row applies its pending moves in
order (:func:`apply_moves`, with the rule the book itself uses,
:func:`actors.policy.book.moved_by`), and a query by state asks for rows whose state
*after* the pending moves is the one wanted (:func:`state_conditions`). The store writes
moves into their rows in the background, oldest first, and forgets a move once no row
is left for it.

A move's effect on a row depends only on its state, its manual retries and whether its
password guesses are used up (which no move changes), and the moves after it. So every
row falls into one of a few classes: its stored state, which pending moves are above its
``moved``, where its manual retries sit against the retry limits involved, and its
password guesses. :func:`state_conditions` plays the moves over one made-up record of
each class and turns the classes that end as wanted into SQL. The rule is written once,
in the policy; SQL only sorts rows into classes.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from actors.policy.book import moved_by, retryable
from actors.policy.catalogue import ErrorCode
from actors.policy.model import Attempt, BulkChange, FileRecord, FileState
from actors.policy.rules import MAX_WRONG_PASSWORDS

__all__ = [
    "MAX_PENDING_MOVES",
    "Condition",
    "Move",
    "MoveWriter",
    "apply_moves",
    "retryable_sql",
    "state_conditions",
]

log = structlog.get_logger(__name__)

Move = tuple[int, BulkChange]
"""A change by state and its number among the batch's moves (from 1)."""

_WRONG = ErrorCode.PDF_WRONG_PASSWORD.value

# A batch keeps at most this many moves pending; one more writes the oldest into its
# rows first (in the commit that adds it). Each pending move adds a class of rows to
# every query by state.
MAX_PENDING_MOVES = 4

# Whether a file's password guesses are used up, in SQL on a row of ``files``, for a
# statement that binds its batch id as ``:batch``. A file that used them up failed with
# a wrong password and never moves again, so its error still says so: the few such
# files come from an index, once per statement, not a look into each row.
_GUESSES_USED_UP = (
    "file_id IN (SELECT file_id FROM files INDEXED BY files_wrong_password "
    f"WHERE batch_id = :batch AND json_extract(error, '$.code') = '{_WRONG}' AND ("
    "SELECT COUNT(*) FROM attempts AS a WHERE a.batch_id = :batch "
    f"AND a.file_id = files.file_id AND a.code = '{_WRONG}') >= {MAX_WRONG_PASSWORDS})"
)

# A floor no file reaches: only files whose last error is a wrong password are wanted.
_NO_RETRIES = 2**62

_WRONG_GUESSES = tuple(
    Attempt(number, 0.0, code=ErrorCode.PDF_WRONG_PASSWORD)
    for number in range(1, MAX_WRONG_PASSWORDS + 1)
)


def retryable_sql(max_manual_retries: int) -> str:
    """:func:`actors.policy.book.retryable` in SQL, on a row of ``files`` (the statement
    binds its batch id as ``:batch``)."""
    return f"(manual_retries < {int(max_manual_retries)} AND NOT {_GUESSES_USED_UP})"


def apply_moves(record: FileRecord, moved: int, moves: Sequence[Move]) -> FileRecord:
    """``record``, read from a row that shows the moves up to ``moved``, as the batch's
    pending ``moves`` (oldest first) leave it."""
    for number, bulk in moves:
        if number > moved:
            record = moved_by(bulk, record) or record
    return record


@dataclass(frozen=True, slots=True)
class Condition:
    """Which rows of one stored state are wanted.

    Attributes:
        sql: A condition on a row of ``files`` (the statement binds its batch id as
            ``:batch``); ``"1"`` when every row is wanted.
        floor: When set, every wanted row has at least this many manual retries (1 or
            more) or a wrong password as its last error: the few rows two small
            indexes hold, which the query can start from instead of the state's range.
    """

    sql: str
    floor: int | None = None


def state_conditions(
    moves: tuple[Move, ...], states: frozenset[FileState], max_manual_retries: int | None = None
) -> dict[FileState, Condition]:
    """Which rows end in ``states`` once ``moves`` are applied, by the state they are
    stored in.

    Args:
        moves: The batch's pending moves, oldest first.
        states: The states wanted after the moves.
        max_manual_retries: Only rows a manual retry with this limit may move after the
            moves (see :func:`actors.policy.book.retryable`); ``None`` for all.

    Returns:
        For each stored state with rows that may be wanted, their condition: the query
        reads the state's range of ``files_by_state`` with it. States left out have none.
    """
    return dict(_conditions(moves, states, max_manual_retries))


@functools.lru_cache(maxsize=256)
def _conditions(
    moves: tuple[Move, ...], states: frozenset[FileState], cap: int | None
) -> tuple[tuple[FileState, Condition], ...]:
    limits = [bulk.max_manual_retries for _, bulk in moves if bulk.manual_retry]
    if cap is not None:
        limits.append(cap)
    # Manual retries matter only against the limits, each less the retries the moves
    # before it may have added: the points where a row's fate can change.
    points = sorted({0, *(max(0, limit - k) for limit in limits for k in range(len(moves) + 1))})
    retries = [(low, high) for low, high in zip(points, [*points[1:], None], strict=True)]
    guesses = (False, True) if limits else (False,)

    def wanted(record: FileRecord) -> bool:
        return record.state in states and (cap is None or retryable(record, cap))

    out: list[tuple[FileState, Condition]] = []
    for stored in FileState:
        # The condition of each class of ``moved`` (None: no row of it is wanted).
        classes: list[str | None] = []
        # The fewest manual retries of a wanted row whose guesses are not used up.
        fewest: int | None = None
        for first in range(len(moves) + 1):
            ends = {
                (span, used_up): wanted(
                    apply_moves(
                        FileRecord(
                            "",
                            "",
                            "",
                            0,
                            state=stored,
                            manual_retries=span[0],
                            attempts=_WRONG_GUESSES if used_up else (),
                        ),
                        0,
                        moves[first:],
                    )
                )
                for span in retries
                for used_up in guesses
            }
            for (span, used_up), end in ends.items():
                if end and not used_up:
                    fewest = span[0] if fewest is None else min(fewest, span[0])
            if all(ends.values()):
                classes.append("1")
            elif any(ends.values()):
                classes.append(_by_fate(ends, guesses))
            else:
                classes.append(None)
        condition = _by_moved(moves, classes)
        if condition is not None:
            floor = None if fewest == 0 else (fewest or _NO_RETRIES)
            out.append((stored, Condition(condition, floor)))
    return tuple(out)


def _by_moved(moves: Sequence[Move], classes: list[str | None]) -> str | None:
    """SQL choosing each class of ``moved`` with its condition (``classes[i]``: rows for
    which the moves from index ``i`` on are pending), neighbours with the same condition
    joined; ``None`` when no row is wanted."""
    terms: list[str] = []
    start = 0
    for end in range(1, len(classes) + 1):
        if end < len(classes) and classes[end] == classes[start]:
            continue
        condition = classes[start]
        if condition is not None:
            bounds = []
            if start > 0:
                bounds.append(f"moved >= {moves[start - 1][0]}")
            if end < len(classes):
                bounds.append(f"moved < {moves[end - 1][0]}")
            parts = [*bounds, *([] if condition == "1" else [condition])]
            terms.append("(" + " AND ".join(parts) + ")" if parts else "1")
        start = end
    if not terms:
        return None
    if "1" in terms:
        return "1"
    return terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")"


_Span = tuple[int, int | None]


def _by_fate(ends: dict[tuple[_Span, bool], bool], guesses: tuple[bool, ...]) -> str:
    """SQL for the (manual retries, guesses used up) classes that end as wanted."""
    if all(ends[span, False] == ends[span, True] for span, _ in ends) or len(guesses) == 1:
        return _retries_in([span for (span, used_up), end in ends.items() if end and not used_up])
    parts = []
    for used_up in guesses:
        spans = [span for (span, flag), end in ends.items() if end and flag == used_up]
        if spans:
            guess = _GUESSES_USED_UP if used_up else f"NOT {_GUESSES_USED_UP}"
            parts.append(f"({guess} AND {_retries_in(spans)})")
    return "(" + " OR ".join(parts) + ")" if parts else "0"


def _retries_in(spans: list[_Span]) -> str:
    """SQL for manual retries in any of ``spans`` (``[low, high)``; high ``None``: no end)."""
    merged: list[_Span] = []
    for low, high in sorted(spans):
        if merged and merged[-1][1] == low:
            merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    parts = []
    for start, end in merged:
        bounds = []
        if start:
            bounds.append(f"manual_retries >= {start}")
        if end is not None:
            bounds.append(f"manual_retries < {end}")
        parts.append("(" + " AND ".join(bounds) + ")" if bounds else "1")
    return "(" + " OR ".join(parts) + ")" if parts else "0"


class MoveWriter:
    """A thread that writes pending moves into their rows while there are any.

    Args:
        step: Writes part of a pending move in one transaction; returns whether one was
            pending (so there may be more to do).
        name: The thread's name.
        pause: Seconds between steps at least; at most as long as the last step took,
            so that other writers get the database at least half the time.
    """

    def __init__(self, step: Callable[[], bool], *, name: str, pause: float = 0.002) -> None:
        self._step = step
        self._name = name
        self._pause = pause
        self._lock = threading.Lock()
        self._work = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """There may be moves to write: start the thread if needed."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._work.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after the step it is in) and wait for it. Idempotent."""
        with self._lock:
            self._stopping.set()
            self._work.set()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._work.wait()
            self._work.clear()
            while not self._stopping.is_set():
                began = time.monotonic()
                try:
                    more = self._step()
                except Exception:
                    # The moves stay pending and readers keep applying them: nothing is
                    # lost, only later. Try again after a pause that grows to a minute.
                    failures += 1
                    log.warning("pending_moves_not_written", failures=failures, exc_info=True)
                    self._stopping.wait(min(60.0, 0.5 * 2 ** min(failures, 7)))
                    continue
                failures = 0
                if not more:
                    break
                self._stopping.wait(max(self._pause, time.monotonic() - began))
