"""What users see of a failure is the catalogue's text, never the exception's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from actors.policy.catalogue import CATALOGUE, MAX_USER_MESSAGE_CHARS, ErrorCode, user_text
from actors.policy.model import FileError, FileState
from actors.policy.rules import BatchPolicy, RetryPolicy
from tests.helpers.harness import Harness, build_harness

SECRETS = (
    "/var/lib/pdfbatch/blobs/ab/abcdef",
    "hunter2-password",
    "Bearer eyJhbGciOiJIUzI1NiJ9.secret",
    "db.internal.example.com",
    "Traceback (most recent call last)",
    "tenant-b-invoice.pdf",
)
HOSTILE = " ".join(SECRETS)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from build_harness(tmp_path)


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_shows_its_catalogue_text_only(code: ErrorCode) -> None:
    error = FileError.of(code, 0.0)
    spec = CATALOGUE[code]
    assert error.message == f"{spec.summary} {spec.hint}"
    assert spec.summary.endswith(".")
    assert spec.hint
    assert len(error.message) <= MAX_USER_MESSAGE_CHARS
    assert error.retryable is spec.retryable


@pytest.mark.parametrize("kind", ["PdfReadError", "ValueError", "OSError"])
def test_hostile_exception_texts_reach_the_log_but_never_the_user(h: Harness, kind: str) -> None:
    policy = BatchPolicy(retry=RetryPolicy(max_attempts=1))
    with capture_logs() as logs:
        batch_id = h.runtime.submit(
            h.files(f"raise:{kind}:{HOSTILE}".encode()), policy=policy
        ).batch.batch_id
        view = h.settled(batch_id)
    record = view.files[0]
    assert record.state is FileState.FAILED
    assert record.error is not None
    shown = [record.error.message, view.batch.reason]
    shown += [e.reason for e in h.store.events_after(batch_id, 0)]
    assert not _leaks(" ".join(shown))
    (logged,) = [entry for entry in logs if entry["event"] == "file_attempt_failed"]
    assert HOSTILE in logged["detail"], "engineers get the whole exception text"
    assert logged["batch_id"] == batch_id
    assert logged["file_id"] == record.file_id
    assert logged["attempt"] == 1
    assert logged["code"] == record.error.code.value
    assert logged["exception_type"] == kind
    assert logged["worker_pid"] == record.attempts[0].worker_pid
    assert logged["duration"] >= 0


def test_user_text_is_capped_on_a_character_boundary_and_loses_control_characters() -> None:
    text = "é" * 400
    capped = user_text(text)
    assert len(capped) == MAX_USER_MESSAGE_CHARS
    assert capped.endswith("\u2026")
    assert user_text("a\x00b\x1bc\nd") == "a b c d"
