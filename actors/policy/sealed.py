"""A result sealed where it was made: the values a store writes, encoded once.

A worker makes its result storable (:func:`~actors.policy.results.make_storable`) and
seals it (:func:`seal`): the JSON texts of its document information and structure, its
text in the pieces a store keeps, its size. The service hands that to the store as it
came, without decoding it to encode it again; of its content it reads only the warnings
(which the file's record keeps) and the page count. Decoding every result in the
service, making it storable again and encoding its row took 31 to 36 µs of the service's
CPU for a one-page file, 7 to 9 µs sealed (issue 16).

A worker parses hostile files, so what it hands over is checked before it joins a group
commit: one file's result may fail that file only, never the commit of the others nor a
later read of it. A :class:`SealedResult` is checked on construction, and only with
checks that run at C speed over the data: its text is strings without surrogates and
in pieces of :data:`~actors.policy.results.TEXT_PIECE_CHARS` characters at most; its
JSON texts match, as a whole, the one form :func:`info_to_json` and
:func:`details_to_json` write from a storable result (no control character, no
surrogate raw or escaped, numbers within their protobuf types); its size is within what
its texts can hold. What the text says is the worker's to say: the checks make sure
that it stores and reads back, as ``make_storable`` cleaned it or not.
:meth:`SealedResult.check_within` then checks it against the service's
:class:`~actors.policy.results.ResultLimits`. Rejected alternative: decoding the JSON
again in the service to check it field by field, which is the cost this removes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from actors.policy.catalogue import ResultTooLargeError
from actors.policy.document import Attachment, DocumentDetails, OutlineEntry, PageInfo
from actors.policy.model import (
    DOCUMENT_INFO_FIELDS,
    DOCUMENT_PARTS,
    DocumentInfo,
    ExtractionResult,
    ResultWarning,
    WarningCode,
)
from actors.policy.results import (
    MAX_VERSION_BYTES,
    TEXT_PIECE_CHARS,
    ResultLimits,
    result_size,
    utf8_size,
)

__all__ = [
    "SealedResult",
    "as_sealed",
    "details_from_json",
    "details_to_json",
    "info_from_json",
    "info_to_json",
    "seal",
    "unseal",
]

# Encoders made once: json.dumps with any argument of its own builds a new encoder per
# call. UTF-8 as it is rather than ASCII escapes: three bytes for a CJK character, not six.
_UNICODE = json.JSONEncoder(ensure_ascii=False)
_UNICODE_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _naturals_below(bound: int) -> str:
    """A pattern of the decimal numbers from 0 to ``bound - 1``, without leading zeros."""
    top = str(bound - 1)
    shorter = rf"[1-9]\d{{0,{len(top) - 2}}}" if len(top) > 1 else ""
    same_length = [
        rf"{top[:i]}[{'1' if i == 0 else '0'}-{int(top[i]) - 1}]\d{{{len(top) - i - 1}}}"
        for i in range(len(top))
        if int(top[i]) > (1 if i == 0 else 0)
    ]
    return "(?:" + "|".join(["0", shorter, *same_length, top]) + ")"


# A JSON string as the encoders write a storable one: no control character (make_storable
# replaced them, but tab, line feed, carriage return and form feed, which JSON escapes),
# no surrogate, no \u escape (which only a control would need, and which could carry a
# surrogate that neither SQLite's readers nor protobuf can encode).
_PLAIN = r"[^\"\\\x00-\x1f\x7f-\x9f\ud800-\udfff]*+"
_ESCAPE = r"\\[\"\\fnrt]"
_STRING = rf'"{_PLAIN}(?:{_ESCAPE}{_PLAIN})*+"'
_OPTIONAL_STRING = rf"(?:null|{_STRING})"
_NUMBER = r"(?:null|-?(?:0|[1-9]\d*+)(?:\.\d++)?(?:[eE][-+]?\d++)?)"
_INT32 = rf"-?{_naturals_below(2**31)}"
_INT64 = rf"-?{_naturals_below(2**63)}"


def _array(item: str) -> str:
    return rf"\[(?:{item}(?:,{item})*+)?\]"


_INFO_FORM = re.compile(
    r"\{" + ", ".join(f'"{name}": {_OPTIONAL_STRING}' for name in DOCUMENT_INFO_FIELDS) + r"\}"
)
_PAGE = rf"\[{_NUMBER},{_NUMBER},{_INT32},{_INT64}\]"
_OUTLINE_ENTRY = rf"\[{_STRING},(?:null|{_INT32}),{_INT32}\]"
_ATTACHMENT = rf"\[{_STRING},(?:null|{_INT64})\]"
_DETAILS_FORM = re.compile(
    rf'\{{"pdf_version":(?P<version>{_OPTIONAL_STRING}),"pages":{_array(_PAGE)}'
    rf',"outline":(?P<outline>{_array(_OUTLINE_ENTRY)})'
    rf',"attachments":(?P<attachments>{_array(_ATTACHMENT)})'
    r',"has_xmp":(?:true|false)\}'
)
_PAGE_COUNT_BOUND = 2**31  # page counts travel as protobuf int32
# A storable result's warnings are a few per code and place (the text, a metadata field,
# a part): more would only swell every event about the file.
_MAX_WARNINGS = 2 * len(WarningCode) * (1 + len(DOCUMENT_INFO_FIELDS) + len(DOCUMENT_PARTS))
# Quoted, each of its bytes escaped at worst.
_MAX_VERSION_CHARS = 2 + 2 * MAX_VERSION_BYTES


@dataclass(frozen=True, slots=True)
class SealedResult:
    """One file's result as a store writes it; checked on construction (see the module).

    Attributes:
        page_count: Pages in the document.
        encrypted: Whether the document was encrypted.
        warnings: What users should know about the result; the file's record keeps them.
        info_json: The document information, as :func:`info_to_json` writes it.
        details_json: The document's structure, as :func:`details_to_json` writes it.
        pages: Each page's text in pieces of at most
            :data:`~actors.policy.results.TEXT_PIECE_CHARS` characters, an empty page
            as one empty piece: the unit a store keeps and a reader streams.
        stored_bytes: What the result takes in a store, as
            :func:`~actors.policy.results.result_size` counts it.
        text_bytes: The text's size in UTF-8, counted here.

    Raises:
        TypeError: A value of the wrong type.
        ValueError: A JSON text not in the encoders' form, a piece too long or holding
            a surrogate, a size its texts cannot have.
    """

    page_count: int
    encrypted: bool
    warnings: tuple[ResultWarning, ...]
    info_json: str
    details_json: str
    pages: tuple[tuple[str, ...], ...]
    stored_bytes: int
    text_bytes: int = field(init=False, compare=False, repr=False)
    # Whether the structure lists outline entries or attachments, whose names are
    # checked against the limits one by one.
    _has_names: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        count = self.page_count
        if type(count) is not int or not 0 <= count < _PAGE_COUNT_BOUND:
            raise ValueError(f"page_count must be a natural number below 2**31, not {count!r}")
        if type(self.encrypted) is not bool:
            raise TypeError(f"encrypted must be a bool, not {type(self.encrypted).__name__}")
        warnings = self.warnings
        if type(warnings) is not tuple or (
            warnings and any(type(w) is not ResultWarning for w in warnings)
        ):
            raise TypeError("warnings must be a tuple of ResultWarning")
        if len(warnings) > _MAX_WARNINGS:
            raise ValueError(f"more than {_MAX_WARNINGS} warnings")
        if type(self.info_json) is not str or not _INFO_FORM.fullmatch(self.info_json):
            raise ValueError("the document information is not in its stored form")
        details = (
            _DETAILS_FORM.fullmatch(self.details_json) if type(self.details_json) is str else None
        )
        # A version of any length would make the metadata too big for one message.
        if details is None or len(details["version"]) > _MAX_VERSION_CHARS:
            raise ValueError("the document's structure is not in its stored form")
        object.__setattr__(
            self, "_has_names", details["outline"] != "[]" or details["attachments"] != "[]"
        )
        text_bytes = _text_bytes(self.pages)
        object.__setattr__(self, "text_bytes", text_bytes)
        # Metadata is counted without its JSON's names and escapes: less than the texts.
        most = text_bytes + utf8_size(self.info_json) + utf8_size(self.details_json)
        stored = self.stored_bytes
        if type(stored) is not int or not text_bytes <= stored <= most:
            raise ValueError(f"stored_bytes must be from {text_bytes} to {most}, not {stored!r}")

    def check_within(self, limits: ResultLimits) -> None:
        """Check the result against ``limits``, as :func:`~actors.policy.results.make_storable`
        made it: the text within its limit, each metadata field, name and list too.

        Raises:
            ResultTooLargeError: The text is over ``limits.max_text_bytes``.
            ValueError: A metadata field, an outline or attachment list or one of its
                names is over its limit: not what ``make_storable`` returns.
        """
        if self.text_bytes > limits.max_text_bytes:
            raise ResultTooLargeError(self.text_bytes, limits.max_text_bytes)
        # Most information fits a field's limit whole, and most documents list nothing.
        if utf8_size(self.info_json) > limits.max_metadata_field_bytes:
            info = info_from_json(self.info_json)
            for name in DOCUMENT_INFO_FIELDS:
                value = getattr(info, name)
                if value is not None and utf8_size(value) > limits.max_metadata_field_bytes:
                    raise ValueError(f"the document's {name} is over its limit")
        if self._has_names:
            details = details_from_json(self.details_json)
            names = [
                *(entry.title for entry in details.outline),
                *(attachment.name for attachment in details.attachments),
            ]
            if (
                len(details.outline) > limits.max_outline_entries
                or len(details.attachments) > limits.max_attachments
                or any(utf8_size(name) > limits.max_name_bytes for name in names)
            ):
                raise ValueError("the outline or the attachments are over their limits")


def _text_bytes(pages: object) -> int:
    if type(pages) is not tuple:
        raise TypeError(f"pages must be a tuple, not {type(pages).__name__}")
    size = 0
    for page in pages:
        if type(page) is not tuple or not page:
            raise TypeError("each page must be a non-empty tuple of pieces")
        for piece in page:
            if type(piece) is not str:
                raise TypeError(f"a piece of text must be a str, not {type(piece).__name__}")
            if len(piece) > TEXT_PIECE_CHARS:
                raise ValueError(f"a piece of text is over {TEXT_PIECE_CHARS} characters")
            # Strict UTF-8: a surrogate raises UnicodeEncodeError, a ValueError.
            size += len(piece) if piece.isascii() else len(piece.encode("utf-8"))
    return size


def seal(result: ExtractionResult) -> SealedResult:
    """``result``, made storable already, sealed as a store writes it.

    Raises:
        TypeError, ValueError: ``result`` is not storable (see :class:`SealedResult`).
    """
    return SealedResult(
        page_count=result.page_count,
        encrypted=result.encrypted,
        warnings=tuple(result.warnings),
        info_json=info_to_json(result.info),
        details_json=details_to_json(result.details),
        pages=tuple(_pieces(page) for page in result.pages),
        stored_bytes=result_size(result),
    )


def as_sealed(result: SealedResult | ExtractionResult) -> SealedResult:
    """``result`` as it is if sealed, else sealed (see :func:`seal`)."""
    return result if isinstance(result, SealedResult) else seal(result)


def _pieces(text: str) -> tuple[str, ...]:
    if len(text) <= TEXT_PIECE_CHARS:
        return (text,)
    return tuple(
        text[start : start + TEXT_PIECE_CHARS] for start in range(0, len(text), TEXT_PIECE_CHARS)
    )


def unseal(sealed: SealedResult) -> ExtractionResult:
    """The result :func:`seal` sealed, decoded again: for readers that want it whole."""
    return ExtractionResult(
        page_count=sealed.page_count,
        encrypted=sealed.encrypted,
        info=info_from_json(sealed.info_json),
        pages=tuple("".join(pieces) for pieces in sealed.pages),
        warnings=sealed.warnings,
        details=details_from_json(sealed.details_json),
    )


def info_to_json(info: DocumentInfo) -> str:
    """A result's document information as JSON text."""
    return _UNICODE.encode({name: getattr(info, name) for name in DOCUMENT_INFO_FIELDS})


