"""Hostile PDFs, written byte by byte: bombs, cycles, lies and junk.

Each maker returns the whole file. The files are built by hand rather than with pypdf's
writer, which refuses to write most of them. Objects are numbered from 1 in the order
given; the cross-reference table is computed, so the lies are only the ones intended.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from actors.policy.catalogue import ErrorCode

__all__ = [
    "HOSTILE",
    "assemble",
    "cpu_bomb",
    "cyclic_page_tree",
    "decompression_bomb",
    "deep_nesting",
    "huge_declared_length",
    "one_page",
    "stream_object",
    "truncated",
    "wrong_magic",
]

_HEADER = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
_FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
_MIB = 1024 * 1024


def assemble(objects: Sequence[bytes], *, root: int = 1) -> bytes:
    """A PDF of ``objects`` (bodies of objects 1, 2, ...) with a correct xref table."""
    out = bytearray(_HEADER)
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        root,
        xref,
    )
    return bytes(out)


def stream_object(data: bytes, *, flate: bool = False, declared: int | None = None) -> bytes:
    """A stream object of ``data``, deflated if ``flate``; its /Length may lie (``declared``)."""
    length = len(data) if declared is None else declared
    filters = b" /Filter /FlateDecode" if flate else b""
    return b"<< /Length %d%s >>\nstream\n%s\nendstream" % (length, filters, data)


def _document(content: bytes, *, extra: Sequence[bytes] = ()) -> bytes:
    """Catalog, one page tree node, one page drawing ``content`` (object 4), a font."""
    return assemble(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            content,
            _FONT,
            *extra,
        ]
    )


def one_page(text: str) -> bytes:
    """A well-formed one-page PDF saying ``text``: the innocent file of a batch."""
    return _document(stream_object(b"BT /F1 12 Tf 20 100 Td (%s) Tj ET" % text.encode()))


def _compressed_zeros(size: int) -> bytes:
    """``size`` zero bytes, deflated piece by piece so the test never holds them all."""
    packer = zlib.compressobj(9)
    piece = bytes(_MIB)
    parts = [packer.compress(piece) for _ in range(size // _MIB)]
    parts.append(packer.flush())
    return b"".join(parts)


def decompression_bomb(expanded_bytes: int = 64 * _MIB) -> bytes:
    """A page whose content stream inflates to ``expanded_bytes`` of zeros.

    The default, 64 MiB, is above the service's 50 MB limit but below pypdf's own
    75 MB: only the service's limits stop it.
    """
    return _document(stream_object(_compressed_zeros(expanded_bytes), flate=True))


def deep_nesting(depth: int = 100_000) -> bytes:
    """A page dictionary holding an array nested ``depth`` levels deep."""
    nested = b"[" * depth + b"]" * depth
    return assemble(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> /Deep %s >>" % nested,
            stream_object(b"BT /F1 12 Tf 20 100 Td (deep) Tj ET"),
            _FONT,
        ]
    )


def cyclic_page_tree() -> bytes:
    """A page tree whose inner node lists the root among its kids."""
    return assemble(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R 4 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 3 0 R /MediaBox [0 0 300 200] /Contents 5 0 R >>",
            stream_object(b""),
        ]
    )


def huge_declared_length() -> bytes:
    """A content stream that declares a /Length of about 100 GB and holds 40 bytes."""
    return _document(stream_object(b"BT /F1 12 Tf 20 100 Td (huge) Tj ET", declared=99_999_999_999))


def wrong_magic() -> bytes:
    """A ZIP archive's first bytes; a PDF signature only after the first KiB, and no
    object, cross-reference table or trailer: nothing a reader could recover."""
    return b"PK\x03\x04" + bytes(2048) + b"%PDF-1.7\n" + bytes(2048)


def truncated() -> bytes:
    """A PDF cut off in the middle of its page tree: no xref, no trailer, no pages."""
    whole = one_page("cut short")
    return whole[: whole.index(b"3 0 obj") + 20]


def cpu_bomb(pages: int = 100, operators: int = 200_000) -> bytes:
    """An 18 KB file whose text extraction keeps a CPU busy for minutes (about 5 s a page).

    Every one of its ``pages`` draws the same content stream of ``operators``
    text-showing operators, under pypdf's parsing budget of 2 million tokens per stream
    and needing only about 100 MB: no limit of pypdf's stops it, and memory does not
    either, so only the worker's CPU-time limit does.
    """
    content = b"BT /F1 12 Tf " + b"(x) Tj " * operators + b"ET"
    first_page = 5
    kids = b" ".join(b"%d 0 R" % (first_page + n) for n in range(pages))
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents 3 0 R "
        b"/Resources << /Font << /F1 4 0 R >> >> >>"
    )
    return assemble(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
            stream_object(zlib.compress(content, 9), flate=True),
            _FONT,
            *(page for _ in range(pages)),
        ]
    )


# The makers of hostile files, by name, and the code each file must fail with.
HOSTILE: tuple[tuple[str, ErrorCode], ...] = (
    ("decompression_bomb", ErrorCode.PDF_LIMIT_EXCEEDED),
    ("deep_nesting", ErrorCode.PDF_LIMIT_EXCEEDED),
    ("cyclic_page_tree", ErrorCode.PDF_MALFORMED),
    ("huge_declared_length", ErrorCode.PDF_LIMIT_EXCEEDED),
    ("wrong_magic", ErrorCode.NOT_A_PDF),
    ("truncated", ErrorCode.PDF_MALFORMED),
)
