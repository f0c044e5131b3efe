"""Text, metadata and structure extraction from one PDF, with pypdf.

This module runs inside worker processes only. It raises whatever pypdf raises and
leaves the naming of the failure to :func:`actors.execution.classify.classify`; the exceptions it
raises itself are the ones ``classify`` maps to a precise code.

The pages' text is the point: anything that keeps it from being read fails the file.
Everything else (the information dictionary, the version, page sizes, the outline,
attachments, XMP) is optional, and read part by part, each guarded: a damaged outline
leaves the outline empty with a ``PART_UNREADABLE`` warning and the text is returned
whole. Pages without text (whitespace only) are counted into a ``NO_TEXT_LAYER`` or
``PARTIAL_TEXT_LAYER`` warning: such a file succeeded, but probably needs OCR.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

import structlog
from pypdf import PageObject, PdfReader, overwrite_configuration
from pypdf.errors import EmptyFileError, FileNotDecryptedError, PyPdfError
from pypdf.generic import Destination, EmbeddedFile, StreamObject

from actors.policy.catalogue import NotAPdfError, WrongPasswordError
from actors.policy.document import (
    Attachment,
    DocumentDetails,
    ExtractionMode,
    OutlineEntry,
    PageInfo,
)
from actors.policy.model import DocumentInfo, ExtractionResult, ResultWarning, WarningCode

__all__ = [
    "PDF_SIGNATURE",
    "SIGNATURE_WINDOW",
    "PdfLimits",
    "configure_pdf_limits",
    "extract_pdf",
    "looks_like_pdf",
]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

PDF_SIGNATURE = b"%PDF-"
# Readers accept junk (mail headers, BOMs) before the signature; Acrobat looks this far.
# The end of file marker and the cross-reference pointer are looked for as far from the end.
SIGNATURE_WINDOW = 1024
# What only a PDF's body holds, written as a PDF writes it (prose that mentions a
# trailer is not one).
_PDF_STRUCTURE = re.compile(
    rb"\d+\s+\d+\s+obj\b"  # an object: "12 0 obj"
    rb"|\bxref\s+\d+\s+\d+"  # a cross-reference table's first section: "xref 0 6"
    rb"|\btrailer\s*<<"  # the trailer dictionary
    rb"|\bstartxref\s+\d+"  # the pointer to the cross-reference
)
_VERSION = re.compile(r"%PDF-(\d\.\d)")
# What pypdf's extract_text is asked for, by mode.
_PYPDF_MODES: dict[ExtractionMode, Literal["plain", "layout"]] = {
    ExtractionMode.PLAIN: "plain",
    ExtractionMode.LAYOUT: "layout",
}

# Garbage in the information dictionary must not fail a file whose pages read fine.
_METADATA_ERRORS = (
    PyPdfError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    AssertionError,
    RecursionError,
)


@dataclass(frozen=True, slots=True)
class PdfLimits:
    """Resource limits for pypdf, tighter than its defaults.

    Text extraction never needs pypdf's 75 MB per-stream allowance; a smaller one turns
    decompression bombs into ``PDF_LIMIT_EXCEEDED`` long before the worker's memory cap.

    Attributes:
        max_declared_stream_length: Largest ``/Length`` a stream may declare.
            Default 50 MB (pypdf: 75 MB).
        max_decompressed_stream_length: Largest output of one Flate, LZW, run-length,
            Brotli or array-based stream. Default 50 MB (pypdf: 75 MB).
        max_stream_decoding_work: Bytes of decoding work per stream, over all its
            filters. Default 150 MB (pypdf: 300 MB).
        max_collection_elements: Most elements of one array or dictionary.
            Default 50,000 (pypdf: 100,000).
        max_page_tree_entries: Most entries in the page tree. Default 50,000
            (pypdf: 100,000).
        max_xform_invocations: Most form XObjects drawn per page during text
            extraction. Default 2,000 (pypdf: 5,000).
        jbig2dec_binary: The external JBIG2 decoder pypdf may run. Default ``None``:
            a worker killed mid-attempt would leave that child process behind.

    Raises:
        ValueError: A limit is not positive.
    """

    max_declared_stream_length: int = 50_000_000
    max_decompressed_stream_length: int = 50_000_000
    max_stream_decoding_work: int = 150_000_000
    max_collection_elements: int = 50_000
    max_page_tree_entries: int = 50_000
    max_xform_invocations: int = 2_000
    jbig2dec_binary: str | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int) and value <= 0:
                raise ValueError(f"{field.name} must be positive, got {value}")

    def as_pypdf_configuration(self) -> dict[str, Any]:
        """The limits as keyword arguments of ``pypdf.overwrite_configuration``."""
        decompressed = self.max_decompressed_stream_length
        return {
            "maximum_declared_stream_length": self.max_declared_stream_length,
            "zlib_maximum_output_length": decompressed,
            "lzw_maximum_output_length": decompressed,
            "run_length_maximum_output_length": decompressed,
            "brotli_maximum_output_length": decompressed,
            "array_based_stream_maximum_output_length": decompressed,
            "stream_decoding_work_maximum_length": self.max_stream_decoding_work,
            "array_maximum_element_count": self.max_collection_elements,
            "dictionary_maximum_element_count": self.max_collection_elements,
            "page_tree_maximum_entries": self.max_page_tree_entries,
            "xform_maximum_invocations_per_extraction": self.max_xform_invocations,
            "jbig2dec_binary": self.jbig2dec_binary,
        }


def configure_pdf_limits(limits: PdfLimits) -> None:
    """Make ``limits`` pypdf's configuration for the calling thread's context.

    pypdf keeps its configuration in a ``ContextVar``, so this must run in the thread
    that extracts: a worker process calls it once, at start, on its main thread.
    """
    overwrite_configuration(**limits.as_pypdf_configuration())


def looks_like_pdf(head: bytes, tail: bytes) -> bool:
    """Whether a file whose first and last KiB are ``head`` and ``tail`` may be a PDF.

    It is, with the ``%PDF-`` signature in ``head``; without it, if either shows a PDF's
    structure (an object, a cross-reference table, a trailer, the ``startxref``
    pointer): readers, pypdf included, recover such a file, whose first line was lost
    or mangled in transit.
    """
    if PDF_SIGNATURE in head:
        return True
    return bool(_PDF_STRUCTURE.search(head) or _PDF_STRUCTURE.search(tail))


def extract_pdf(
    data: bytes, password: str | None, *, mode: ExtractionMode = ExtractionMode.PLAIN
) -> ExtractionResult:
    """Read the page count, the information dictionary, every page's text, and the
    document's structure.

    Args:
        data: The whole file.
        password: Opens an encrypted file. Without one, the empty user password is
            tried, which opens many "protected" files.
        mode: How each page's text is put together. Default plain reading order.

    Returns:
        The extraction result, with a warning for pages without text and for each
        optional part that could not be read.

    Raises:
        EmptyFileError: ``data`` is empty.
        NotAPdfError: No ``%PDF-`` signature in the first 1024 bytes and no sign of a
            PDF's structure in them or in the last 1024.
        FileNotDecryptedError: The file is encrypted and no password opens it.
        WrongPasswordError: A password was given and neither it nor the empty password
            opens the file.
        Exception: Anything pypdf raises for a damaged file.
    """
    if not data:
        raise EmptyFileError("Cannot read an empty file")
    start = data.find(PDF_SIGNATURE, 0, SIGNATURE_WINDOW)
    if start < 0 and not looks_like_pdf(data[:SIGNATURE_WINDOW], data[-SIGNATURE_WINDOW:]):
        raise NotAPdfError(
            f"no {PDF_SIGNATURE!r} signature in the first {SIGNATURE_WINDOW} bytes, "
            "and no PDF structure"
        )
    # Byte offsets in a file with leading junk count from the signature, as in Acrobat.
    reader = PdfReader(io.BytesIO(data[start:] if start > 0 else data))
    if reader.is_encrypted:
        _decrypt(reader, password)
    pypdf_mode = _PYPDF_MODES[mode]
    pages = tuple(page.extract_text(extraction_mode=pypdf_mode) for page in reader.pages)
    warnings: list[ResultWarning] = []
    details = DocumentDetails(
        pdf_version=_version(reader),
        pages=_page_infos(reader, pages, warnings),
        outline=_part("outline", lambda: tuple(_outline(reader)), (), warnings),
        attachments=_part("attachments", lambda: tuple(_attachments(reader)), (), warnings),
        has_xmp=_part("xmp", lambda: _has_xmp(reader), False, warnings),
    )
    return ExtractionResult(
        page_count=len(pages),
        encrypted=reader.is_encrypted,
        info=_document_info(reader),
        pages=pages,
        warnings=(*_text_layer(pages), *warnings),
        details=details,
    )


def _text_layer(pages: tuple[str, ...]) -> tuple[ResultWarning, ...]:
    """The warning for pages without text, if any: a scan, or text drawn as pictures."""
    blank = sum(1 for text in pages if not text.strip())
    if not blank:
        return ()
    code = WarningCode.NO_TEXT_LAYER if blank == len(pages) else WarningCode.PARTIAL_TEXT_LAYER
    return (ResultWarning(code, "text", blank, total=len(pages)),)


def _part(name: str, read: Callable[[], _T], empty: _T, warnings: list[ResultWarning]) -> _T:
    """An optional part of the document, or ``empty`` with a warning if it is damaged."""
    try:
        return read()
    except _METADATA_ERRORS as exc:
        log.debug("unreadable document part", part=name, exception_type=type(exc).__name__)
        warnings.append(ResultWarning(WarningCode.PART_UNREADABLE, name, 0))
        return empty


def _version(reader: PdfReader) -> str | None:
    header = _read_field("pdf_header", lambda: reader.pdf_header)
    match = _VERSION.match(header) if isinstance(header, str) else None
    return match.group(1) if match else None


def _page_infos(
    reader: PdfReader, texts: tuple[str, ...], warnings: list[ResultWarning]
) -> tuple[PageInfo, ...]:
    infos = []
    damaged = False
    for page, text in zip(reader.pages, texts, strict=True):
        try:
            infos.append(_page_info(page, len(text)))
        except _METADATA_ERRORS as exc:
            log.debug("unreadable page box", exception_type=type(exc).__name__)
            damaged = True
            infos.append(PageInfo(characters=len(text)))
    if damaged:
        warnings.append(ResultWarning(WarningCode.PART_UNREADABLE, "pages", 0))
    return tuple(infos)


def _page_info(page: PageObject, characters: int) -> PageInfo:
    box = page.mediabox
    rotation = page.rotation
    return PageInfo(
        width=round(float(box.width), 3),
        height=round(float(box.height), 3),
        # /Rotate must be a multiple of 90; pypdf hands over what the file says.
        rotation=rotation % 360 if isinstance(rotation, int) and rotation % 90 == 0 else 0,
        characters=characters,
    )


def _outline(reader: PdfReader) -> Iterator[OutlineEntry]:
    """The outline's entries in reading order, nested lists flattened with their depth."""
    # Iterative: a hostile outline may nest as deep as pypdf lets it.
    stack: list[tuple[list[object], int, int]] = [(list(reader.outline), 0, 0)]
    while stack:
        items, index, depth = stack.pop()
        if index >= len(items):
            continue
        stack.append((items, index + 1, depth))
        item = items[index]
        if isinstance(item, list):
            # A list holds the children of the entry before it.
            stack.append((item, 0, depth + 1))
        elif isinstance(item, Destination):
            number = reader.get_destination_page_number(item)
            yield OutlineEntry(
                title=str(item.title) if isinstance(item.title, str) else "",
                page_number=None if number is None or number < 0 else number + 1,
                depth=depth,
            )


