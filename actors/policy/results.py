"""What a file's result may hold: text any store and any wire can carry, within limits.

An extractor returns whatever the PDF's fonts say, and a broken font map says anything:
lone surrogates (which UTF-8, so SQLite and protobuf, cannot encode at all), NUL (which
ends C strings and is refused by many databases' text columns), other control
characters, a document title of megabytes, tens of millions of characters from a file
of a few kilobytes. :func:`make_storable` turns any result into one that stores and
encodes without fail, or refuses it for its size. It runs in the worker (so that an
oversized result never crosses to the service), which then seals the result as the
store writes it (:mod:`actors.policy.sealed`); the batch supervisor checks a sealed
result against the limits, and runs :func:`make_storable` itself on any result handed
over unsealed, before it joins a group commit (so that no executor, local, Ray or one
written later, can hand it a result that fails the commit of other files).

What is kept, and what is not:

- Every Unicode scalar value that is not a control character is kept as it is:
  non-characters (U+FFFF), private-use characters, format characters such as the
  right-to-left override U+202E. They are the document's content; whoever prints it on
  a terminal escapes it there (the CLI does).
- A high surrogate followed by a low one (UTF-16 decoded one unit at a time) becomes
  the character the pair encodes.
- Lone surrogates (U+D800 to U+DFFF) and control characters (Unicode category ``Cc``:
  U+0000 to U+001F, U+007F to U+009F) other than tab, line feed, carriage return and
  form feed are replaced with U+REPLACEMENT CHARACTER (U+FFFD), and counted in a
  :class:`~actors.policy.model.ResultWarning`: dropping them would silently join words.
- Text over :attr:`ResultLimits.max_text_bytes` fails the file with
  ``PDF_LIMIT_EXCEEDED``: a cut text would pass for a whole one. A metadata field over
  :attr:`ResultLimits.max_metadata_field_bytes` is cut to it, with a warning: the text is
  what users come for, and a title of megabytes is never a real title.
- The document's structure (:class:`~actors.policy.document.DocumentDetails`) is kept
  to :attr:`ResultLimits.max_outline_entries` outline entries,
  :attr:`ResultLimits.max_attachments` attachments and
  :attr:`ResultLimits.max_page_details` pages, each title or name cut to
  :attr:`ResultLimits.max_name_bytes`, with a ``PART_TRUNCATED`` warning for what was
  left out. Titles and names are cleaned as the text is. Each kept page's character
  count is counted here, from the text as stored.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from actors.policy.catalogue import ResultTooLargeError
from actors.policy.document import Attachment, DocumentDetails, OutlineEntry, PageInfo
from actors.policy.model import (
    DOCUMENT_INFO_FIELDS,
    DocumentInfo,
    ExtractionResult,
    ResultWarning,
    WarningCode,
)

__all__ = [
    "DEFAULT_MAX_ATTACHMENTS",
    "DEFAULT_MAX_METADATA_FIELD_BYTES",
    "DEFAULT_MAX_NAME_BYTES",
    "DEFAULT_MAX_OUTLINE_ENTRIES",
    "DEFAULT_MAX_PAGE_DETAILS",
    "DEFAULT_MAX_TEXT_BYTES",
    "MAX_VERSION_BYTES",
    "REPLACEMENT",
    "TEXT_PIECE_CHARS",
    "ResultLimits",
    "make_storable",
    "result_size",
    "text_pieces",
    "utf8_size",
]

DEFAULT_MAX_TEXT_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_METADATA_FIELD_BYTES = 64 * 1024
DEFAULT_MAX_OUTLINE_ENTRIES = 1_000
DEFAULT_MAX_ATTACHMENTS = 1_000
DEFAULT_MAX_NAME_BYTES = 1_024
# Above pypdf's page-tree limit in the workers (50,000 by default).
DEFAULT_MAX_PAGE_DETAILS = 100_000
# What one page's details take in a worker's reply, at most.
_PAGE_DETAIL_REPLY_BYTES = 128
REPLACEMENT = "\ufffd"
# A header's version is a few characters ("1.7"); a longer one is cut to this.
MAX_VERSION_BYTES = 16
# A piece of text for one message: at most 2 MiB of UTF-8, inside gRPC's 4 MiB limit.
TEXT_PIECE_CHARS = 512 * 1024

# Surrogates, and the controls but tab, line feed, form feed and carriage return.
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# The bytes of _UNSTORABLE's characters below U+0080.
_C0_CONTROLS = bytes([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F])


@dataclass(frozen=True, slots=True)
class ResultLimits:
    """How big one file's result may be.

    Attributes:
        max_text_bytes: All pages' text together, in bytes of UTF-8. Default 64 MiB;
            over it the file fails with ``PDF_LIMIT_EXCEEDED``.
        max_metadata_field_bytes: One field of the information dictionary, in bytes
            of UTF-8. Default 64 KiB; a longer field is cut, with a warning.
        max_outline_entries: Outline entries kept, nested ones included. Default
            1,000; the rest are left out, with a warning.
        max_attachments: Attachments listed. Default 1,000; the rest are left out,
            with a warning.
        max_name_bytes: One outline title or attachment name, in bytes of UTF-8.
            Default 1 KiB; a longer one is cut, with a warning.
        max_page_details: Pages whose size, rotation and character count are kept.
            Default 100,000; the text of every page is kept regardless.

    Raises:
        ValueError: A limit is not positive.
    """

    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    max_metadata_field_bytes: int = DEFAULT_MAX_METADATA_FIELD_BYTES
    max_outline_entries: int = DEFAULT_MAX_OUTLINE_ENTRIES
    max_attachments: int = DEFAULT_MAX_ATTACHMENTS
    max_name_bytes: int = DEFAULT_MAX_NAME_BYTES
    max_page_details: int = DEFAULT_MAX_PAGE_DETAILS

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value <= 0:
                raise ValueError(f"{field.name} must be positive, got {value}")

    def max_metadata_message_bytes(self) -> int:
        """The most bytes a result's metadata message can take on the wire.

        Its document information fields, outline titles and attachment names at their
        limits, a few bytes of numbers and tags for each entry, and 64 KiB for the rest.
        """
        fields = len(DOCUMENT_INFO_FIELDS)
        entries = self.max_outline_entries + self.max_attachments
        return (
            fields * (self.max_metadata_field_bytes + 8)
            + entries * (self.max_name_bytes + 32)
            + (64 << 10)
        )

    def max_reply_bytes(self) -> int:
        """The most bytes a worker's reply of a result within these limits can take.

        The text travels as it is, after the reply's JSON head, which gives each piece's
        size: twice the text's limit covers both. The metadata fields, outline titles
        and attachment names travel as JSON texts inside the head's JSON (sealed, see
        :mod:`actors.policy.sealed`): four bytes at worst. Each outline entry and
        attachment adds a few numbers, each page its details; 1 MiB covers the rest.
        """
        fields = len(DOCUMENT_INFO_FIELDS)
        names = self.max_outline_entries + self.max_attachments
        return (
            2 * self.max_text_bytes
            + 4 * fields * self.max_metadata_field_bytes
            + names * (4 * self.max_name_bytes + _PAGE_DETAIL_REPLY_BYTES)
            + self.max_page_details * _PAGE_DETAIL_REPLY_BYTES
            + (1 << 20)
        )


def text_pieces(pages: Sequence[str]) -> Iterator[tuple[int, int, str]]:
    """Each page's text in pieces of at most :data:`TEXT_PIECE_CHARS` characters.

    Yields ``(page_number, part, text)``, both numbers counting from 1 and 0: the unit a
    store keeps and a reader streams, so that no page is ever held whole to send it. An
    empty page is one empty piece.
    """
    for number, text in enumerate(pages, start=1):
        for part, start in enumerate(range(0, max(len(text), 1), TEXT_PIECE_CHARS)):
            yield number, part, text[start : start + TEXT_PIECE_CHARS]


def result_size(result: ExtractionResult) -> int:
    """What ``result`` takes in a store: its text, metadata fields, outline titles and
    attachment names, in UTF-8 bytes."""
    fields = (getattr(result.info, name) for name in DOCUMENT_INFO_FIELDS)
    details = result.details
    names = (
        *(entry.title for entry in details.outline),
        *(attachment.name for attachment in details.attachments),
    )
    return (
        sum(utf8_size(page) for page in result.pages)
        + sum(utf8_size(value) for value in fields if value is not None)
        + sum(utf8_size(name) for name in names)
    )


def utf8_size(text: str) -> int:
    """The bytes ``text`` takes in UTF-8; ``text`` must hold no surrogate."""
    # ASCII text (most text) is measured without encoding it.
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def make_storable(result: ExtractionResult, limits: ResultLimits) -> ExtractionResult:
    """``result`` made safe to store and to send, with a warning for everything changed.

    Idempotent: a result it returned comes back unchanged, with its warnings.

    Raises:
        ResultTooLargeError: The text is over ``limits.max_text_bytes``.
        TypeError: ``result`` is not an :class:`~actors.policy.model.ExtractionResult` of
            strings (a processor's bug).
    """
    if not isinstance(result, ExtractionResult):
        raise TypeError(f"a processor returned {type(result).__name__}, not a result")
    warnings = list(result.warnings)
    pages, replaced = _clean_pages(result.pages)
    if replaced:
        warnings.append(ResultWarning(WarningCode.CHARACTERS_REPLACED, "text", replaced))
    size = sum(utf8_size(page) for page in pages)
    if size > limits.max_text_bytes:
        raise ResultTooLargeError(size, limits.max_text_bytes)
    info = {}
    for name in DOCUMENT_INFO_FIELDS:
        value = getattr(result.info, name)
        if value is not None:
            value = _clean_field(name, value, limits.max_metadata_field_bytes, warnings)
        info[name] = value
    details = _storable_details(result.details, pages, limits, warnings)
    return ExtractionResult(
        page_count=_count(result.page_count),
        encrypted=bool(result.encrypted),
        info=DocumentInfo(**info),
        pages=pages,
        # A page count over the limit is found again in a result made storable twice.
        warnings=tuple(dict.fromkeys(warnings)),
        details=details,
    )


def _storable_details(
    details: object,
    pages: tuple[str, ...],
    limits: ResultLimits,
    warnings: list[ResultWarning],
) -> DocumentDetails:
    if not isinstance(details, DocumentDetails):
        raise TypeError(f"details must be DocumentDetails, not {type(details).__name__}")
    described = details.pages[: limits.max_page_details]
    page_infos = []
    for number, text in enumerate(pages[: limits.max_page_details]):
        known = described[number] if number < len(described) else PageInfo()
        page_infos.append(_page_info(known, len(text)))
    if len(pages) > limits.max_page_details:
        _truncated(warnings, "pages", len(pages) - limits.max_page_details)
    kept_entries = details.outline[: limits.max_outline_entries]
    titles = _clean_names("outline", [e.title for e in kept_entries], limits, warnings)
    outline = tuple(
        OutlineEntry(title, _optional_count(entry.page_number, 2**31), _natural(entry.depth, 2**31))
        for title, entry in zip(titles, kept_entries, strict=True)
    )
    _truncated(warnings, "outline", len(details.outline) - len(outline))
    kept_files = details.attachments[: limits.max_attachments]
    names = _clean_names("attachments", [a.name for a in kept_files], limits, warnings)
    attachments = tuple(
        Attachment(name, _optional_count(attachment.size_bytes, 2**63))
        for name, attachment in zip(names, kept_files, strict=True)
    )
    _truncated(warnings, "attachments", len(details.attachments) - len(attachments))
    version = details.pdf_version
    if version is not None:
        version = _clean_field("version", version, MAX_VERSION_BYTES, warnings)
    return DocumentDetails(
        pdf_version=version,
        pages=tuple(page_infos),
        outline=outline,
        attachments=attachments,
        has_xmp=bool(details.has_xmp),
    )


def _page_info(known: PageInfo, characters: int) -> PageInfo:
    return PageInfo(
        width=_dimension(known.width),
        height=_dimension(known.height),
        rotation=_rotation(known.rotation),
        characters=characters,
    )


def _rotation(value: object) -> int:
    # Pages turn by quarter turns; anything else is a broken /Rotate, shown unturned.
    if isinstance(value, int) and not isinstance(value, bool) and value % 90 == 0:
        return value % 360
    return 0


def _dimension(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e9:
        return float(value)
    return None


def _truncated(warnings: list[ResultWarning], place: str, count: int) -> None:
    if count:
        warnings.append(ResultWarning(WarningCode.PART_TRUNCATED, place, count))


def _clean_names(
    place: str, values: list[object], limits: ResultLimits, warnings: list[ResultWarning]
) -> list[str]:
    """Titles or names cleaned as text is and cut to the limit; one warning per kind."""
    names, replaced, cut = [], 0, 0
    for value in values:
        text, count = _clean(value)
        replaced += count
        if utf8_size(text) > limits.max_name_bytes:
            kept = text.encode("utf-8")[: limits.max_name_bytes].decode("utf-8", errors="ignore")
            cut += len(text) - len(kept)
            text = kept
        names.append(text)
    if replaced:
        warnings.append(ResultWarning(WarningCode.CHARACTERS_REPLACED, place, replaced))
    _truncated(warnings, place, cut)
    return names


def _optional_count(value: object, bound: int) -> int | None:
    return None if value is None else _natural(value, bound)


def _natural(value: object, bound: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < bound:
        raise TypeError(f"expected a natural number below {bound}, not {value!r}")
    return value


def _clean_pages(pages: object) -> tuple[tuple[str, ...], int]:
    if not isinstance(pages, tuple | list):
        raise TypeError(f"pages must be a tuple of strings, not {type(pages).__name__}")
    cleaned = []
    replaced = 0
    for page in pages:
        text, count = _clean(page)
        cleaned.append(text)
        replaced += count
    return tuple(cleaned), replaced


def _clean(text: object) -> tuple[str, int]:
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, not {type(text).__name__}")
    # pypdf hands back str subclasses; a plain str is what gets stored.
    plain = str(text)
    if _storable(plain):
        return plain, 0
    if _SURROGATE.search(plain):
        # UTF-16 read one unit at a time: a high surrogate then a low one are the
        # character they encode together; the lone ones remain, to be replaced.
        plain = plain.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return _UNSTORABLE.subn(REPLACEMENT, plain)


def _storable(text: str) -> bool:
    """Whether ``text`` has nothing :data:`_UNSTORABLE`, found at C speed: what has a
    surrogate does not encode, and the other characters are C0 controls (bytes) or C1
    controls (U+0080 to U+009F, which all begin with 0xC2 in UTF-8, as do some
    characters that are storable: those texts take the regular expression). A page of
    text takes about a tenth of the expression's time this way."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return b"\xc2" not in data and len(data.translate(None, _C0_CONTROLS)) == len(data)


def _clean_field(name: str, value: object, max_bytes: int, warnings: list[ResultWarning]) -> str:
    text, replaced = _clean(value)
    if replaced:
        warnings.append(ResultWarning(WarningCode.CHARACTERS_REPLACED, name, replaced))
    if utf8_size(text) > max_bytes:
        # Cut on a character boundary: an incomplete sequence at the cut is dropped.
        kept = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
        warnings.append(ResultWarning(WarningCode.METADATA_TRUNCATED, name, len(text) - len(kept)))
        text = kept
    return text


def _count(value: object) -> int:
    # Page numbers travel as protobuf int32.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
        raise TypeError(f"page_count must be a natural number, not {value!r}")
    return value
