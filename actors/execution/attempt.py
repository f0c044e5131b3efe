"""One attempt inside a worker process, local or on Ray, and the reply it sends back.

Both kinds of worker run an attempt the same way (:func:`run_processor`: read the bytes,
extract, make the result fit to store and seal it, classify any failure) and answer with
the same :class:`WorkerReply`, so the same file fails the same way on either. Replies
cross to the service as a head of JSON and a result's text as UTF-8 after it, never as
pickle: a worker parses hostile files, so the service never unpickles what a worker
sends. A result crosses sealed (:mod:`actors.policy.sealed`): the service checks it at C
speed and stores it as it came, without decoding it. Its text stays out of the JSON:
escaping 32 KB of text into JSON and reading it back cost a generated file about 0.17
ms in the worker and 0.05 ms in the service, against 0.01 ms for the two as bytes.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shutil
import struct
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from actors.execution.classify import classify
from actors.policy.catalogue import ErrorCode
from actors.policy.document import ExtractionMode
from actors.policy.model import ExtractionResult, ResultWarning, WarningCode
from actors.policy.results import ResultLimits, make_storable
from actors.policy.sealed import SealedResult, seal

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
    """The processor returned a result, made storable and sealed in the worker."""

    result: SealedResult


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

# Made once: json.dumps with any argument of its own builds a new encoder per call.
# UTF-8 rather than ASCII escapes: three bytes for a CJK character, not six.
_REPLY_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# A reply is the size of its head, its head (JSON), then a result's text: each piece
# of each page in UTF-8, one after the other, the head giving their sizes in bytes.
_HEAD_SIZE = struct.Struct("<I")


def encode_reply(reply: WorkerReply) -> bytes:
    """Serialize ``reply`` for the pipe: a result as its sealed values, which the service
    hands to its store as they are.

    Raises:
        UnicodeEncodeError: A text holds a surrogate, which a sealed result cannot.
    """
    text: list[bytes] = []
    if isinstance(reply, WorkerSucceeded):
        sealed = reply.result
        sizes = []
        for page in sealed.pages:
            encoded = [piece.encode("utf-8") for piece in page]
            text += encoded
            sizes.append([len(piece) for piece in encoded])
        payload: dict[str, Any] = {
            "ok": {
                "page_count": sealed.page_count,
                "encrypted": sealed.encrypted,
                "warnings": [[w.code.value, w.place, w.count, w.total] for w in sealed.warnings],
                "info": sealed.info_json,
                "details": sealed.details_json,
                "pages": sizes,
                "stored_bytes": sealed.stored_bytes,
            }
        }
    else:
        payload = {"failed": asdict(reply)}
    head = _REPLY_ENCODER.encode(payload).encode("utf-8")
    return b"".join([_HEAD_SIZE.pack(len(head)), head, *text])


def decode_reply(data: bytes) -> WorkerReply:
    """Parse a reply written by :func:`encode_reply`.

    A result is not decoded: its sealed values are checked as
    :class:`~actors.policy.sealed.SealedResult` checks them, bytes that are not UTF-8
    included (they reach it as surrogates, or fail the text's strict decoding), and so
    are the sizes its head gives the text against the bytes that follow it. One that
    fails its checks is a ``RESULT_UNSTORABLE`` failure of the attempt, not of the
    worker.

    Raises:
        ValueError: ``data`` is not a well-formed reply: its head cannot be read, or a
            failure carries text.
    """
    try:
        if len(data) < _HEAD_SIZE.size:
            raise ValueError("shorter than its head's size")
        (head_size,) = _HEAD_SIZE.unpack_from(data)
        text_starts = _HEAD_SIZE.size + head_size
        if text_starts > len(data):
            raise ValueError("shorter than its head")
        payload = json.loads(data[_HEAD_SIZE.size : text_starts].decode("utf-8", "surrogateescape"))
        fields = payload.get("ok")
        if fields is None:
            fields = payload["failed"]
            if text_starts != len(data):
                raise ValueError("a failure with text")
            return WorkerFailed(
                code=ErrorCode(fields["code"]),
                exception_type=_typed(fields["exception_type"], str),
                detail=_typed(fields["detail"], str),
                worker_exiting=_typed(fields["worker_exiting"], bool),
            )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"malformed worker reply: {type(exc).__name__}") from exc
    try:
        return WorkerSucceeded(_sealed(fields, memoryview(data)[text_starts:]))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        return WorkerFailed(ErrorCode.RESULT_UNSTORABLE, type(exc).__name__, _describe(exc))


def _sealed(fields: dict[str, Any], text: memoryview) -> SealedResult:
    warnings = _typed(fields["warnings"], list)
    return SealedResult(
        page_count=fields["page_count"],
        encrypted=fields["encrypted"],
        # Most results have none.
        warnings=tuple(
            [
                ResultWarning(
                    WarningCode(code), _typed(place, str), _typed(count, int), _typed(total, int)
                )
                for code, place, count, total in warnings
            ]
        )
        if warnings
        else (),
        info_json=fields["info"],
        details_json=fields["details"],
        pages=_pages(_typed(fields["pages"], list), text),
        stored_bytes=fields["stored_bytes"],
    )


def _pages(sizes: list[Any], text: memoryview) -> tuple[tuple[str, ...], ...]:
    """Each page's pieces, cut from ``text`` by the sizes in bytes the head gives them.

    Raises:
        TypeError: A page is not a list of sizes.
        ValueError: A size is negative or runs past the text, the text goes on after
            the last piece, or a piece is not strict UTF-8 (no surrogate passes).
    """
    pages = []
    start = 0
    for page in sizes:
        pieces = []
        for size in _typed(page, list):
            if type(size) is not int or size < 0 or start + size > len(text):
                raise ValueError("a piece's size does not fit the text")
            pieces.append(str(text[start : start + size], "utf-8"))
            start += size
        pages.append(tuple(pieces))
    if start != len(text):
        raise ValueError("the text goes on after its last piece")
    return tuple(pages)


def _typed(value: object, kind: type[_T]) -> _T:
    if not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


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
    """The reply for what a processor returned: its result, made fit to store and send,
    and sealed as the store writes it.

    Shared by the local and the Ray worker, so that both report a result the same way.

    Raises:
        ResultTooLargeError: The text is over the limit.
        TypeError: The processor returned something else than a result.
    """
    return WorkerSucceeded(seal(make_storable(result, limits)))  # type: ignore[arg-type]


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