def _attachments(reader: PdfReader) -> Iterator[Attachment]:
    for attachment in reader.attachment_list:
        yield Attachment(name=str(attachment.name), size_bytes=_attachment_size(attachment))


def _attachment_size(attachment: EmbeddedFile) -> int | None:
    declared = attachment.size
    if isinstance(declared, int) and declared >= 0:
        return int(declared)
    # Undeclared (the /Size parameter is optional): decoded, within pypdf's stream limits.
    content = _read_field("attachment size", lambda: attachment.content)
    return len(content) if isinstance(content, bytes) else None


def _has_xmp(reader: PdfReader) -> bool:
    metadata = reader.root_object.get("/Metadata")
    return metadata is not None and isinstance(metadata.get_object(), StreamObject)


def _decrypt(reader: PdfReader, password: str | None) -> None:
    if password is not None and reader.decrypt(password):
        return
    # A file whose user password is empty opens without one: a wrong password for it
    # changes nothing, so the file is read rather than refused.
    if reader.decrypt(""):
        return
    if password is None:
        raise FileNotDecryptedError("File has not been decrypted")
    raise WrongPasswordError("the password does not open the file")


def _document_info(reader: PdfReader) -> DocumentInfo:
    metadata = _read_field("metadata", lambda: reader.metadata)
    if metadata is None:
        return DocumentInfo()
    return DocumentInfo(
        title=_text(_read_field("title", lambda: metadata.title)),
        author=_text(_read_field("author", lambda: metadata.author)),
        subject=_text(_read_field("subject", lambda: metadata.subject)),
        creator=_text(_read_field("creator", lambda: metadata.creator)),
        producer=_text(_read_field("producer", lambda: metadata.producer)),
        creation_date=_iso(_read_field("creation_date", lambda: metadata.creation_date)),
        modification_date=_iso(
            _read_field("modification_date", lambda: metadata.modification_date)
        ),
    )


def _read_field(name: str, read: Callable[[], _T]) -> _T | None:
    try:
        return read()
    except _METADATA_ERRORS as exc:
        log.debug("unreadable metadata field", field=name, exception_type=type(exc).__name__)
        return None


def _text(value: object) -> str | None:
    # pypdf hands back its own str subclass, or a non-string object for odd entries.
    return str(value) if isinstance(value, str) else None


def _iso(value: object) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None
