"""A 10,000-file batch: pending files are records, not threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from actors.orchestration.runtime import NewFile
from actors.policy.model import BatchEvent, BatchState, FileState
from actors.policy.rules import BatchPolicy
from tests.helpers.harness import Harness, build_harness

FILES = 10_000
MAX_CONCURRENCY = 8


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from build_harness(tmp_path)


def test_ten_thousand_files_run_with_a_bounded_thread_count(h: Harness) -> None:
    baseline = threading.active_count()
    peak = baseline

    def sample(_: Sequence[BatchEvent]) -> None:
        nonlocal peak
        peak = max(peak, threading.active_count())

    unsubscribe = h.store.subscribe(sample)
    blob = h.files(b"ok")[0]
    files = [NewFile(name=f"{i}.pdf", blob=blob.blob, size=blob.size) for i in range(FILES)]
    policy = BatchPolicy(max_concurrency=MAX_CONCURRENCY)
    batch_id = h.runtime.submit(files, policy=policy).batch.batch_id
    view = h.settled(batch_id, timeout=300)
    unsubscribe()
    assert view.batch.state is BatchState.SUCCEEDED
    assert view.counts[FileState.SUCCEEDED] == FILES
    # One supervisor and at most MAX_CONCURRENCY file actors, whose threads may live a
    # moment past their slot while they exit; nothing grows with the batch.
    print(f"\npeak threads: {peak} (baseline {baseline}, +{peak - baseline})")
    assert peak - baseline <= 2 * MAX_CONCURRENCY + 2
