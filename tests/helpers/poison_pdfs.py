"""Valid PDFs whose extracted text or metadata is poison for whatever stores or sends it.

Each file opens and reads fine; what it yields is the problem: a glyph that a font's
``ToUnicode`` map sends to a lone surrogate, to NUL, to a non-character or to a
right-to-left override; a document title of megabytes, or one that is not valid
Unicode; a few kilobytes that expand to tens of millions of characters of text. Built
by hand with :func:`tests.helpers.hostile_pdfs.assemble`, like the hostile files.
"""

from __future__ import annotations

import unicodedata
import zlib

from tests.helpers.hostile_pdfs import assemble, stream_object

__all__ = [
    "POISON_CODE_POINTS",
    "expected_text",
    "huge_title",
    "mapped_glyph",
    "poison_files",
    "surrogate_title",
    "text_amplifier",
]

# What a glyph is mapped to: U+D800 and U+DFFF cannot be encoded as UTF-8 at all; NUL
# ends C strings; U+FFFF is a non-character; U+202E reverses the text on a terminal.
POISON_CODE_POINTS = (0xD800, 0xDFFF, 0x0000, 0xFFFF, 0x202E)

_PLAIN_FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
_MAPPED_FONT = (
    b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica "
    b"/Encoding /WinAnsiEncoding /ToUnicode 6 0 R >>"
)


def _cmap(mappings: bytes) -> bytes:
    """A ToUnicode CMap stream of one-byte codes with ``mappings`` (``<code> <utf16>``)."""
    return stream_object(
        b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap "
        b"/CMapName /Poison def 1 begincodespacerange <00> <FF> endcodespacerange "
        b"%d beginbfchar %s endbfchar "
        b"endcmap CMapName currentdict /CMap defineresource pop end end"
        % (mappings.count(b"> <"), mappings)
    )


def _one_page(
    content: bytes, font: bytes, *, cmap: bytes | None = None, info: bytes = b""
) -> bytes:
    """One page drawing ``content`` (object 4) with ``font`` (object 5) as /F1.

    ``cmap`` becomes object 6, the font's ToUnicode map; ``info`` the trailer's /Info.
    """
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        content,
        font,
        *([cmap] if cmap is not None else []),
    ]
    if not info:
        return assemble(objects)
    data = assemble([*objects, info])
    # The trailer names the information dictionary, the last object.
    return data.replace(b"/Root 1 0 R >>", b"/Root 1 0 R /Info %d 0 R >>" % (len(objects) + 1), 1)


def mapped_glyph(code_point: int) -> bytes:
    """One page showing ``ok`` then glyph 1, which the font's ToUnicode maps to ``code_point``.

    The map writes the code point as one UTF-16BE unit, as a broken font would: for a
    surrogate that is half of a pair with no other half.
    """
    mappings = b"<6F> <006F> <6B> <006B> <01> <%04X>" % code_point
    content = stream_object(b"BT /F1 12 Tf 20 100 Td (ok\\001ok) Tj ET")
    return _one_page(content, _MAPPED_FONT, cmap=_cmap(mappings))


def _with_info(info: bytes) -> bytes:
    return _one_page(
        stream_object(b"BT /F1 12 Tf 20 100 Td (titled) Tj ET"), _PLAIN_FONT, info=info
    )


def huge_title(chars: int = 2_000_000) -> bytes:
    """One ordinary page, and a document title of ``chars`` characters."""
    return _with_info(b"<< /Title (%s) /Author (poison) >>" % (b"T" * chars))


def surrogate_title() -> bytes:
    """One ordinary page, and a UTF-16 title holding a lone surrogate and a NUL.

    pypdf cannot decode it as UTF-16, so it reads the bytes one by one: NULs included.
    """
    return _with_info(b"<< /Title <FEFF0041D80000000042> >>")


def text_amplifier(chars: int = 60_000_000, *, fan_out: int = 100) -> bytes:
    """A file of about 2 KB whose one page yields ``chars`` characters of text.

    The font's ToUnicode map sends the byte ``A`` to ``fan_out`` letters (pypdf reads
    up to 1,024 hex digits of one mapping: ``fan_out`` at most 256), and the page shows
    ``chars // fan_out`` of them from a deflated stream. pypdf reads it in well under a
    second, inside every limit of its own.
    """
    content = zlib.compress(b"BT /F1 1 Tf (%s) Tj ET" % (b"A" * (chars // fan_out)), 9)
    cmap = _cmap(b"<41> <%s>" % (b"0041" * fan_out))
    return _one_page(stream_object(content, flate=True), _MAPPED_FONT, cmap=cmap)


def poison_files() -> list[tuple[str, bytes]]:
    """Every poison file, named: ``(name, bytes)``."""
    return [
        *((f"poison-glyph-u{cp:04x}.pdf", mapped_glyph(cp)) for cp in POISON_CODE_POINTS),
        ("poison-huge-title.pdf", huge_title()),
        ("poison-surrogate-title.pdf", surrogate_title()),
        ("poison-text-amplifier.pdf", text_amplifier()),
    ]


_KEPT_CONTROLS = "\t\n\r\f"


def expected_text(text: str) -> tuple[str, int]:
    """The oracle: what may be stored of ``text``, and how many characters were replaced.

    A high surrogate followed by a low one is the character the pair encodes; any other
    surrogate, and any control but tab, line feed, carriage return and form feed, is
    replaced with U+FFFD.
    """
    out = []
    replaced = index = 0
    while index < len(text):
        char = text[index]
        index += 1
        if "\ud800" <= char <= "\udbff" and index < len(text):
            low = text[index]
            if "\udc00" <= low <= "\udfff":
                index += 1
                out.append(chr(0x10000 + ((ord(char) - 0xD800) << 10) + ord(low) - 0xDC00))
                continue
        category = unicodedata.category(char)
        if category == "Cs" or (category == "Cc" and char not in _KEPT_CONTROLS):
            out.append("\ufffd")
            replaced += 1
        else:
            out.append(char)
    return "".join(out), replaced