def info_from_json(text: str) -> DocumentInfo:
    """The document information :func:`info_to_json` made."""
    data = json.loads(text)
    return DocumentInfo(**{name: data.get(name) for name in DOCUMENT_INFO_FIELDS})


def details_to_json(details: DocumentDetails) -> str:
    """A result's document structure as JSON text; pages as ``[width, height, rotation,
    characters]``, outline entries as ``[title, page, depth]``, attachments as ``[name,
    size]``: a document of many pages stays a small row."""
    return _UNICODE_COMPACT.encode(
        {
            "pdf_version": details.pdf_version,
            "pages": [[p.width, p.height, p.rotation, p.characters] for p in details.pages],
            "outline": [[e.title, e.page_number, e.depth] for e in details.outline],
            "attachments": [[a.name, a.size_bytes] for a in details.attachments],
            "has_xmp": details.has_xmp,
        }
    )


def details_from_json(text: str) -> DocumentDetails:
    """The structure :func:`details_to_json` made; empty for results stored before."""
    data: dict[str, Any] = json.loads(text)
    return DocumentDetails(
        pdf_version=data.get("pdf_version"),
        pages=tuple(PageInfo(*page) for page in data.get("pages", ())),
        outline=tuple(OutlineEntry(*entry) for entry in data.get("outline", ())),
        attachments=tuple(Attachment(*item) for item in data.get("attachments", ())),
        has_xmp=bool(data.get("has_xmp", False)),
    )
