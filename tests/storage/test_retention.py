"""Retention: ended batches give up their bytes, then their records, on a timer.

Time is a fake clock: a sweep runs when the test moves the clock past its timer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from actors.orchestration.manager import BatchManager, ListSupervisors
from actors.policy.book import BatchBook
from actors.policy.model import BatchRecord, BatchState, BatchView, FileRecord, FileState
from actors.policy.refusals import RetryRefused
from actors.policy.rules import BatchPolicy, RetryPolicy
from actors.storage.blobs import BlobStore
from actors.storage.retention import DAY, RetentionPolicy, collect_garbage, sweep
from actors.storage.sqlite_store import SQLiteStore
from actors.storage.store import MemoryStore
from tests.helpers.harness import Harness, build_harness

POLICY = RetentionPolicy(
    bytes_after_end=7 * DAY, records_after_end=30 * DAY, events_max_age=DAY, sweep_interval=DAY
)
ONCE = BatchPolicy(retry=RetryPolicy(max_attempts=1))


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    try:
        yield from build_harness(tmp_path, store=store, retention=POLICY)
    finally:
        store.close()


def days_pass(h: Harness, days: int) -> None:
    """Move the clock a day at a time; each day's sweep is done before the next day."""
    (manager,) = pykka.ActorRegistry.get_by_class(BatchManager)
    for _ in range(days):
        h.clock.wait_for_timer(DAY, timeout=30)
        h.clock.advance(DAY)
        # Answered after the sweep the timer asked for.
        manager.ask(ListSupervisors())


def test_bytes_go_a_week_after_the_end_records_after_a_month(h: Harness) -> None:
    old = h.runtime.submit(h.files(b"ok", b"pdf-error"), policy=ONCE).batch.batch_id
    old_view = h.settled(old)
    shared, unique = (f.blob for f in old_view.files)
    days_pass(h, 3)
    young = h.runtime.submit(h.files(b"ok"), policy=ONCE).batch.batch_id
    h.settled(young)
    assert h.store.events_after(old, 0) == [], "events older than a day are gone"
    assert h.store.oldest_sequence(old) == old_view.batch.sequence + 1

    days_pass(h, 5)  # day 8: the old batch ended more than a week ago, the young one not

    released = h.store.load(old)
    assert released is not None
    assert released.batch.bytes_released_at is not None
    assert not h.blobs.exists(unique)
    assert h.blobs.exists(shared), "the young batch still refers to it"
    assert h.runtime.result(old, "f00001").pages == ("ok",)
    with pytest.raises(RetryRefused) as refused:
        h.runtime.retry(old)
    assert refused.value.reason == "FILES_EXPIRED"

    days_pass(h, 3)  # day 11: the young batch's week is over too
    assert not h.blobs.exists(shared)
    assert h.store.load(young) is not None

    days_pass(h, 20)  # day 31: the old batch's month is over
    assert h.store.load(old) is None
    assert h.store.load(young) is not None


def test_batches_that_have_not_ended_or_have_a_supervisor_are_left_alone(tmp_path: Path) -> None:
    store = MemoryStore()
    blobs = BlobStore(tmp_path / "blobs")
    for batch_id, state in (("running", BatchState.RUNNING), ("busy", BatchState.FAILED)):
        record = FileRecord("f00001", "a.pdf", blobs.put(batch_id.encode()), 1)
        batch = BatchRecord(batch_id, "", BatchPolicy(), BatchState.PENDING, 0.0, 0.0)
        store.create_batch(BatchView(batch, (record,)))
        book = BatchBook(BatchView(batch, (record,)))
        book.set_batch(BatchState.RUNNING, 0.0)
        if state is BatchState.FAILED:
            book.set_file("f00001", FileState.FAILED, 0.0)
            book.set_batch(BatchState.FAILED, 0.0)
        store.commit(book.take_changes(), {})

    report = sweep(store, blobs, POLICY, now=100 * DAY, busy={"busy"})

    assert (report.bytes_released, report.batches_deleted, report.blobs_removed) == ((), (), 0)
    assert len(list(blobs.digests())) == 2


@pytest.mark.parametrize("inline_max_bytes", [0, 1024], ids=["file", "row"])
def test_blobs_left_without_a_batch_are_collected(tmp_path: Path, inline_max_bytes: int) -> None:
    store = MemoryStore()
    blobs = BlobStore(tmp_path / "blobs", inline_max_bytes=inline_max_bytes)
    orphan = blobs.put(b"uploaded, then the service died before the batch was stored")
    kept = blobs.put(b"%PDF- another, of a stored batch")
    record = FileRecord("f00001", "a.pdf", kept, 1)
    batch = BatchRecord("b1", "", BatchPolicy(), BatchState.PENDING, 0.0, 0.0)
    store.create_batch(BatchView(batch, (record,)))

    assert collect_garbage(store, blobs) == 1
    assert not blobs.exists(orphan)
    assert blobs.exists(kept)
    assert list(blobs.digests()) == [kept]
    blobs.close()


def test_blobs_wait_while_an_upload_holds_the_lock(tmp_path: Path) -> None:
    store = MemoryStore()
    blobs = BlobStore(tmp_path / "blobs")
    orphan = blobs.put(b"bytes an upload is about to refer to")
    with blobs.reference_lock:
        report = sweep(store, blobs, POLICY, now=0.0, lock_timeout=0.01)
    assert report.blobs_removed is None
    assert blobs.exists(orphan)
