"""Sample PDFs made on the spot: real, small, and (on request) broken or encrypted.

Used by the demo, the benchmarks and the tests, so that none of them needs files from
elsewhere.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

from pypdf import PdfWriter
from pypdf.generic import ContentStream, DictionaryObject, NameObject

__all__ = ["encrypted_pdf", "not_a_pdf", "report_pdf", "text_pdf", "truncated_pdf"]


def text_pdf(*texts: str, padding: int = 0, password: str | None = None) -> bytes:
    """A PDF with one page per text, in Helvetica.

    Args:
        texts: One page each; ASCII without parentheses or backslashes.
        padding: Random bytes attached to the file, to make it bigger.
        password: Encrypt with AES-256 and this user password.
    """
    contents = [f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET" for text in texts]
    title = texts[0] if texts else ""
    return _pdf(contents, (300, 200), title=title, padding=padding, password=password)


def _pdf(
    contents: Sequence[str],
    size: tuple[int, int],
    *,
    title: str,
    padding: int,
    password: str | None = None,
) -> bytes:
    """One page per content stream, with Helvetica as /F1."""
    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    for content in contents:
        page = writer.add_blank_page(width=size[0], height=size[1])
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        stream = ContentStream(None, None)
        stream.set_data(content.encode())
        page.replace_contents(stream)
    writer.add_metadata({"/Title": title, "/Producer": "pdfbatch samples"})
    if padding:
        writer.add_attachment("padding.bin", os.urandom(padding))
    if password is not None:
        writer.encrypt(user_password=password, owner_password="owner", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def encrypted_pdf(password: str, text: str = "A protected page") -> bytes:
    """A one-page PDF that opens only with ``password``."""
    return text_pdf(text, password=password)


def truncated_pdf() -> bytes:
    """A PDF cut off after its header and part of its first object."""
    return text_pdf("This file was cut short")[:120]


def not_a_pdf() -> bytes:
    """A text file that someone named ``.pdf``."""
    return b"Meeting notes, not a PDF at all.\n"


def report_pdf(*pages: Sequence[str], padding: int = 0) -> bytes:
    """A PDF with one US Letter page per sequence of lines, like a page of a report.

    Args:
        pages: Each page's lines; ASCII without parentheses or backslashes.
        padding: Random bytes attached to the file, to make it bigger.
    """
    contents = [
        "BT /F1 10 Tf 12 TL 50 740 Td " + " T* ".join(f"({line}) Tj" for line in lines) + " ET"
        for lines in pages
    ]
    title = pages[0][0] if pages and pages[0] else ""
    return _pdf(contents, (612, 792), title=title, padding=padding)
