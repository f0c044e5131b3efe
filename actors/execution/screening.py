"""Screening: a file that is not a PDF never reaches a worker.

:class:`ScreenedExecutor` wraps any executor. Before it hands an attempt over, it reads
the first and the last KiB of the stored upload, as
:func:`actors.execution.extract.extract_pdf` would: an empty file fails at once with
``PDF_EMPTY``; one with neither the ``%PDF-`` signature in its first 1024 bytes nor any
sign of a PDF's structure in them or in its last 1024 (an object, a cross-reference
table, a trailer) fails with ``NOT_A_PDF``. Such an attempt costs no worker, no queue
slot and no parser; its outcome names no worker pid. A file whose signature line was
lost but whose body is a PDF's goes on to a worker: readers recover such files. The
worker checks again, so a file that changed between the two reads is still refused.
"""

from __future__ import annotations

from pathlib import Path

from actors.execution.classify import classify
from actors.execution.contract import (
    AttemptFailure,
    AttemptHandle,
    AttemptJob,
    Executor,
    OnDone,
    OnStarted,
    file_ends,
)
from actors.execution.extract import SIGNATURE_WINDOW, looks_like_pdf
from actors.policy.catalogue import ErrorCode

__all__ = ["ScreenedExecutor", "screen", "screen_ends"]


def screen(path: Path) -> ErrorCode | None:
    """The code a file fails with before any parsing, or ``None`` if it may be parsed.

    Raises:
        OSError: The file cannot be read.
    """
    return screen_ends(*file_ends(path, SIGNATURE_WINDOW))


def screen_ends(head: bytes, tail: bytes) -> ErrorCode | None:
    """:func:`screen` of a file whose first and last ``SIGNATURE_WINDOW`` bytes are
    ``head`` and ``tail``."""
    if not head:
        return ErrorCode.PDF_EMPTY
    return None if looks_like_pdf(head, tail) else ErrorCode.NOT_A_PDF


class _Refused:
    """The handle of an attempt that ended before it started: nothing to cancel."""

    def cancel(self, code: ErrorCode) -> None:
        del code


class ScreenedExecutor:
    """An :class:`~actors.execution.contract.Executor` that screens each file first.

    A refused attempt's ``on_done`` runs at once, on the thread that submits it, and its
    ``on_started`` never runs (no worker picked it up).

    Args:
        inner: Runs the attempts that pass.
    """

    def __init__(self, inner: Executor) -> None:
        self._inner = inner

    def submit(self, job: AttemptJob, on_started: OnStarted, on_done: OnDone) -> AttemptHandle:
        """See :meth:`actors.execution.contract.Executor.submit`."""
        try:
            code = screen_ends(*job.blob_ends(SIGNATURE_WINDOW))
        except OSError as exc:
            on_done(AttemptFailure(classify(exc), None, type(exc).__name__, str(exc)))
            return _Refused()
        if code is not None:
            on_done(AttemptFailure(code, None, "screening", f"refused before parsing: {code}"))
            return _Refused()
        return self._inner.submit(job, on_started, on_done)

    def queued_seconds(self) -> float:
        """See :meth:`actors.execution.contract.Executor.queued_seconds`."""
        return self._inner.queued_seconds()

    def cancel_batch(self, batch_id: str, code: ErrorCode) -> None:
        """See :meth:`actors.execution.contract.Executor.cancel_batch`."""
        self._inner.cancel_batch(batch_id, code)

    def close(self) -> None:
        """See :meth:`actors.execution.contract.Executor.close`."""
        self._inner.close()
