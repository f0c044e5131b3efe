"""PDFs written with pypdf's own writer: well-formed, with the text, metadata and
encryption a test asks for."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from pypdf import PdfWriter
from pypdf.generic import ContentStream, DictionaryObject, NameObject

__all__ = ["aes", "make_pdf", "text_page"]


def text_page(writer: PdfWriter, content: bytes) -> None:
    """Add a page drawing ``content`` with Helvetica as /F1."""
    page = writer.add_blank_page(width=300, height=200)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
    )
    stream = ContentStream(None, None)
    stream.set_data(content)
    page.replace_contents(stream)
    page.compress_content_streams()


def make_pdf(
    *texts: str,
    metadata: dict[str, Any] | None = None,
    encrypt: Callable[[PdfWriter], None] | None = None,
) -> bytes:
    """A PDF with one page per text."""
    writer = PdfWriter()
    for text in texts:
        text_page(writer, f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode())
    if metadata is not None:
        writer.add_metadata(metadata)
    if encrypt is not None:
        encrypt(writer)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def aes(user: str, owner: str = "owner-secret") -> Callable[[PdfWriter], None]:
    """Encrypt with AES-256: ``user`` opens the file."""

    def apply(writer: PdfWriter) -> None:
        writer.encrypt(user_password=user, owner_password=owner, algorithm="AES-256")

    return apply
