"""The error catalogue: every way a file can fail, as a code users can act on.

A failure is classified exactly once, by :func:`actors.execution.classify.classify`, into
an :class:`ErrorCode`.
Everything downstream (retry decisions, user messages, logs) works from the code; the
exception text itself goes to the engineers' log only, never to a user.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "CATALOGUE",
    "MAX_USER_MESSAGE_CHARS",
    "ErrorCode",
    "ErrorSpec",
    "NotAPdfError",
    "ResultTooLargeError",
    "StorageUnavailableError",
    "WrongPasswordError",
    "has_hidden_characters",
    "spec_for",
    "user_text",
]

MAX_USER_MESSAGE_CHARS = 300


class ErrorCode(enum.StrEnum):
    """Why a file attempt failed. The string value is the code shown to users."""

    NOT_A_PDF = "NOT_A_PDF"
    PDF_EMPTY = "PDF_EMPTY"
    PDF_MALFORMED = "PDF_MALFORMED"
    PDF_ENCRYPTED = "PDF_ENCRYPTED"
    PDF_WRONG_PASSWORD = "PDF_WRONG_PASSWORD"
    PDF_UNSUPPORTED_FEATURE = "PDF_UNSUPPORTED_FEATURE"
    PDF_LIMIT_EXCEEDED = "PDF_LIMIT_EXCEEDED"
    PROCESSING_TIMEOUT = "PROCESSING_TIMEOUT"
    MEMORY_LIMIT_EXCEEDED = "MEMORY_LIMIT_EXCEEDED"
    WORKER_CRASHED = "WORKER_CRASHED"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    RESULT_UNSTORABLE = "RESULT_UNSTORABLE"
    INTERNAL = "INTERNAL"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """What the catalogue knows about one code.

    Attributes:
        code: The code itself.
        retryable: Whether another attempt of the same file can succeed.
        summary: What happened, in one sentence a user understands.
        hint: What the user can do about it.
        doc: One line for the reference documentation.
    """

    code: ErrorCode
    retryable: bool
    summary: str
    hint: str
    doc: str

    @property
    def message(self) -> str:
        """What happened and what to do: the text users see, safe to show anyone."""
        return f"{self.summary} {self.hint}"


def _spec(code: ErrorCode, retryable: bool, summary: str, hint: str, doc: str) -> ErrorSpec:
    spec = ErrorSpec(code, retryable, summary, hint, doc)
    if len(spec.message) > MAX_USER_MESSAGE_CHARS:
        raise ValueError(f"catalogue entry {code} is longer than {MAX_USER_MESSAGE_CHARS}")
    return spec


_E = ErrorCode
CATALOGUE: MappingProxyType[ErrorCode, ErrorSpec] = MappingProxyType(
    {
        spec.code: spec
        for spec in (
            _spec(
                _E.NOT_A_PDF,
                False,
                "This file is not a PDF.",
                "Check that you uploaded the right file.",
                "The file does not start with the %PDF- signature.",
            ),
            _spec(
                _E.PDF_EMPTY,
                False,
                "This file is empty.",
                "Upload the complete file again.",
                "The file has no bytes or no PDF content at all.",
            ),
            _spec(
                _E.PDF_MALFORMED,
                False,
                "This PDF is damaged and could not be read.",
                "Re-export or repair it, then submit it again.",
                "The PDF structure is broken beyond what the reader can recover.",
            ),
            _spec(
                _E.PDF_ENCRYPTED,
                False,
                "This file is password-protected.",
                "Submit it again with its password, or remove the protection.",
                "The PDF is encrypted and no password was given.",
            ),
            _spec(
                _E.PDF_WRONG_PASSWORD,
                False,
                "The password given for this file is wrong.",
                "Retry the file with the correct password.",
                "The PDF is encrypted and the given password does not open it.",
            ),
            _spec(
                _E.PDF_UNSUPPORTED_FEATURE,
                False,
                "This PDF uses a feature the service cannot read (for example an old "
                "compression filter).",
                "Re-export it with a current PDF writer.",
                "The PDF needs a filter, encryption or feature the reader does not support.",
            ),
            _spec(
                _E.PDF_LIMIT_EXCEEDED,
                False,
                "This PDF exceeds the service's safety limits (for example a huge "
                "compressed stream or a very deep structure).",
                "Simplify or split it.",
                "A decompression bomb, an oversized stream, an over-deep structure, more "
                "CPU time than one attempt may use, or more text than one result may hold.",
            ),
            _spec(
                _E.PROCESSING_TIMEOUT,
                True,
                "Processing this file took longer than the time limit.",
                "It will be retried; if it keeps failing, split the file or raise the time limit.",
                "The attempt ran past the batch's file timeout and was stopped.",
            ),
            _spec(
                _E.MEMORY_LIMIT_EXCEEDED,
                False,
                "Processing this file needed more memory than the limit allows.",
                "Split the file or ask an operator to raise the memory limit.",
                "The worker hit its memory cap while processing the file.",
            ),
            _spec(
                _E.WORKER_CRASHED,
                True,
                "The process handling this file stopped unexpectedly.",
                "It will be retried automatically.",
                "The worker process died (signal, crash or killed) during the attempt.",
            ),
            _spec(
                _E.STORAGE_UNAVAILABLE,
                True,
                "The service could not read or write its storage.",
                "It will be retried; no action is needed unless it persists.",
                "The uploaded bytes or the store could not be read or written.",
            ),
            _spec(
                _E.RESULT_UNSTORABLE,
                False,
                "The text or metadata read from this file could not be stored.",
                "Another attempt would read the same; report the batch and file ids to the "
                "operators.",
                "The file was read, but its result could not be made fit to store; the "
                "service log has the details. Other files are not affected.",
            ),
            _spec(
                _E.INTERNAL,
                False,
                "An unexpected error occurred in the service.",
                "It has been logged for the operators; you can retry the file later.",
                "An error nobody classified; the full traceback is in the service log.",
            ),
            _spec(
                _E.CANCELLED,
                False,
                "Processing of this file was cancelled.",
                "Retry the file to process it.",
                "The batch or file was cancelled before the file finished.",
            ),
        )
    }
)


def spec_for(code: ErrorCode) -> ErrorSpec:
    """Return the catalogue entry for ``code``."""
    return CATALOGUE[code]


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Unicode categories a name must not hold: controls (C0, DEL, C1), format characters
# (bidirectional overrides, zero-width characters) and line and paragraph separators.
# Each makes a name print as something else than it is.
_HIDING_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def has_hidden_characters(text: str) -> bool:
    """Whether ``text`` holds a character that changes how it prints without showing:
    a control, format or separator character (U+001B, U+009B, U+202E, U+200B, U+2028).

    Refused in file names, display names and labels.
    """
    if text.isascii():
        # The only such ASCII characters are the controls, which do not print.
        return not text.isprintable()
    return any(unicodedata.category(char) in _HIDING_CATEGORIES for char in text)


def user_text(text: str, limit: int = MAX_USER_MESSAGE_CHARS) -> str:
    """Make a text fit to show a user: no control characters, at most ``limit`` characters.

    The cut falls on a character boundary and ends with an ellipsis. Only for texts this
    service composed itself (catalogue entries, refusals naming the caller's own ids):
    it cannot make an exception's text safe, and none may be passed here.
    """
    clean = _UNSAFE.sub(" ", text)
    if len(clean) <= limit:
        return clean
    return clean[: limit - 1].rstrip() + "\u2026"


class NotAPdfError(Exception):
    """The bytes do not start with the PDF signature."""


class ResultTooLargeError(Exception):
    """A file's extracted text is larger than one result may be.

    Attributes:
        limit: The limit, in bytes of UTF-8.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the extracted text is {size} bytes of UTF-8, over the limit of {limit}")
        self.limit = limit


class WrongPasswordError(Exception):
    """A password was given but it does not open the document."""


class StorageUnavailableError(Exception):
    """The store or the blob store cannot serve the request right now."""
