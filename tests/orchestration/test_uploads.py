"""Runtime.open_upload: a batch stored and processed as its files arrive, seen and settled
only once it ends; dropped with the blobs only it used, and its started work cancelled,
when it does not end, by its caller or by the next start. Over the memory store and the
SQLite store, with real worker processes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.orchestration.runtime import NewFile
from actors.policy.model import BatchRecord, BatchState, FileRecord, FileState
from actors.policy.refusals import BatchNotFound, InvalidRequest
from actors.policy.rules import BatchPolicy, FailureThreshold
from actors.storage.sqlite_store import SQLiteStore
from actors.storage.store import MemoryStore, Store
from tests.helpers.harness import Harness, build_harness


@pytest.fixture(params=["memory", "sqlite"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    store: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "db")
    try:
        yield from build_harness(tmp_path, store=store)
    finally:
        if isinstance(store, SQLiteStore):
            store.close()


def _file(h: Harness, name: str, data: bytes, password: str | None = None) -> NewFile:
    return NewFile(name, h.blobs.put(data), len(data), password)


def test_an_upload_is_seen_and_settled_only_once_it_finishes(h: Harness) -> None:
    upload = h.runtime.open_upload(name="streamed", owner="alice", idempotency_key="k")
    upload.add([_file(h, "a.pdf", b"ok:a"), _file(h, "b.pdf", b"ok:b", password="pw")])
    upload.add([_file(h, "c.pdf", b"ok:c")])

    with pytest.raises(BatchNotFound):
        h.runtime.get(upload.batch_id)
    assert h.runtime.resume() == [], "an upload in progress is no batch to resume"
    assert h.store.uploads_in_progress() == [upload.batch_id]

    ended = upload.finish()

    assert (ended.batch_id, ended.created, ended.same_files) == (upload.batch_id, True, True)
    view = h.settled(upload.batch_id)
    assert view.batch.state is BatchState.SUCCEEDED
    assert view.batch.name == "streamed"
    assert [(f.file_id, f.name) for f in view.files] == [
        ("f00001", "a.pdf"),
        ("f00002", "b.pdf"),
        ("f00003", "c.pdf"),
    ]
    assert [f.encrypted_with_password for f in view.files] == [False, True, False]
    assert h.store.find_by_idempotency_key("alice", "k") == upload.batch_id
    upload.abort()
    assert h.runtime.get(upload.batch_id).batch.state is BatchState.SUCCEEDED, "abort after end"


def test_an_aborted_upload_takes_only_the_blobs_nobody_else_uses(h: Harness) -> None:
    shared = _file(h, "shared.pdf", b"ok:shared")
    kept = h.runtime.submit([shared])
    upload = h.runtime.open_upload()
    own = _file(h, "own.pdf", b"ok:own")
    upload.add([shared, own])

    upload.abort()
    upload.abort()

    assert h.store.uploads_in_progress() == []
    assert not h.blobs.exists(own.blob)
    assert h.blobs.exists(shared.blob)
    with pytest.raises(ValueError, match="ended"):
        upload.add([own])
    with pytest.raises(ValueError, match="ended"):
        upload.finish()
    assert h.settled(kept.batch.batch_id).batch.state is BatchState.SUCCEEDED


def test_an_upload_without_files_cannot_finish(h: Harness) -> None:
    upload = h.runtime.open_upload()
    with pytest.raises(InvalidRequest, match="at least one file"):
        upload.finish()
    with pytest.raises(InvalidRequest, match="path"):
        upload.add([_file(h, "a/b.pdf", b"ok")])
    upload.abort()
    assert h.store.uploads_in_progress() == []


@pytest.mark.parametrize("same", [True, False], ids=["same-files", "other-files"])
def test_a_repeated_key_is_compared_with_a_batch_stored_without_a_digest(
    h: Harness, same: bool
) -> None:
    # Runtime.submit stores no digest of the files: they are read back in pages.
    files = [_file(h, f"{n}.pdf", b"ok:%d" % n) for n in range(3)]
    first = h.runtime.submit(files, owner="alice", idempotency_key="k")
    upload = h.runtime.open_upload(owner="alice", idempotency_key="k")
    upload.add(files[:2])
    upload.add(files[2:] if same else [_file(h, "2.pdf", b"ok:other")])

    ended = upload.finish()

    assert (ended.batch_id, ended.created, ended.same_files) == (
        first.batch.batch_id,
        False,
        same,
    )
    assert h.store.uploads_in_progress() == [upload.batch_id], "left for the caller to drop"
    upload.abort()
    assert h.store.uploads_in_progress() == []
    h.settled(first.batch.batch_id)


def test_the_next_start_drops_the_uploads_a_crash_left_and_no_other(h: Harness) -> None:
    # An upload of an earlier life of the service: stored, never ended.
    left = BatchRecord("left", "", BatchPolicy(), BatchState.PENDING, 1.0, 1.0)
    h.store.begin_upload(left)
    orphan = h.blobs.put(b"ok:orphan")
    h.store.add_upload_files("left", 0, [FileRecord("f00001", "o.pdf", orphan, 9)])
    # Placed by that upload, and the crash came before the row that refers to it.
    unreferenced = h.blobs.put(b"ok:placed, never stored")
    # One of this life, still arriving.
    mine = h.runtime.open_upload()
    mine.add([_file(h, "m.pdf", b"ok:mine")])

    h.runtime.resume()

    assert h.store.uploads_in_progress() == [mine.batch_id]
    assert not h.blobs.exists(orphan)
    assert not h.blobs.exists(unreferenced)
    view = h.settled(mine.finish().batch_id)
    assert [f.state for f in view.files] == [FileState.SUCCEEDED]


def _files_of(h: Harness, batch_id: str) -> dict[str, FileRecord]:
    """An upload's files as its supervisor reads them (every other reader sees none)."""
    page = h.store.file_page(batch_id, states=(), after_position=-1, limit=100, uploading=True)
    assert page is not None
    return {record.file_id: record for _, record in page.files}


