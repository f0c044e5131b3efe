"""A full disk and a locked database: calls fail retryably, nothing stored is damaged.

Both run the real service in this process on a real SQLite file: the full disk on a
small tmpfs mounted for the test, the lock taken by another connection.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc
import pytest

from actors.policy.book import Changes
from actors.policy.catalogue import StorageUnavailableError
from actors.policy.model import AttemptOutcome, ExtractionResult, FileState
from actors.policy.sealed import SealedResult
from actors.storage import blobs
from actors.storage.sqlite_store import SQLiteStore
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from server.service.app import DATABASE_NAME, Service
from server.service.settings import ServerSettings
from server.wire.errors import status_of
from tests.helpers.blob_checks import stored_blobs
from tests.helpers.crash_fixtures import watch_until
from tests.helpers.crash_processors import SCREENED, script
from tests.helpers.server_fixtures import RichError, refused, upload

WAIT = 30.0
RETRYABLE = {
    (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE"),
    # An upload's bytes that do not fit say so (and when to come back).
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "STORAGE_FULL"),
}


class _Running:
    """An in-process service and a stub to it."""

    def __init__(self, data_dir: Path, store: SQLiteStore | None = None) -> None:
        settings = ServerSettings(
            address="127.0.0.1:0", data_dir=data_dir, workers=2, shutdown_grace=0.0
        )
        self.service = Service(settings, store=store, processor=SCREENED)
        self.service.start()
        self.channel = grpc.insecure_channel(self.service.address)
        self.stub = batch_pb2_grpc.BatchServiceStub(self.channel)

    def submit(self, *commands: bytes, **spec: object) -> str:
        files = [(f"{n}.pdf", script(c)) for n, c in enumerate(commands)]
        batch = self.stub.SubmitBatch(upload(pb.BatchSpec(**spec), files), timeout=WAIT)  # type: ignore[arg-type]
        return str(batch.batch_id)

    def get(self, batch_id: str) -> pb.Batch:
        return self.stub.GetBatch(
            pb.GetBatchRequest(batch_id=batch_id, view=pb.BATCH_VIEW_FULL), timeout=WAIT
        )

    def settle(self, batch_id: str) -> pb.Batch:
        watch_until(self.stub, batch_id, lambda b: b.state in _TERMINAL)
        return self.get(batch_id)

    def close(self) -> None:
        self.channel.close()
        self.service.stop(grace=0)


_TERMINAL = {
    pb.BATCH_STATE_SUCCEEDED,
    pb.BATCH_STATE_PARTIALLY_SUCCEEDED,
    pb.BATCH_STATE_FAILED,
    pb.BATCH_STATE_CANCELLED,
}


@contextlib.contextmanager
def running(data_dir: Path, store: SQLiteStore | None = None) -> Iterator[_Running]:
    server = _Running(data_dir, store)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted after the test; skips where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Take every free block of ``disk``; returns the file that holds them."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def assert_retryable(error: RichError) -> None:
    assert (error.code, error.reason) in RETRYABLE, error
    assert error.retry_delay is not None
    assert error.retry_delay > 0


def assert_intact(database: Path) -> None:
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


def test_a_full_disk_refuses_calls_retryably_and_damages_nothing(small_disk: Path) -> None:
    data = small_disk / "data"
    with running(data) as server:
        done = server.settle(server.submit(b"ok", b"ok"))
        hung = server.submit(b"hang")
        watch_until(server.stub, hung, lambda b: b.files[0].state == pb.FILE_STATE_RUNNING)
        # An empty log must grow for the next commit, which the full disk refuses.
        with sqlite3.connect(data / DATABASE_NAME) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        filler = fill(small_disk)

        assert_retryable(refused(lambda: server.submit(b"ok")))
        cancel = refused(
            lambda: server.stub.CancelBatch(pb.CancelBatchRequest(batch_id=hung), timeout=WAIT)
        )
        assert (cancel.code, cancel.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
        assert cancel.retry_delay is not None
        # Still serving, and what was stored is still there.
        assert server.get(done.batch_id) == done
        assert len(server.stub.ListBatches(pb.ListBatchesRequest(), timeout=WAIT).batches) == 2

        filler.unlink()
        cancelled = server.stub.CancelBatch(pb.CancelBatchRequest(batch_id=hung), timeout=WAIT)
        assert cancelled.state == pb.BATCH_STATE_CANCELLED
        again = server.settle(server.submit(b"ok"))
        assert again.state == pb.BATCH_STATE_SUCCEEDED
        assert not list((data / "blobs").rglob(".incoming-*"))
    assert_intact(data / DATABASE_NAME)
    store = SQLiteStore(data / DATABASE_NAME)
    try:
        assert store.load_result(done.batch_id, "f00001") is not None
        assert len(store.list_batches()) == 3
    finally:
        store.close()


class _ObservedStore(SQLiteStore):
    """Tells the test when a commit fails."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, busy_timeout=0.3)
        self.failed = threading.Event()

    def commit(
        self, changes: Changes, results: Mapping[str, SealedResult | ExtractionResult]
    ) -> None:
        try:
            super().commit(changes, results)
        except StorageUnavailableError:
            self.failed.set()
            raise


