"""What a result says about the document besides its text: version, pages, outline, attachments.

Every part is optional: a PDF whose outline is damaged still has pages worth reading, so
an extractor that cannot read a part leaves it empty and says so in a warning (see
:class:`~actors.policy.model.WarningCode`). How many entries a result keeps, and how long
a title or a name may be, is bounded by :class:`~actors.policy.results.ResultLimits`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Attachment", "DocumentDetails", "ExtractionMode", "OutlineEntry", "PageInfo"]


class ExtractionMode(enum.StrEnum):
    """How a page's text is put together from what the page draws."""

    # Text in reading order, one line per line of text: what most users want.
    PLAIN = "PLAIN"
    # Text laid out as on the page, columns and indentation kept with spaces (pypdf's
    # ``extraction_mode="layout"``): for tables and forms; more characters, slower.
    LAYOUT = "LAYOUT"


@dataclass(frozen=True, slots=True)
class PageInfo:
    """One page: its size, rotation, and how much text came out of it.

    Attributes:
        width: Width of the media box, in points (1/72 inch); ``None`` when the page's
            box could not be read.
        height: Height of the media box, in points; ``None`` likewise.
        rotation: Clockwise rotation the page is shown with: 0, 90, 180 or 270.
        characters: Characters of text extracted from the page, whitespace included.
    """

    width: float | None = None
    height: float | None = None
    rotation: int = 0
    characters: int = 0


@dataclass(frozen=True, slots=True)
class OutlineEntry:
    """One entry of the document's outline (its bookmarks), nested entries flattened.

    Attributes:
        title: The entry's title.
        page_number: The page it points to, from 1; ``None`` for an entry that points
            nowhere in the document (a web link, a broken destination).
        depth: 0 for a top-level entry, 1 for its children, and so on.
    """

    title: str
    page_number: int | None
    depth: int


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file embedded in the document.

    Attributes:
        name: Its name, as the document gives it: a label, never a path to trust.
        size_bytes: Its size as the document declares it; ``None`` when undeclared.
    """

    name: str
    size_bytes: int | None


@dataclass(frozen=True, slots=True)
class DocumentDetails:
    """The document's structure, as far as it could be read.

    Attributes:
        pdf_version: The version in the file's header, e.g. ``"1.7"``; ``None`` when
            the header is missing or unreadable.
        pages: One entry per page, in order.
        outline: The outline's entries in reading order, nested ones flattened with
            their depth.
        attachments: The embedded files.
        has_xmp: Whether the document carries an XMP metadata stream.
    """

    pdf_version: str | None = None
    pages: tuple[PageInfo, ...] = ()
    outline: tuple[OutlineEntry, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    has_xmp: bool = False
