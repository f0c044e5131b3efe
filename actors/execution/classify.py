"""Naming a failure: an exception raised while processing a file, or a worker's death.

The one place that knows pypdf's exceptions; everything downstream works from the
:class:`~actors.policy.catalogue.ErrorCode` it returns.
"""

from __future__ import annotations

import signal
import traceback
from types import TracebackType

from pypdf import errors as pdf_errors

from actors.policy.catalogue import (
    ErrorCode,
    NotAPdfError,
    ResultTooLargeError,
    StorageUnavailableError,
    WrongPasswordError,
)

__all__ = ["classify", "classify_exit"]


def _raised_inside_pypdf(tb: TracebackType | None) -> bool:
    frames = traceback.extract_tb(tb)
    return bool(frames) and any(f"{_SEP}pypdf{_SEP}" in frame.filename for frame in frames[-3:])


_SEP = "/"


def classify(exc: BaseException) -> ErrorCode:
    """Map an exception raised while processing a file to its catalogue code.

    pypdf raises its own errors for most broken files, but also plain ``KeyError``,
    ``ValueError``, ``AssertionError`` and the like from deep inside its parser. Those
    are damage in the file, not bugs here, so an exception whose innermost frames are
    in pypdf counts as ``PDF_MALFORMED``; anything else unknown is ``INTERNAL``.

    Args:
        exc: The exception, with its traceback attached.

    Returns:
        The code; ``ErrorCode.INTERNAL`` for anything not recognised.
    """
    if isinstance(exc, pdf_errors.PyPdfError) and isinstance(
        exc.__cause__, RecursionError | MemoryError
    ):
        # pypdf re-raises exhaustion while parsing as a plain read error; the cause names it.
        return classify(exc.__cause__)
    match exc:
        case NotAPdfError():
            return ErrorCode.NOT_A_PDF
        case WrongPasswordError() | pdf_errors.WrongPasswordError():
            return ErrorCode.PDF_WRONG_PASSWORD
        case pdf_errors.FileNotDecryptedError():
            return ErrorCode.PDF_ENCRYPTED
        case pdf_errors.EmptyFileError():
            return ErrorCode.PDF_EMPTY
        case pdf_errors.LimitReachedError() | RecursionError() | ResultTooLargeError():
            return ErrorCode.PDF_LIMIT_EXCEEDED
        case MemoryError():
            return ErrorCode.MEMORY_LIMIT_EXCEEDED
        case pdf_errors.DeprecationError() | pdf_errors.DependencyError() | NotImplementedError():
            return ErrorCode.PDF_UNSUPPORTED_FEATURE
        case StorageUnavailableError() | OSError():
            return ErrorCode.STORAGE_UNAVAILABLE
        case pdf_errors.PyPdfError():
            return ErrorCode.PDF_MALFORMED
        case _ if _raised_inside_pypdf(exc.__traceback__):
            return ErrorCode.PDF_MALFORMED
        case _:
            return ErrorCode.INTERNAL


def classify_exit(exitcode: int | None) -> ErrorCode:
    """The code of an attempt whose worker process died before it answered.

    A worker killed by ``SIGXCPU`` used up the CPU time one attempt may have. CPU time,
    unlike wall-clock time, hardly depends on how busy the machine is, so another
    attempt would burn the same budget again: the failure is the file's and final
    (``PDF_LIMIT_EXCEEDED``), where a wall-clock ``PROCESSING_TIMEOUT`` is retried.
    Any other death is ``WORKER_CRASHED``, which is retried.

    Args:
        exitcode: The process's exit code; minus the signal's number if one killed it.
    """
    if exitcode == -signal.SIGXCPU:
        return ErrorCode.PDF_LIMIT_EXCEEDED
    return ErrorCode.WORKER_CRASHED