def test_a_locked_database_fails_calls_retryably_and_the_batch_recovers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = _ObservedStore(data / DATABASE_NAME)
    try:
        with running(data, store) as server:
            done = server.settle(server.submit(b"ok"))
            batch_id = server.submit(b"sleep:0.3")
            watch_until(server.stub, batch_id, lambda b: b.files[0].state == pb.FILE_STATE_RUNNING)
            lock = sqlite3.connect(data / DATABASE_NAME, isolation_level=None)
            try:
                lock.execute("BEGIN EXCLUSIVE")
                submitted = refused(lambda: server.submit(b"ok"))
                assert (submitted.code, submitted.reason) == (
                    grpc.StatusCode.UNAVAILABLE,
                    "STORAGE_UNAVAILABLE",
                )
                assert submitted.retry_delay is not None
                assert server.get(done.batch_id) == done, "reads go on while the lock is held"
                # The attempt ends; storing its success fails: the supervisor dies.
                assert store.failed.wait(WAIT)
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            # The manager restarts it from the store; it runs the file again.
            recovered = server.settle(batch_id)
            assert recovered.state == pb.BATCH_STATE_SUCCEEDED
            assert len(server.stub.ListBatches(pb.ListBatchesRequest()).batches) == 2
        view = store.load(batch_id)
        assert view is not None
        (file,) = view.files
        assert file.state is FileState.SUCCEEDED
        assert file.round_failures == 0, "an attempt lost to the store is no failure"
        outcomes = [a.outcome for a in file.attempts]
        assert outcomes[-1] is AttemptOutcome.SUCCEEDED
        assert set(outcomes[:-1]) == {AttemptOutcome.INTERRUPTED}
        sequences = [e.sequence for e in store.events_after(batch_id, 0)]
        assert sequences == list(range(1, len(sequences) + 1))
    finally:
        store.close()
    assert_intact(data / DATABASE_NAME)


def test_a_storage_failure_on_the_wire_is_retryable_and_names_no_path() -> None:
    status = status_of(StorageUnavailableError("disk I/O error at /var/lib/pdfbatch/db"))
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "/var/lib" not in str(status)
    assert "STORAGE_UNAVAILABLE" in str(status)


def test_an_upload_whose_bytes_cannot_be_flushed_leaves_no_batch_and_no_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk that fails its flush cannot be made here; the flush is the one call faked.
    def failing_flush(path: Path) -> None:
        raise OSError(errno.EIO, f"injected flush failure under {path}")

    monkeypatch.setattr(blobs, "_sync_file_system", failing_flush)
    with running(tmp_path / "data") as server:
        error = refused(lambda: server.submit(b"ok", b"ok"))
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
        assert str(tmp_path) not in error.message
        listed = server.stub.ListBatches(pb.ListBatchesRequest(), timeout=WAIT)
        assert list(listed.batches) == []
        assert stored_blobs(tmp_path / "data" / "blobs") == []
