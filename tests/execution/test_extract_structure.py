"""extract_pdf beyond the text: text-layer warnings, the document's structure, layout
text, files without their header line; on generated PDFs and on the real corpus."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
from pypdf import PdfReader

from actors.execution.classify import classify
from actors.execution.extract import PDF_SIGNATURE, SIGNATURE_WINDOW, extract_pdf, looks_like_pdf
from actors.execution.screening import screen
from actors.policy.catalogue import ErrorCode, NotAPdfError
from actors.policy.document import Attachment, ExtractionMode, OutlineEntry, PageInfo
from actors.policy.model import ExtractionResult, ResultWarning, WarningCode
from actors.policy.results import ResultLimits, make_storable
from tests.helpers import document_pdfs, malformed_pdfs
from tests.helpers.hostile_pdfs import one_page
from tests.helpers.writer_pdfs import make_pdf

CORPUS = Path(os.environ.get("PDFBATCH_CORPUS", "/work/shared/corpus/sample-files"))
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS}")


def stored(data: bytes, **options: ExtractionMode) -> ExtractionResult:
    """The result as a worker sends it: extracted, then made storable."""
    return make_storable(extract_pdf(data, None, **options), ResultLimits())


def text_codes(result: ExtractionResult) -> list[tuple[WarningCode, int, int]]:
    return [(w.code, w.count, w.total) for w in result.warnings if w.place == "text"]


# Text layer ---------------------------------------------------------------------------


def test_pages_that_draw_only_pictures_and_shapes_warn_no_text_layer() -> None:
    result = stored(document_pdfs.image_only(pages=3))

    assert result.pages == ("", "", "")
    assert text_codes(result) == [(WarningCode.NO_TEXT_LAYER, 3, 3)]
    (warning,) = result.warnings
    assert "OCR" in warning.message
    assert "3 pages" in warning.message
    assert [page.characters for page in result.details.pages] == [0, 0, 0]


def test_some_pages_without_text_warn_partial_whitespace_counting_as_none() -> None:
    result = stored(document_pdfs.mixed_text_and_images())

    assert result.pages[0] == document_pdfs.TEXT
    assert result.pages[3].strip() == ""
    assert text_codes(result) == [(WarningCode.PARTIAL_TEXT_LAYER, 2, 4)]
    assert result.warnings[0].message.startswith("2 of 4 pages have no text")
    assert "OCR" in result.warnings[0].message
    assert [page.characters for page in result.details.pages] == [
        len(text) for text in result.pages
    ]
    assert result.details.pages[0].characters == len(document_pdfs.TEXT)


def test_pages_with_text_have_no_text_layer_warning() -> None:
    result = stored(make_pdf("one", "two"))

    assert result.warnings == ()
    assert [page.characters for page in result.details.pages] == [3, 3]


def test_a_document_of_no_pages_is_not_said_to_lack_text() -> None:
    empty = document_pdfs.image_only(pages=0)

    assert stored(empty).warnings == ()


# Structure ----------------------------------------------------------------------------


def test_version_page_sizes_rotation_outline_attachments_and_xmp_are_read() -> None:
    details = stored(document_pdfs.structured()).details

    assert details.pdf_version == "1.3"
    assert details.pages == (
        PageInfo(300.0, 200.0, 0, 6),
        PageInfo(300.0, 200.0, 90, 6),
        PageInfo(595.0, 842.0, 0, 6),
    )
    assert details.outline == (
        OutlineEntry("Chapter 1", 1, 0),
        OutlineEntry("Section 1.1", 2, 1),
        OutlineEntry("Chapter 2", 3, 0),
    )
    assert details.attachments == (Attachment("data.csv", len(b"a,b\n1,2\n")),)
    assert details.has_xmp


def test_a_plain_file_has_no_outline_no_attachment_and_no_xmp() -> None:
    details = stored(one_page("plain")).details

    assert details.pdf_version == "1.7"
    assert (details.outline, details.attachments, details.has_xmp) == ((), (), False)


def test_a_damaged_outline_is_left_out_with_a_warning_and_the_text_is_whole() -> None:
    result = stored(document_pdfs.deep_outline())

    assert result.pages == (document_pdfs.TEXT,)
    assert result.details.outline == ()
    assert result.warnings == (ResultWarning(WarningCode.PART_UNREADABLE, "outline", 0),)
    assert "outline could not be read" in result.warnings[0].message


def test_outline_and_attachments_are_kept_within_the_result_limits() -> None:
    limits = ResultLimits(max_outline_entries=2, max_name_bytes=7)

    result = make_storable(extract_pdf(document_pdfs.structured(), None), limits)

    assert result.details.outline == (
        OutlineEntry("Chapter", 1, 0),
        OutlineEntry("Section", 2, 1),
    )
    truncated = {w.count for w in result.warnings if w.code is WarningCode.PART_TRUNCATED}
    # Two titles lost 2 and 4 characters; one entry was left out.
    assert truncated == {6, 1}
    assert make_storable(result, limits) == result


# Layout mode --------------------------------------------------------------------------


def test_layout_mode_keeps_the_gap_between_columns() -> None:
    columns = make_pdf("left) Tj 200 0 Td (right")

    plain = stored(columns).pages[0]
    layout = stored(columns, mode=ExtractionMode.LAYOUT).pages[0]

    assert "left" in plain
    assert "right" in plain
    assert " " * 10 not in plain
    assert "left" + " " * 10 in layout
    assert layout.rstrip().endswith("right")


# Files without their header line --------------------------------------------------------


def test_a_pdf_whose_header_line_is_lost_is_read_whole() -> None:
    whole = make_pdf("first", "second")

    result = extract_pdf(document_pdfs.headerless(whole), None)

    assert not whole.startswith(b"\n")
    assert result.pages == ("first", "second")
    assert result.details.pdf_version is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, world: an object, a trailer of thoughts",
        b"\x89PNG\r\n\x1a\n" + bytes(3000),
        bytes(4096),
    ],
    ids=["empty", "prose", "png", "zeros"],
)
def test_junk_without_any_pdf_structure_is_not_a_pdf(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "junk"
    path.write_bytes(data)
    assert screen(path) is (ErrorCode.PDF_EMPTY if not data else ErrorCode.NOT_A_PDF)
    if data:
        assert not looks_like_pdf(data[:SIGNATURE_WINDOW], data[-SIGNATURE_WINDOW:])
        with pytest.raises(NotAPdfError):
            extract_pdf(data, None)


def test_screening_lets_through_what_has_a_pdfs_structure(tmp_path: Path) -> None:
    pdf = one_page("body")
    body_only = document_pdfs.headerless(pdf)
    # The objects come after the first KiB; the trailer is in the last one.
    late_structure = b"%" + bytes(3000) + body_only
    cases = {"headerless": body_only, "late": late_structure}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert PDF_SIGNATURE not in data[:SIGNATURE_WINDOW], name
        assert screen(path) is None, name
        assert extract_pdf(data, None).pages == ("body",), name


@needs_corpus
@pytest.mark.parametrize(
    "name", ["minimal-document.pdf", "pdflatex-4-pages.pdf", "multicolumn.pdf", "pdfkit.pdf"]
)
def test_a_real_pdf_without_its_header_line_reads_as_the_original(
    tmp_path: Path, name: str
) -> None:
    (path,) = CORPUS.rglob(name)
    original = path.read_bytes()
    damaged = document_pdfs.headerless(original)
    (tmp_path / name).write_bytes(damaged)

    assert screen(tmp_path / name) is None
    assert extract_pdf(damaged, None).pages == extract_pdf(original, None).pages


# The real corpus ------------------------------------------------------------------------


@needs_corpus
def test_real_files_report_their_structure_and_their_missing_text() -> None:
    def read(name: str) -> ExtractionResult:
        (path,) = CORPUS.rglob(name)
        return stored(path.read_bytes())

    for scan in ("imagemagick-lzw.pdf", "cmyk-image.pdf", "grayscale-image.pdf"):
        assert [w.code for w in read(scan).warnings if w.place == "text"] == [
            WarningCode.NO_TEXT_LAYER
        ], scan
    for text in ("minimal-document.pdf", "pdflatex-4-pages.pdf", "crazyones-pdfa.pdf"):
        assert not [w for w in read(text).warnings if w.place == "text"], text
    outline = read("mistitled_outlines_example.pdf").details.outline
    assert outline[:3] == (
        OutlineEntry("First", 2, 0),
        OutlineEntry("Second", 2, 1),
        OutlineEntry("Third", 2, 1),
    )
    assert {entry.depth for entry in outline} == {0, 1, 2}
    assert [page.rotation for page in read("habibi-rotated.pdf").details.pages] == [90, 180, 270, 0]
    assert read("with-attachment.pdf").details.attachments[0].name == "image.png"
    assert read("crazyones-pdfa.pdf").details.has_xmp
    letter = read("pdflatex-forms.pdf").details.pages[0]
    assert (letter.width, letter.height) == (612.0, 792.0)


def _text_reads(data: bytes) -> bool:
    """Whether pypdf reads every page's text, the structure left aside."""
    start = max(data.find(PDF_SIGNATURE, 0, SIGNATURE_WINDOW), 0)
    try:
        reader = PdfReader(io.BytesIO(data[start:]))
        for page in reader.pages:
            page.extract_text()
    except Exception:  # noqa: BLE001 (any failure means the text does not read)
        return False
    return True


@needs_corpus
def test_damaged_files_fail_only_when_their_text_does_not_read() -> None:
    rng = random.Random(18)
    paths = [p for p in malformed_pdfs.corpus_pdfs(CORPUS) if p.stat().st_size < 200_000]
    files = malformed_pdfs.mutated_corpus(paths, rng, 40)
    files += [
        (name, data(), None)
        for name, data in (
            ("wrong-xref-offsets", malformed_pdfs.wrong_xref_offsets),
            ("no-xref", malformed_pdfs.no_xref_at_all),
            ("deep-outline", document_pdfs.deep_outline),
        )
    ]
    for name, data, _ in files:
        if data[:SIGNATURE_WINDOW].find(PDF_SIGNATURE) < 0:
            continue
        try:
            extract_pdf(data, None)
        except Exception as exc:  # noqa: BLE001 (compared with the text alone)
            failed: ErrorCode | None = classify(exc)
        else:
            failed = None
        if failed is not ErrorCode.PDF_ENCRYPTED:
            assert (failed is None) == _text_reads(data), (name, failed)
