"""PDFs with a structure to read: pages without text, outlines, attachments, rotated
pages, a damaged outline, a lost header line.

The byte-level ones are built with :func:`tests.helpers.hostile_pdfs.assemble`, so that
what is in them is exactly what a test names; the others with pypdf's writer.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence

from pypdf import PdfWriter
from pypdf.xmp import XmpInformation

from tests.helpers.hostile_pdfs import assemble, stream_object
from tests.helpers.writer_pdfs import text_page

__all__ = [
    "TEXT",
    "deep_outline",
    "headerless",
    "image_only",
    "mixed_text_and_images",
    "structured",
]

_FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
# A 2x2 grey picture: what a scanner leaves, in miniature.
_IMAGE = (
    b"<< /Type /XObject /Subtype /Image /Width 2 /Height 2 /ColorSpace /DeviceGray "
    b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n%s\nendstream"
)
TEXT = "Readable text"


def _image_object() -> bytes:
    pixels = zlib.compress(bytes([0, 128, 255, 64]))
    return _IMAGE % (len(pixels), pixels)


def _pages(contents: Sequence[bytes]) -> bytes:
    """Pages drawing ``contents``, each with the font /F1 and the image /Im1 at hand.

    Objects: 1 catalog, 2 page tree, 3 font, 4 image, then a page and its content
    stream for each page.
    """
    first = 5
    kids = b" ".join(b"%d 0 R" % (first + 2 * n) for n in range(len(contents)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(contents)),
        _FONT,
        _image_object(),
    ]
    for n, content in enumerate(contents):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> /XObject << /Im1 4 0 R >> >> >>"
            % (first + 2 * n + 1)
        )
        objects.append(stream_object(content))
    return assemble(objects)


_DRAW_IMAGE = b"q 200 0 0 200 100 300 cm /Im1 Do Q"
_DRAW_SHAPES = b"0.2 0.4 0.8 rg 50 50 200 100 re f 1 w 0 0 m 300 300 l S"
_DRAW_TEXT = b"BT /F1 12 Tf 72 700 Td (%s) Tj ET" % TEXT.encode()
_DRAW_SPACES = b"BT /F1 12 Tf 72 700 Td (   ) Tj ET"


def image_only(pages: int = 2) -> bytes:
    """A scan, as far as text goes: pages that draw a picture or shapes, never text."""
    return _pages([_DRAW_IMAGE if n % 2 == 0 else _DRAW_SHAPES for n in range(pages)])


def mixed_text_and_images() -> bytes:
    """Four pages: text, a picture, text over a picture, and text of spaces only."""
    return _pages([_DRAW_TEXT, _DRAW_IMAGE, _DRAW_IMAGE + b" " + _DRAW_TEXT, _DRAW_SPACES])


def structured() -> bytes:
    """Three pages of text (the second rotated, the third of another size), a nested
    outline, an attachment and XMP metadata."""
    writer = PdfWriter()
    for n in range(3):
        text_page(writer, b"BT /F1 12 Tf 20 100 Td (page %d) Tj ET" % (n + 1))
    writer.pages[1].rotate(90)
    writer.pages[2].mediabox.upper_right = (595, 842)
    chapter = writer.add_outline_item(title="Chapter 1", page_number=0)
    writer.add_outline_item(title="Section 1.1", page_number=1, parent=chapter)
    writer.add_outline_item(title="Chapter 2", page_number=2)
    writer.add_attachment("data.csv", b"a,b\n1,2\n")
    writer.xmp_metadata = XmpInformation.create()
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def deep_outline(depth: int = 150) -> bytes:
    """One readable page, and an outline nested deeper than pypdf follows (100): a
    damaged optional part of a file whose text reads fine."""
    first = 6
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /Outlines %d 0 R >>" % first,
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        stream_object(b"BT /F1 12 Tf 20 100 Td (%s) Tj ET" % TEXT.encode()),
        _FONT,
        b"<< /Type /Outlines /First %d 0 R >>" % (first + 1),
    ]
    for level in range(depth):
        number = first + 1 + level
        child = b" /First %d 0 R" % (number + 1) if level < depth - 1 else b""
        objects.append(
            b"<< /Title (level %d) /Parent %d 0 R /Dest [3 0 R /Fit]%s >>"
            % (level, number - 1, child)
        )
    return assemble(objects)


def headerless(data: bytes) -> bytes:
    """``data`` without its first line, the ``%PDF-`` signature: lost in transit."""
    return data[data.index(b"\n") + 1 :]
