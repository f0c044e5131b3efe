"""What a batch writes to the log: one line when it settles, a line per failure, no line
per file that succeeded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from actors.policy.model import BatchState
from actors.policy.rules import BatchPolicy, RetryPolicy
from tests.helpers.harness import Harness, build_harness


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from build_harness(tmp_path)


def test_a_batch_logs_one_summary_and_its_failures_not_each_success(h: Harness) -> None:
    policy = BatchPolicy(retry=RetryPolicy(max_attempts=1))
    with capture_logs() as logs:
        batch_id = h.runtime.submit(
            h.files(b"ok", b"ok", b"ok", b"pdf-error"), policy=policy
        ).batch.batch_id
        view = h.settled(batch_id)

    assert view.batch.state is BatchState.PARTIALLY_SUCCEEDED
    mine = [entry for entry in logs if entry.get("batch_id") == batch_id]
    (summary,) = [entry for entry in mine if entry["event"] == "batch_settled"]
    assert summary["log_level"] == "info"
    assert summary["state"] == "PARTIALLY_SUCCEEDED"
    assert (summary["files"], summary["succeeded"], summary["failed"]) == (4, 3, 1)
    assert summary["seconds"] >= 0
    (failure,) = [entry for entry in mine if entry["event"] == "file_attempt_failed"]
    assert failure["code"] == "PDF_MALFORMED"
    # Nothing else at INFO per file: a batch of any size writes the same few lines.
    per_file = [e for e in mine if "file_id" in e and e["event"] != "file_attempt_failed"]
    assert per_file == []
