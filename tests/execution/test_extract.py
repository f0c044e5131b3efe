"""extract_pdf on PDFs written here with pypdf, on broken bytes and on a real corpus."""

from __future__ import annotations

import contextvars
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pypdf
import pytest
from pypdf import PdfWriter
from pypdf.errors import EmptyFileError, FileNotDecryptedError

from actors.execution.classify import classify
from actors.execution.extract import PdfLimits, configure_pdf_limits, extract_pdf
from actors.policy.catalogue import ErrorCode, NotAPdfError, WrongPasswordError
from actors.policy.model import DocumentInfo
from tests.helpers.writer_pdfs import aes, make_pdf, text_page

CORPUS = Path(os.environ.get("PDFBATCH_CORPUS", "/work/shared/corpus/sample-files"))


def code_of(data: bytes, password: str | None = None) -> ErrorCode:
    with pytest.raises(Exception) as raised:  # noqa: PT011 (the classification is the test)
        extract_pdf(data, password)
    return classify(raised.value)


def test_reads_page_text_and_metadata() -> None:
    data = make_pdf(
        "Hello world",
        metadata={
            "/Title": "A title",
            "/Author": "An author",
            "/Subject": "A subject",
            "/Creator": "A creator",
            "/CreationDate": "D:20240102030405+01'00'",
            "/ModDate": "D:20240203",
        },
    )

    result = extract_pdf(data, None)

    assert result.page_count == 1
    assert result.pages == ("Hello world",)
    assert not result.encrypted
    assert result.info == DocumentInfo(
        title="A title",
        author="An author",
        subject="A subject",
        creator="A creator",
        producer="pypdf",
        creation_date="2024-01-02T03:04:05+01:00",
        modification_date="2024-02-03T00:00:00",
    )
    assert type(result.info.title) is str


def test_reads_every_page_in_order() -> None:
    result = extract_pdf(make_pdf("one", "two", "three"), None)

    assert result.page_count == 3
    assert result.pages == ("one", "two", "three")


def test_garbage_metadata_becomes_none_without_failing_the_file() -> None:
    data = make_pdf("text", metadata={"/Title": "XXXXXXX", "/CreationDate": "yesterday-ish"})
    # Same length, so every byte offset stays right: an array where a string belongs.
    data = data.replace(b"/Title (XXXXXXX)", b"/Title [1 2 3 4]")
    assert b"/Title [1 2 3 4]" in data

    result = extract_pdf(data, None)

    assert result.pages == ("text",)
    assert result.info.title is None
    assert result.info.creation_date is None


def test_file_without_information_dictionary_has_empty_info() -> None:
    writer = PdfWriter()
    text_page(writer, b"BT /F1 12 Tf 20 100 Td (bare) Tj ET")
    writer.metadata = None
    out = io.BytesIO()
    writer.write(out)

    result = extract_pdf(out.getvalue(), None)

    assert result.info == DocumentInfo()


def test_encrypted_file_opens_with_its_user_or_owner_password() -> None:
    data = make_pdf("secret text", encrypt=aes("user-secret"))

    for password in ("user-secret", "owner-secret"):
        result = extract_pdf(data, password)
        assert result.encrypted
        assert result.pages == ("secret text",)


def test_encrypted_file_with_wrong_password_is_refused() -> None:
    data = make_pdf("secret text", encrypt=aes("user-secret"))

    with pytest.raises(WrongPasswordError):
        extract_pdf(data, "guess")
    assert code_of(data, "guess") is ErrorCode.PDF_WRONG_PASSWORD


def test_encrypted_file_without_password_is_refused() -> None:
    data = make_pdf("secret text", encrypt=aes("user-secret"))

    with pytest.raises(FileNotDecryptedError):
        extract_pdf(data, None)
    assert code_of(data) is ErrorCode.PDF_ENCRYPTED


def test_empty_user_password_opens_without_a_password() -> None:
    data = make_pdf("open text", encrypt=aes(""))

    result = extract_pdf(data, None)

    assert result.encrypted
    assert result.pages == ("open text",)


def test_needless_wrong_password_does_not_refuse_a_file_that_opens_without_one() -> None:
    data = make_pdf("open text", encrypt=aes(""))

    assert extract_pdf(data, "anything").pages == ("open text",)


