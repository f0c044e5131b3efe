"""Text and metadata extraction from one PDF, with pypdf.

This module runs inside worker processes only. It raises whatever pypdf raises and
leaves the naming of the failure to :func:`actors.execution.classify.classify`; the exceptions it
raises itself are the ones ``classify`` maps to a precise code.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import structlog
from pypdf import PdfReader, overwrite_configuration
from pypdf.errors import EmptyFileError, FileNotDecryptedError, PyPdfError

from actors.policy.catalogue import NotAPdfError, WrongPasswordError
from actors.policy.model import DocumentInfo, ExtractionResult

__all__ = ["PDF_SIGNATURE", "SIGNATURE_WINDOW", "PdfLimits", "configure_pdf_limits", "extract_pdf"]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

PDF_SIGNATURE = b"%PDF-"
# Readers accept junk (mail headers, BOMs) before the signature; Acrobat looks this far.
SIGNATURE_WINDOW = 1024

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


def extract_pdf(data: bytes, password: str | None) -> ExtractionResult:
    """Read the page count, the information dictionary and every page's text.

    Args:
        data: The whole file.
        password: Opens an encrypted file. Without one, the empty user password is
            tried, which opens many "protected" files.

    Returns:
        The extraction result.

    Raises:
        EmptyFileError: ``data`` is empty.
        NotAPdfError: No ``%PDF-`` signature in the first 1024 bytes.
        FileNotDecryptedError: The file is encrypted and no password opens it.
        WrongPasswordError: A password was given and neither it nor the empty password
            opens the file.
        Exception: Anything pypdf raises for a damaged file.
    """
    if not data:
        raise EmptyFileError("Cannot read an empty file")
    start = data.find(PDF_SIGNATURE, 0, SIGNATURE_WINDOW)
    if start < 0:
        raise NotAPdfError(f"no {PDF_SIGNATURE!r} signature in the first {SIGNATURE_WINDOW} bytes")
    # Byte offsets in a file with leading junk count from the signature, as in Acrobat.
    reader = PdfReader(io.BytesIO(data[start:] if start else data))
    if reader.is_encrypted:
        _decrypt(reader, password)
    pages = tuple(page.extract_text() for page in reader.pages)
    return ExtractionResult(
        page_count=len(pages),
        encrypted=reader.is_encrypted,
        info=_document_info(reader),
        pages=pages,
    )


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
