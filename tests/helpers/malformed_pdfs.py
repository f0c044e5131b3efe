"""Malformed PDFs for the reliability suite: broken structure, lies, junk, damaged real files.

Together with the hostile files of :mod:`tests.helpers.hostile_pdfs` and the samples of
:mod:`bench.samples`, these make the generated half of the batch that
``tests/reliability/test_files.py`` sends through the service. A seeded generator
picks the junk and the damage, so a run can be replayed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path

from actors.policy.catalogue import ErrorCode
from bench import samples
from tests.helpers import hostile_pdfs

__all__ = ["CORPUS", "corpus_pdfs", "damaged", "generated", "mutated_corpus", "truncated_at"]

# The real corpus, next to the repository, as CI's clone finds it too.
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"


def corpus_pdfs(root: Path = CORPUS) -> list[Path]:
    """Every PDF under ``root``, in a stable order; none when it is absent."""
    return sorted(root.rglob("*.pdf")) if root.is_dir() else []


def wrong_xref_offsets() -> bytes:
    """A one-page PDF whose cross-reference table points every object 7 bytes off."""
    whole = hostile_pdfs.one_page("wrong xref")
    return re.sub(
        rb"(\d{10}) 00000 n",
        lambda m: b"%010d 00000 n" % (int(m.group(1)) + 7),
        whole,
    )


def wrong_startxref() -> bytes:
    """A one-page PDF whose ``startxref`` points into the middle of an object."""
    whole = hostile_pdfs.one_page("wrong startxref")
    return re.sub(rb"startxref\n\d+", b"startxref\n42", whole)


def no_xref_at_all() -> bytes:
    """A one-page PDF without cross-reference table, trailer or ``%%EOF``."""
    whole = hostile_pdfs.one_page("no xref")
    return whole[: whole.index(b"xref")]


def huge_xref_count() -> bytes:
    """A cross-reference section and a trailer claiming two billion objects."""
    whole = hostile_pdfs.one_page("huge xref")
    whole = re.sub(rb"xref\n0 \d+", b"xref\n0 2147483647", whole)
    return re.sub(rb"/Size \d+", b"/Size 2147483647", whole)


def huge_page_count() -> bytes:
    """A page tree whose root says it holds a billion pages; it holds one."""
    return hostile_pdfs.one_page("huge count").replace(b"/Count 1", b"/Count 1000000000")


def many_objects(count: int = 100_000) -> bytes:
    """A one-page PDF followed by ``count`` small objects nobody refers to."""
    page = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length 35 >>\nstream\nBT /F1 12 Tf 20 100 Td (many) Tj ET\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    return hostile_pdfs.assemble([*page, *(b"<< /N %d >>" % n for n in range(count))])


def many_pages(count: int = 2_000) -> bytes:
    """``count`` pages sharing one content stream: a big page tree, little text."""
    first_page = 5
    kids = b" ".join(b"%d 0 R" % (first_page + n) for n in range(count))
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents 3 0 R "
        b"/Resources << /Font << /F1 4 0 R >> >> >>"
    )
    return hostile_pdfs.assemble(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, count),
            b"<< /Length 33 >>\nstream\nBT /F1 12 Tf 20 100 Td (p) Tj ET\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            *(page for _ in range(count)),
        ]
    )


def garbage(rng: random.Random, size: int = 4096) -> bytes:
    """Random bytes that do not start like a PDF."""
    return b"\x00" + rng.randbytes(size - 1)


def garbage_after_header(rng: random.Random, size: int = 4096) -> bytes:
    """A PDF signature followed by random bytes."""
    return b"%PDF-1.7\n" + rng.randbytes(size)


def truncated_at(data: bytes, rng: random.Random) -> bytes:
    """``data`` cut at a random point after its signature."""
    return data[: rng.randrange(16, max(17, len(data) - 1))]


def damaged(data: bytes, rng: random.Random, spots: int = 24) -> bytes:
    """``data`` with ``spots`` random runs of 1-16 bytes overwritten, the signature kept."""
    out = bytearray(data)
    for _ in range(spots):
        start = rng.randrange(8, max(9, len(out) - 16))
        length = rng.randint(1, 16)
        out[start : start + length] = rng.randbytes(length)
    return bytes(out[: len(data)])


def generated(rng: random.Random) -> list[tuple[str, bytes, ErrorCode | None]]:
    """The generated files: ``(name, bytes, code)``, code ``None`` where any outcome goes.

    A code is given where the file can end only one way; damaged, truncated and lying
    files may be read anyway (pypdf repairs what it can), so they may end either way.
    """
    hostile: list[tuple[str, bytes, ErrorCode | None]] = [
        (f"hostile-{name}.pdf", getattr(hostile_pdfs, name)(), code)
        for name, code in hostile_pdfs.HOSTILE
    ]
    return [
        *hostile,
        ("hostile-cpu_bomb.pdf", hostile_pdfs.cpu_bomb(), ErrorCode.PDF_LIMIT_EXCEEDED),
        ("empty.pdf", b"", ErrorCode.PDF_EMPTY),
        ("garbage.pdf", garbage(rng), ErrorCode.NOT_A_PDF),
        ("garbage-after-header.pdf", garbage_after_header(rng), None),
        ("sample-truncated.pdf", samples.truncated_pdf(), ErrorCode.PDF_MALFORMED),
        ("sample-not-a-pdf.pdf", samples.not_a_pdf(), ErrorCode.NOT_A_PDF),
        ("sample-encrypted.pdf", samples.encrypted_pdf("secret"), ErrorCode.PDF_ENCRYPTED),
        ("sample-report.pdf", samples.report_pdf(["a report", "of one page"]), None),
        ("wrong-xref-offsets.pdf", wrong_xref_offsets(), None),
        ("wrong-startxref.pdf", wrong_startxref(), None),
        ("no-xref.pdf", no_xref_at_all(), None),
        ("huge-xref-count.pdf", huge_xref_count(), None),
        ("huge-page-count.pdf", huge_page_count(), None),
        ("many-objects.pdf", many_objects(), None),
        ("many-pages.pdf", many_pages(), None),
    ]


def mutated_corpus(
    paths: Sequence[Path], rng: random.Random, count: int
) -> list[tuple[str, bytes, ErrorCode | None]]:
    """``count`` real files, each truncated or damaged at random."""
    out: list[tuple[str, bytes, ErrorCode | None]] = []
    for index in range(count if paths else 0):
        path = rng.choice(paths)
        data = path.read_bytes()
        if rng.random() < 0.5:
            out.append((f"truncated-{index}-{path.name}", truncated_at(data, rng), None))
        else:
            out.append((f"damaged-{index}-{path.name}", damaged(data, rng), None))
    return out