def test_rc4_encryption_opens_with_password() -> None:
    def rc4(writer: PdfWriter) -> None:
        writer.encrypt(user_password="pw", algorithm="RC4-128")

    assert extract_pdf(make_pdf("rc4", encrypt=rc4), "pw").pages == ("rc4",)


def test_empty_bytes_are_pdf_empty() -> None:
    with pytest.raises(EmptyFileError):
        extract_pdf(b"", None)
    assert code_of(b"") is ErrorCode.PDF_EMPTY


@pytest.mark.parametrize(
    "data",
    [b"hello, world", b"\x89PNG\r\n\x1a\n" + bytes(100), b" " * 2000 + b"%PDF-1.7\n"],
    ids=["text", "png", "signature-too-late"],
)
def test_bytes_without_signature_are_not_a_pdf(data: bytes) -> None:
    with pytest.raises(NotAPdfError):
        extract_pdf(data, None)
    assert code_of(data) is ErrorCode.NOT_A_PDF


def test_leading_junk_before_the_signature_is_tolerated() -> None:
    data = b"From: someone\r\n\r\n" + make_pdf("after junk")

    assert extract_pdf(data, None).pages == ("after junk",)


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n" + bytes(range(256)) * 4,
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root",
        make_pdf("cut short")[:300],
    ],
    ids=["garbage-after-header", "truncated-object", "truncated-file"],
)
def test_broken_files_are_malformed(data: bytes) -> None:
    assert code_of(data) is ErrorCode.PDF_MALFORMED


def _in_fresh_context(function: Callable[[], Any]) -> Any:
    # pypdf's configuration is a ContextVar: keep this test's changes to itself.
    return contextvars.Context().run(function)


def test_decompression_past_the_limit_is_limit_exceeded() -> None:
    writer = PdfWriter()
    text_page(writer, b"BT /F1 12 Tf 20 100 Td (bomb) Tj ET\n%" + b" " * 3_000_000 + b"\n")
    out = io.BytesIO()
    writer.write(out)
    limits = PdfLimits(max_decompressed_stream_length=1_000_000)

    def run() -> ErrorCode:
        configure_pdf_limits(limits)
        return code_of(out.getvalue())

    assert len(out.getvalue()) < 10_000
    assert _in_fresh_context(run) is ErrorCode.PDF_LIMIT_EXCEEDED


def test_configure_pdf_limits_sets_pypdf_configuration() -> None:
    limits = PdfLimits(max_declared_stream_length=123, max_page_tree_entries=45)

    def run() -> pypdf.Configuration:
        configure_pdf_limits(limits)
        return pypdf.get_configuration()

    configuration = _in_fresh_context(run)

    assert configuration.maximum_declared_stream_length == 123
    assert configuration.page_tree_maximum_entries == 45
    assert configuration.zlib_maximum_output_length == 50_000_000
    assert configuration.jbig2dec_binary is None
    assert pypdf.get_configuration().maximum_declared_stream_length != 123


def test_default_limits_are_tighter_than_pypdf() -> None:
    ours = PdfLimits().as_pypdf_configuration()
    default = pypdf.Configuration()

    for name, value in ours.items():
        if isinstance(value, int):
            assert value < getattr(default, name), name


@pytest.mark.parametrize("field", ["max_declared_stream_length", "max_page_tree_entries"])
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be positive, got 0$"):
        PdfLimits(**{field: 0})  # type: ignore[arg-type]


def _corpus_files() -> Iterator[Path]:
    if CORPUS.is_dir():
        yield from sorted(CORPUS.rglob("*.pdf"))


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS}")
@pytest.mark.parametrize("path", list(_corpus_files()), ids=lambda p: p.name)
def test_real_file_extracts_or_fails_with_a_catalogue_code(path: Path) -> None:
    def run() -> ErrorCode | None:
        configure_pdf_limits(PdfLimits())
        try:
            result = extract_pdf(path.read_bytes(), None)
        except Exception as exc:  # noqa: BLE001 (classifying it is the point)
            return classify(exc)
        assert result.page_count == len(result.pages) > 0
        return None

    code = _in_fresh_context(run)

    assert code is not ErrorCode.INTERNAL
    if path.name == "libreoffice-writer-password.pdf":
        assert code is ErrorCode.PDF_ENCRYPTED
