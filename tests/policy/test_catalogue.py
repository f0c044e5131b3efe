"""The error catalogue and the classifier."""

from __future__ import annotations

import pytest
from pypdf import errors as pdf_errors
from pypdf.generic import IndirectObject

from actors.execution.classify import classify
from actors.policy.catalogue import (
    CATALOGUE,
    MAX_USER_MESSAGE_CHARS,
    ErrorCode,
    NotAPdfError,
    StorageUnavailableError,
    WrongPasswordError,
)


def test_every_code_has_a_catalogue_entry() -> None:
    assert set(CATALOGUE) == set(ErrorCode)
    for code, spec in CATALOGUE.items():
        assert spec.code is code
        assert spec.message
        assert spec.doc
        assert len(spec.message) <= MAX_USER_MESSAGE_CHARS


def test_passing_reasons_are_retryable_and_file_faults_are_not() -> None:
    retryable = {code for code, spec in CATALOGUE.items() if spec.retryable}
    assert retryable == {
        ErrorCode.PROCESSING_TIMEOUT,
        ErrorCode.WORKER_CRASHED,
        ErrorCode.STORAGE_UNAVAILABLE,
    }


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - the point is to capture a traceback
        return caught


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotAPdfError("x"), ErrorCode.NOT_A_PDF),
        (pdf_errors.EmptyFileError("x"), ErrorCode.PDF_EMPTY),
        (pdf_errors.PdfReadError("EOF marker not found"), ErrorCode.PDF_MALFORMED),
        (pdf_errors.PdfStreamError("x"), ErrorCode.PDF_MALFORMED),
        (pdf_errors.FileNotDecryptedError("x"), ErrorCode.PDF_ENCRYPTED),
        (pdf_errors.WrongPasswordError("x"), ErrorCode.PDF_WRONG_PASSWORD),
        (WrongPasswordError("x"), ErrorCode.PDF_WRONG_PASSWORD),
        (pdf_errors.DeprecationError("LZW removed"), ErrorCode.PDF_UNSUPPORTED_FEATURE),
        (pdf_errors.DependencyError("x"), ErrorCode.PDF_UNSUPPORTED_FEATURE),
        (NotImplementedError("filter"), ErrorCode.PDF_UNSUPPORTED_FEATURE),
        (pdf_errors.LimitReachedError("x"), ErrorCode.PDF_LIMIT_EXCEEDED),
        (RecursionError(), ErrorCode.PDF_LIMIT_EXCEEDED),
        (MemoryError(), ErrorCode.MEMORY_LIMIT_EXCEEDED),
        (FileNotFoundError("/data/blobs/ab/abcd"), ErrorCode.STORAGE_UNAVAILABLE),
        (StorageUnavailableError(), ErrorCode.STORAGE_UNAVAILABLE),
        (KeyError("raised here, not in pypdf"), ErrorCode.INTERNAL),
    ],
)
def test_classify(exc: BaseException, code: ErrorCode) -> None:
    assert classify(_raised(exc)) is code


def test_plain_exception_from_inside_pypdf_is_damage_in_the_file() -> None:
    # A reference whose document is missing: pypdf fails with a bare AttributeError.
    with pytest.raises(AttributeError) as caught:
        IndirectObject(1, 0, None).get_object()  # type: ignore[arg-type]
    assert classify(caught.value) is ErrorCode.PDF_MALFORMED
