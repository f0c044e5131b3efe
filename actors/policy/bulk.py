"""Whether a change by state moved a file, told from the file's history afterwards.

A change by state (a cancel, a retry of every failed file) names no file: it moves every
file in the state it leaves, except that a manual retry skips files with no manual
retries or password guesses left (:func:`~actors.policy.book.moved_by`, the rule the
book and the stores apply). A file's history sees only the change's event, not the
file's record before it: :func:`moved_by_state` tells from what came after whether the
file was among those moved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from actors.policy.model import BatchEvent, FileState

__all__ = ["moved_by_state"]


def moved_by_state(
    event: BatchEvent,
    state: FileState | None,
    later: Sequence[BatchEvent],
    next_own: Callable[[int], BatchEvent | None],
    current_state: FileState,
) -> bool:
    """Whether the change by state of ``event`` moved a file that was in ``state`` just
    before it (``None``: not known).

    The file's record before the change is not kept, so whether a manual retry skipped
    it is told by what came after: the file's next own change starts from the state the
    retry moved it to. That change is the first file change in ``later`` (the file's
    history after ``event`` as far as it was read: its own changes and changes by state),
    or else what ``next_own(event.sequence)`` finds; with none since, the file moved if
    it is no longer (``current_state``) in the state the retry took files from.
    """
    bulk = event.bulk
    if bulk is None or bulk.from_state is None or state is not bulk.from_state:
        return False
    if not bulk.manual_retry:
        return True
    following = next((e for e in later if e.file is not None), None) or next_own(event.sequence)
    if following is None:
        return current_state is not bulk.from_state
    return following.previous_state is bulk.state
