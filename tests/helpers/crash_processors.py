"""The scripted processor behind the service's screening, for the crash tests."""

from __future__ import annotations

from actors.policy.model import ExtractionResult
from tests.helpers.processors import scripted

SCREENED = "tests.helpers.crash_processors:screened"
SIGNATURE = b"%PDF-"


def script(command: bytes) -> bytes:
    """Bytes that pass the screening for PDFs and then run ``command`` as scripted."""
    return SIGNATURE + command


def screened(data: bytes, password: str | None, attempt: int) -> ExtractionResult:
    """:func:`tests.helpers.processors.scripted`, for bytes made by :func:`script`."""
    return scripted(data.removeprefix(SIGNATURE), password, attempt)