def _until(h: Harness, batch_id: str, condition: Callable[[dict[str, FileRecord]], bool]) -> None:
    """Wait, woken by every commit, until the upload's files satisfy ``condition``."""
    changed = threading.Condition()

    def woken(_: object) -> None:
        with changed:
            changed.notify_all()

    unsubscribe = h.store.subscribe(woken)
    try:
        with changed:
            reached = changed.wait_for(lambda: condition(_files_of(h, batch_id)), 30.0)
    finally:
        unsubscribe()
    assert reached, _files_of(h, batch_id)


def _state(file_id: str, state: FileState) -> Callable[[dict[str, FileRecord]], bool]:
    return lambda files: file_id in files and files[file_id].state is state


def test_the_files_of_an_upload_are_processed_as_they_arrive(h: Harness) -> None:
    upload = h.runtime.open_upload(name="early")
    upload.add([_file(h, "a.pdf", b"ok:a")])

    _until(h, upload.batch_id, _state("f00001", FileState.SUCCEEDED))

    # Every file it holds ended, yet it is hidden and does not settle before its end.
    with pytest.raises(BatchNotFound):
        h.runtime.get(upload.batch_id)
    arriving = h.store.batch_summary(upload.batch_id, uploading=True)
    assert arriving is not None
    assert arriving.batch.state is BatchState.RUNNING
    assert arriving.counts[FileState.SUCCEEDED] == 1
    upload.add([_file(h, "b.pdf", b"ok:b")])
    view = h.settled(upload.finish().batch_id)
    assert view.batch.state is BatchState.SUCCEEDED
    assert view.counts[FileState.SUCCEEDED] == 2
    assert view.batch.name == "early"


def test_an_upload_dropped_while_its_files_run_leaves_nothing_running(h: Harness) -> None:
    upload = h.runtime.open_upload()
    done = _file(h, "done.pdf", b"ok:done")
    hung = _file(h, "hung.pdf", b"hang")
    upload.add([done, hung])
    _until(h, upload.batch_id, _state("f00001", FileState.SUCCEEDED))
    _until(h, upload.batch_id, _state("f00002", FileState.RUNNING))

    upload.abort()

    assert h.store.uploads_in_progress() == []
    assert not h.blobs.exists(done.blob)
    assert not h.blobs.exists(hung.blob)
    assert h.pool.stats().busy == 0, "the hung attempt was cancelled and waited for"
    assert h.pool.stats().queued == 0
    assert h.runtime.resume() == []


def test_a_fail_fast_during_an_upload_cancels_the_files_still_to_come(h: Harness) -> None:
    policy = BatchPolicy(tolerated_failures=FailureThreshold(max_failed_files=0))
    upload = h.runtime.open_upload(policy=policy)
    upload.add([_file(h, "bad.pdf", b"pdf-error")])
    _until(h, upload.batch_id, _state("f00001", FileState.FAILED))

    upload.add([_file(h, "late.pdf", b"ok:late")])

    assert _files_of(h, upload.batch_id)["f00002"].state is FileState.CANCELLED
    view = h.settled(upload.finish().batch_id)
    assert view.batch.state is BatchState.FAILED
    assert (view.counts[FileState.FAILED], view.counts[FileState.CANCELLED]) == (1, 1)


def test_a_share_of_failures_tolerated_is_judged_at_the_end_of_the_upload(h: Harness) -> None:
    policy = BatchPolicy(tolerated_failures=FailureThreshold(max_failed_percent=50))
    upload = h.runtime.open_upload(policy=policy)
    upload.add([_file(h, "bad.pdf", b"pdf-error")])
    # One of one failed: more than half, but the batch is not whole yet.
    _until(h, upload.batch_id, _state("f00001", FileState.FAILED))
    upload.add([_file(h, f"{n}.pdf", b"ok:%d" % n) for n in range(3)])

    view = h.settled(upload.finish().batch_id)

    assert view.batch.state is not BatchState.FAILED, view.batch.reason
    assert view.counts[FileState.SUCCEEDED] == 3


def test_an_upload_whose_key_was_taken_at_its_end_stops_what_it_started(h: Harness) -> None:
    upload = h.runtime.open_upload(owner="alice", idempotency_key="k")
    hung = _file(h, "hung.pdf", b"hang")
    upload.add([hung])
    _until(h, upload.batch_id, _state("f00001", FileState.RUNNING))
    first = h.runtime.submit(
        [_file(h, "first.pdf", b"ok:first")], owner="alice", idempotency_key="k"
    )

    ended = upload.finish()

    assert (ended.batch_id, ended.created) == (first.batch.batch_id, False)
    upload.abort()
    assert h.store.uploads_in_progress() == []
    assert not h.blobs.exists(hung.blob)
    h.settled(first.batch.batch_id)
    assert h.pool.stats().busy == 0
