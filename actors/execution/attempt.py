"""One attempt inside a worker process, local or on Ray, and the reply it sends back.

Both kinds of worker run an attempt the same way (:func:`run_processor`: read the bytes,
extract, make the result fit to store, classify any failure) and answer with the same
:class:`WorkerReply`, so the same file fails the same way on either. Replies cross to
the service as JSON rather than pickle: a worker parses hostile files, so the service
never unpickles what a worker sends, and :func:`decode_reply` checks every field.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shutil
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from actors.execution.classify import classify
from actors.policy.catalogue import ErrorCode
from actors.policy.document import (
    Attachment,
    DocumentDetails,
    ExtractionMode,
    OutlineEntry,
    PageInfo,
)
from actors.policy.model import DocumentInfo, ExtractionResult, ResultWarning, WarningCode
from actors.policy.results import ResultLimits, make_storable

__all__ = [
    "MAX_DETAIL_CHARS",
    "Processor",
    "WorkerFailed",
    "WorkerReply",
    "WorkerSucceeded",
    "decode_reply",
    "empty_directory",
    "encode_reply",
    "failure",
    "load_processor",
    "run_processor",
    "storable_reply",
]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

MAX_DETAIL_CHARS = 2_000
MAX_TRACEBACK_CHARS = 8_000

Processor = Callable[..., ExtractionResult]


@dataclass(frozen=True, slots=True)
class WorkerSucceeded:
    """The processor returned a result."""

    result: ExtractionResult


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    """The attempt failed inside the worker.

    Attributes:
        code: The code :func:`actors.execution.classify.classify` gave the exception.
        exception_type: The exception's class name.
        detail: The exception's text, cut to :data:`MAX_DETAIL_CHARS`.
        worker_exiting: The worker exits after this reply and must get no more jobs.
    """

    code: ErrorCode
    exception_type: str
    detail: str
    worker_exiting: bool = False


WorkerReply = WorkerSucceeded | WorkerFailed


def encode_reply(reply: WorkerReply) -> bytes:
    """Serialize ``reply`` for the pipe.

    Raises:
        UnicodeEncodeError: A text holds a surrogate: a result must pass through
            :func:`actors.policy.results.make_storable` first.
    """
    if isinstance(reply, WorkerSucceeded):
        payload: dict[str, Any] = {"ok": asdict(reply.result)}
    else:
        payload = {"failed": asdict(reply)}
    # UTF-8 rather than ASCII escapes: three bytes for a CJK character, not six.
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def decode_reply(data: bytes) -> WorkerReply:
    """Parse a reply written by :func:`encode_reply`.

    Raises:
        ValueError: ``data`` is not a well-formed reply.
    """
    try:
        payload = json.loads(data)
        if "ok" in payload:
            fields = payload["ok"]
            result = ExtractionResult(
                page_count=_typed(fields["page_count"], int),
                encrypted=_typed(fields["encrypted"], bool),
                info=DocumentInfo(**{k: _optional_str(v) for k, v in fields["info"].items()}),
                pages=tuple(_typed(page, str) for page in fields["pages"]),
                warnings=tuple(
                    ResultWarning(
                        WarningCode(warning["code"]),
                        _typed(warning["place"], str),
                        _typed(warning["count"], int),
                        _typed(warning["total"], int),
                    )
                    for warning in fields["warnings"]
                ),
                details=_details(fields["details"]),
            )
            return WorkerSucceeded(result)
        fields = payload["failed"]
        return WorkerFailed(
            code=ErrorCode(fields["code"]),
            exception_type=_typed(fields["exception_type"], str),
            detail=_typed(fields["detail"], str),
            worker_exiting=_typed(fields["worker_exiting"], bool),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"malformed worker reply: {type(exc).__name__}") from exc


def _details(fields: dict[str, Any]) -> DocumentDetails:
    return DocumentDetails(
        pdf_version=_optional_str(fields["pdf_version"]),
        pages=tuple(
            PageInfo(
                width=_optional_float(page["width"]),
                height=_optional_float(page["height"]),
                rotation=_typed(page["rotation"], int),
                characters=_typed(page["characters"], int),
            )
            for page in fields["pages"]
        ),
        outline=tuple(
            OutlineEntry(
                title=_typed(entry["title"], str),
                page_number=_optional_int(entry["page_number"]),
                depth=_typed(entry["depth"], int),
            )
            for entry in fields["outline"]
        ),
        attachments=tuple(
            Attachment(
                name=_typed(attachment["name"], str),
                size_bytes=_optional_int(attachment["size_bytes"]),
            )
            for attachment in fields["attachments"]
        ),
        has_xmp=_typed(fields["has_xmp"], bool),
    )


def _optional_float(value: object) -> float | None:
    if value is None:
        return None
    # A whole number of points may come as a JSON integer.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _optional_int(value: object) -> int | None:
    return None if value is None else _typed(value, int)


def _typed(value: object, kind: type[_T]) -> _T:
    if not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _optional_str(value: object) -> str | None:
    return None if value is None else _typed(value, str)


def load_processor(path: str) -> Processor:
    """Import the processor named ``"module:function"``.

    Raises:
        ValueError: ``path`` is malformed or names nothing callable.
    """
    module_name, _, function_name = path.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"processor must look like 'module:function', got {path!r}")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load processor {path!r}: {exc}") from exc
    if not callable(function):
        raise ValueError(f"processor {path!r} is not callable")
    return function  # type: ignore[no-any-return]


def storable_reply(result: object, limits: ResultLimits) -> WorkerSucceeded:
    """The reply for what a processor returned: its result, made fit to store and send.

    Shared by the local and the Ray worker, so that both report a result the same way.

    Raises:
        ResultTooLargeError: The text is over the limit.
        TypeError: The processor returned something else than a result.
    """
    return WorkerSucceeded(make_storable(result, limits))  # type: ignore[arg-type]


def run_processor(
    processor: Processor,
    read: Callable[[], bytes],
    password: str | None,
    attempt: int,
    limits: ResultLimits,
    *,
    mode: ExtractionMode = ExtractionMode.PLAIN,
) -> tuple[WorkerReply, bytes]:
    """One attempt inside a worker: read the bytes, extract, check the result, classify
    any failure, and encode the reply.

    Never raises for anything the processor does: a failure is a reply.

    Args:
        processor: What extracts; it also gets ``attempt=`` and ``mode=`` if it has
            parameters of those names.
        read: Reads the file's bytes (from the blob store, or Ray's object store).
        password: Opens an encrypted file.
        attempt: The attempt's number over the file's life.
        limits: How big the result may be.
        mode: How pages' text is put together, as the batch asked.

    Returns:
        The reply, and the bytes it is sent as.
    """
    try:
        data = read()
        parameters = inspect.signature(processor).parameters
        options: dict[str, Any] = {}
        if "attempt" in parameters:
            options["attempt"] = attempt
        if "mode" in parameters:
            options["mode"] = mode
        result = processor(data, password, **options)
        reply: WorkerReply = storable_reply(result, limits)
    # Whatever the processor does, only a real process death may end the worker.
    except BaseException as exc:  # noqa: BLE001
        reply = failure(exc)
    return _encoded(reply)


def failure(exc: BaseException) -> WorkerFailed:
    """The reply for an exception raised by an attempt: classified, with what engineers need."""
    code = classify(exc)
    return WorkerFailed(
        code=code,
        exception_type=type(exc).__name__,
        # An error nobody classified is a bug to fix: its engineers need the traceback.
        detail=_traceback(exc) if code is ErrorCode.INTERNAL else _describe(exc),
        # A heap that ran out may be fragmented or half-built: start afresh.
        worker_exiting=code is ErrorCode.MEMORY_LIMIT_EXCEEDED,
    )


def _encoded(reply: WorkerReply) -> tuple[WorkerReply, bytes]:
    try:
        return reply, encode_reply(reply)
    except BaseException as exc:  # noqa: BLE001 (a result too big to encode fails its attempt)
        failed = failure(exc)
        return failed, encode_reply(failed)


def _traceback(exc: BaseException) -> str:
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # noqa: BLE001 (a broken __str__ must not hide the failure)
        return _describe(exc)
    # The innermost frames say most; keep the end.
    return text[-MAX_TRACEBACK_CHARS:]


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)[:MAX_DETAIL_CHARS]
    except Exception:  # noqa: BLE001 (an exception whose __str__ fails still has a type)
        return f"<unprintable {type(exc).__name__}>"


def empty_directory(directory: Path) -> None:
    """Remove everything in ``directory``, which stays; log what cannot be removed."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot list temporary directory", path=str(directory), error=str(exc))
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError as exc:
            log.warning("cannot remove temporary file", path=entry.path, error=str(exc))
