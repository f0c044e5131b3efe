"""Engineers' logs: one pipeline for structlog and the stdlib, secrets cut out."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from server.service.logs import (
    REDACTED,
    configure_logging,
    redact_credentials_in_text,
    redact_secret_fields,
    reset_logging,
)


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(stream=stream, json=True)
    yield stream
    reset_logging()


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_secret_fields_and_credentials_in_text_are_redacted() -> None:
    processors = [redact_secret_fields, redact_credentials_in_text]
    with capture_logs(processors=processors) as logs:
        structlog.get_logger().info(
            "retry_requested",
            password="hunter2",
            passwords={"f00001": "hunter2"},
            headers={"authorization": "Bearer abc.def"},
            detail="open failed: password=hunter2, token: s3cr3t; Bearer eyJx.y.z end",
            encrypted_with_password=True,
            file_id="f00001",
        )
    (entry,) = logs
    text = json.dumps(entry)
    for secret in ("hunter2", "abc.def", "s3cr3t", "eyJx.y.z"):
        assert secret not in text
    assert entry["password"] == REDACTED
    assert entry["passwords"] == REDACTED
    assert entry["headers"] == {"authorization": REDACTED}
    assert entry["detail"] == (
        f"open failed: password={REDACTED}, token: {REDACTED}; Bearer {REDACTED} end"
    )
    assert entry["encrypted_with_password"] is True, "flags are not secrets"
    assert entry["file_id"] == "f00001"


def test_stdlib_loggers_share_the_pipeline_and_are_redacted(lines: io.StringIO) -> None:
    logging.getLogger("grpc").error("call failed with token=abc123")
    structlog.get_logger("pdfbatch.test").info("batch_submitted", batch_id="b1")
    grpc_line, ours = _records(lines)
    assert grpc_line["logger"] == "grpc"
    assert grpc_line["level"] == "error"
    assert grpc_line["event"] == f"call failed with token={REDACTED}"
    assert ours["event"] == "batch_submitted"
    assert ours["batch_id"] == "b1"
    assert "timestamp" in ours


def test_tracebacks_are_logged_whole_and_redacted(lines: io.StringIO) -> None:
    try:
        raise ValueError("cannot open: password=hunter2")
    except ValueError:
        structlog.get_logger().exception("unexpected_error")
    (record,) = _records(lines)
    assert "Traceback (most recent call last)" in str(record["exception"])
    assert "hunter2" not in json.dumps(record)


def test_pypdf_warnings_are_kept_quiet(lines: io.StringIO) -> None:
    for _ in range(100):
        logging.getLogger("pypdf._reader").warning("fontTools is required")
    logging.getLogger("pypdf").error("a real error")
    assert [r["event"] for r in _records(lines)] == ["a real error"]
