"""The SQLite store on real database files: transactions, migrations, threads, history."""

from __future__ import annotations

import errno
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from actors.policy.book import BatchBook
from actors.policy.catalogue import ErrorCode, StorageUnavailableError
from actors.policy.model import (
    AttemptOutcome,
    BatchEvent,
    BatchState,
    BulkChange,
    DocumentInfo,
    ExtractionResult,
    FileError,
    FileState,
)
from actors.policy.results import TEXT_PIECE_CHARS
from actors.policy.rules import BatchPolicy
from actors.storage.sqlite_schema import SCHEMA_VERSION, SchemaTooNewError, migrate
from actors.storage.sqlite_store import SQLiteStore
from actors.storage.store import MemoryStore, Store
from tests.helpers.records import DIGEST, OTHER, new_batch, result, started, succeed


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "db.sqlite3", busy_timeout=0.2)
    yield opened
    opened.close()


def test_a_batch_commits_and_loads_with_its_events_and_results(store: SQLiteStore) -> None:
    store.create_batch(new_batch())
    book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
    book.set_batch(BatchState.RUNNING, 101.0)
    changes = succeed(book, "f00002", 102.0)

    store.commit(changes, {"f00002": result("one", "two")})

    assert store.load("b1") == book.view()
    assert [e.sequence for e in store.events_after("b1", 0)] == [1, 2, 3]
    assert store.events_after("b1", 1) == list(changes.events[1:])
    assert store.load_result("b1", "f00002") == result("one", "two")
    assert store.load_result("b1", "f00001") is None
    assert store.oldest_sequence("b1") == 1
    assert [b.batch_id for b in store.list_batches()] == ["b1"]
    for suffix in ("", "-wal"):
        mode = Path(f"{store.path}{suffix}").stat().st_mode & 0o777
        assert mode == 0o600, "the documents' text is for the service's user only"


def test_listeners_hear_of_a_commits_events_together_once_they_are_committed(
    store: SQLiteStore, tmp_path: Path
) -> None:
    store.create_batch(new_batch())
    heard: list[tuple[list[int], int]] = []

    def on_commit(events: Sequence[BatchEvent]) -> None:
        # Another connection, as another process would read: the change is there.
        with sqlite3.connect(tmp_path / "db.sqlite3") as other:
            (stored,) = other.execute("SELECT sequence FROM batches").fetchone()
        other.close()
        heard.append(([event.sequence for event in events], stored))

    unsubscribe = store.subscribe(on_commit)
    book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
    book.set_batch(BatchState.RUNNING, 101.0)
    book.set_file("f00001", FileState.RUNNING, 101.5)
    book.set_file("f00002", FileState.RUNNING, 101.5)
    store.commit(book.take_changes(), {})
    store.commit(book.take_changes(), {})  # no events: nothing to hear
    unsubscribe()
    book.set_batch(BatchState.CANCELLING, 102.0)
    store.commit(book.take_changes(), {})

    assert heard == [([1, 2, 3], 3)]


class _PagesThatBreak(tuple[str, ...]):
    """Pages whose reading fails, as a disk failing halfway through a commit would."""

    def __iter__(self) -> Iterator[str]:
        raise OSError(errno.EIO, "injected I/O error")


def test_a_commit_that_fails_halfway_stores_nothing(store: SQLiteStore) -> None:
    store.create_batch(new_batch())
    before = store.load("b1")
    book = BatchBook(before)  # type: ignore[arg-type]
    book.set_batch(BatchState.RUNNING, 101.0)
    changes = succeed(book, "f00001", 102.0)
    broken = ExtractionResult(2, False, DocumentInfo(), _PagesThatBreak(("a", "b")))

    with pytest.raises(StorageUnavailableError):
        store.commit(changes, {"f00001": broken})

    assert store.load("b1") == before
    assert store.events_after("b1", 0) == []
    assert store.load_result("b1", "f00001") is None
    # The same changes commit once the failure is gone.
    store.commit(changes, {"f00001": result("a", "b")})
    assert store.load("b1") == book.view()


def test_a_commit_that_runs_out_of_room_stores_nothing(store: SQLiteStore) -> None:
    store.create_batch(new_batch())
    before = store.load("b1")
    book = BatchBook(before)  # type: ignore[arg-type]
    changes = succeed(book, "f00001", 102.0)
    # A limit on the writer's connection: a disk that fills up in the middle of a commit.
    with store._db.write() as writer:
        (pages,) = writer.execute("PRAGMA page_count").fetchone()
        writer.execute(f"PRAGMA max_page_count = {pages + 2}")

    with pytest.raises(StorageUnavailableError, match="full"):
        store.commit(changes, {"f00001": result("x" * 100_000)})

    assert store.load("b1") == before
    assert store.events_after("b1", 0) == []
    _assert_intact(store.path)


def _three_succeeded(store: SQLiteStore) -> BatchBook:
    """A book of batch b1 whose three files ran to success, not stored yet."""
    store.create_batch(new_batch(files=3))
    book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
    book.set_batch(BatchState.RUNNING, 101.0)
    for file_id in ("f00001", "f00002", "f00003"):
        (attempt,) = book.set_file(
            file_id, FileState.RUNNING, 102.0, attempts=started(book, file_id, 102.0)
        ).attempts
        ended = attempt.ended(103.0, AttemptOutcome.SUCCEEDED, worker_pid=7)
        book.set_file(file_id, FileState.SUCCEEDED, 103.0, attempts=(ended,))
    return book


def test_a_group_commit_stores_each_files_result_with_its_own_text(store: SQLiteStore) -> None:
    book = _three_succeeded(store)
    results = {
        "f00001": result("one"),
        # A page longer than a piece is stored in two.
        "f00002": result("a" * TEXT_PIECE_CHARS + "b", "two"),
        "f00003": result("", "three", "3"),
    }

    store.commit(book.take_changes(), results)

    for file_id, expected in results.items():
        assert store.load_result("b1", file_id) == expected
    assert [number for number, _ in store.result_text("b1", "f00002")] == [1, 1, 2]


def test_unset_values_are_null_and_states_and_codes_their_text(
    store: SQLiteStore, tmp_path: Path
) -> None:
    book = _three_succeeded(store)
    book.set_batch(BatchState.SUCCEEDED, 104.0)
    store.commit(book.take_changes(), {})

    # Read as another program would, with types.
    with sqlite3.connect(tmp_path / "db.sqlite3") as other:
        file = other.execute(
            "SELECT state, typeof(state), next_attempt_at, error FROM files WHERE file_id = ?",
            ("f00001",),
        ).fetchone()
        attempt = other.execute(
            "SELECT outcome, code, typeof(code), worker_pid, retry_delay FROM attempts"
        ).fetchone()
        (batch_state,) = other.execute("SELECT state FROM batches").fetchone()
    other.close()

    assert file == ("SUCCEEDED", "text", None, None)
    assert attempt == ("SUCCEEDED", None, "null", 7, None)
    assert batch_state == "SUCCEEDED"


def test_a_group_commit_that_runs_out_of_room_stores_no_result(store: SQLiteStore) -> None:
    book = _three_succeeded(store)
    before = store.load("b1")
    with store._db.write() as writer:
        (pages,) = writer.execute("PRAGMA page_count").fetchone()
        writer.execute(f"PRAGMA max_page_count = {pages + 4}")
    # The results' rows fit, the last file's text does not.
    results = {"f00001": result("a"), "f00002": result("b"), "f00003": result("x" * 100_000)}

    with pytest.raises(StorageUnavailableError, match="full"):
        store.commit(book.take_changes(), results)

    assert all(store.result_summary("b1", file_id) is None for file_id in results)
    assert store.load("b1") == before
    assert store.events_after("b1", 0) == []


def test_a_locked_database_fails_writes_retryably_and_keeps_serving_reads(
    store: SQLiteStore,
) -> None:
    store.create_batch(new_batch())
    book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
    book.set_batch(BatchState.RUNNING, 101.0)
    changes = book.take_changes()
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StorageUnavailableError, match="locked"):
            store.commit(changes, {})
        with pytest.raises(StorageUnavailableError, match="locked"):
            store.create_batch(new_batch("b2"))
        # A write-ahead log lets readers read while another connection writes.
        assert store.load("b1").batch.state is BatchState.PENDING  # type: ignore[union-attr]
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.commit(changes, {})
    assert store.load("b1").batch.state is BatchState.RUNNING  # type: ignore[union-attr]
    assert store.load("b2") is None


def test_changes_that_do_not_follow_the_stored_sequence_are_refused(store: SQLiteStore) -> None:
    store.create_batch(new_batch())
    view = store.load("b1")
    assert view is not None
    first, second = BatchBook(view), BatchBook(view)
    first.set_batch(BatchState.RUNNING, 101.0)
    store.commit(first.take_changes(), {})
    second.set_batch(BatchState.CANCELLED, 101.0)

    with pytest.raises(ValueError, match="follow event 0, but event 1"):
        store.commit(second.take_changes(), {})
    with pytest.raises(KeyError):
        store.commit(BatchBook(new_batch("ghost")).take_changes(), {})
    assert [e.batch_state for e in store.events_after("b1", 0)] == [BatchState.RUNNING]


def test_deleting_a_batch_removes_everything_it_had(store: SQLiteStore) -> None:
    store.create_batch(new_batch(key="k1"))
    book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
    store.commit(succeed(book, "f00001", 101.0), {"f00001": result("p")})

    store.delete_batch("b1")

    assert store.load("b1") is None
    assert store.oldest_sequence("b1") is None
    assert store.events_after("b1", 0) == []
    assert store.load_result("b1", "f00001") is None
    assert store.find_by_idempotency_key("alice", "k1") is None
    assert not store.blob_in_use(DIGEST)
    with sqlite3.connect(store.path) as db:
        for table in ("files", "attempts", "events", "results", "result_text"):
            assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,), table
    db.close()


def test_idempotency_keys_and_duplicate_ids(store: SQLiteStore) -> None:
    store.create_batch(new_batch("b1", key="k1"))
    assert store.find_by_idempotency_key("alice", "k1") == "b1"
    assert store.find_by_idempotency_key("bob", "k1") is None
    with pytest.raises(ValueError, match="exists"):
        store.create_batch(new_batch("b1"))


def test_released_bytes_no_longer_hold_a_blob(store: SQLiteStore) -> None:
    store.create_batch(new_batch("b1", blob=DIGEST))
    store.create_batch(new_batch("b2", blob=OTHER))
    assert not store.release_bytes("b1", 200.0), "a batch that has not ended keeps its bytes"
    book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
    book.set_batch(BatchState.CANCELLED, 150.0)
    store.commit(book.take_changes(), {})

    assert store.release_bytes("b1", 200.0)
    assert not store.release_bytes("b1", 300.0)
    assert not store.blob_in_use(DIGEST)
    assert store.blob_in_use(OTHER)
    assert store.load("b1").batch.bytes_released_at == 200.0  # type: ignore[union-attr]
    # A writer's copy of the batch does not bring the bytes back.
    book.set_batch(BatchState.RUNNING, 250.0)
    store.commit(book.take_changes(), {})
    assert store.load("b1").batch.bytes_released_at == 200.0  # type: ignore[union-attr]


def _run_events(store: SQLiteStore, count: int, at: float = 100.0) -> None:
    store.create_batch(new_batch(files=count))
    book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
    book.set_batch(BatchState.RUNNING, at)
    for n in range(1, count + 1):
        book.set_file(f"f{n:05d}", FileState.CANCELLED, at + n)
        store.commit(book.take_changes(), {})


def test_a_bounded_history_keeps_the_newest_events_and_knows_its_oldest(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3", max_events_per_batch=3)
    try:
        _run_events(store, 5)
        assert [e.sequence for e in store.events_after("b1", 0)] == [4, 5, 6]
        assert store.oldest_sequence("b1") == 4
    finally:
        store.close()


def test_events_pruned_by_age_leave_a_contiguous_history(store: SQLiteStore) -> None:
    _run_events(store, 5)  # events at 100 (batch), 101..105 (files)

    assert store.prune_events(before=103.0) == 3
    assert [e.sequence for e in store.events_after("b1", 0)] == [4, 5, 6]
    assert store.oldest_sequence("b1") == 4
    assert store.prune_events(before=1e9) == 3
    assert store.events_after("b1", 0) == []
    assert store.oldest_sequence("b1") == 7, "with nothing kept, the next event is the oldest"


def test_an_older_schema_is_migrated_at_open_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    with sqlite3.connect(path, isolation_level=None) as old:
        migrate(old, target=1)
        old.execute(
            "INSERT INTO batches VALUES ('b1', 'n', ?, 'RUNNING', 1.0, 2.0, 0, '', '{}', 'o', '')",
            (BatchPolicy().model_dump_json(),),
        )
        old.execute(
            "INSERT INTO files VALUES ('b1', 0, 'f00001', 'a.pdf', ?, 3, 'PENDING', 0, 0, "
            "NULL, NULL, 0)",
            (DIGEST,),
        )
    old.close()

    store = SQLiteStore(path)
    try:
        view = store.load("b1")
        assert view is not None
        assert view.batch.bytes_released_at is None
        assert view.files[0].blob == DIGEST
        assert store.blob_in_use(DIGEST)
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    db.close()


def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaTooNewError, match="knows up to"):
        SQLiteStore(path)


def test_a_closed_store_refuses_calls(store: SQLiteStore) -> None:
    store.close()
    store.close()
    with pytest.raises(StorageUnavailableError, match="closed"):
        store.load("b1")
    with pytest.raises(StorageUnavailableError, match="closed"):
        store.create_batch(new_batch())


def test_many_threads_commit_and_read_at_once(store: SQLiteStore) -> None:
    writers, commits = 8, 60
    for w in range(writers):
        store.create_batch(new_batch(f"b{w}", files=commits))
    failures: list[BaseException] = []
    done = threading.Event()

    def write(batch_id: str) -> None:
        try:
            book = BatchBook(store.load(batch_id))  # type: ignore[arg-type]
            book.set_batch(BatchState.RUNNING, 100.0)
            for n in range(1, commits + 1):
                file_id = f"f{n:05d}"
                store.commit(succeed(book, file_id, 100.0 + n), {file_id: result(file_id)})
        except BaseException as exc:  # noqa: BLE001 - the main thread reports it
            failures.append(exc)

    def read() -> None:
        try:
            while not done.is_set():
                for w in range(writers):
                    view = store.load(f"b{w}")
                    assert view is not None
                    sequences = [e.sequence for e in store.events_after(f"b{w}", 0)]
                    # Read after the view: never shorter than it, and never with a gap.
                    assert sequences == list(range(1, len(sequences) + 1))
                    assert len(sequences) >= view.batch.sequence
        except BaseException as exc:  # noqa: BLE001 - the main thread reports it
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(f"b{w}",)) for w in range(writers)]
    readers = [threading.Thread(target=read) for _ in range(4)]
    for thread in [*threads, *readers]:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    for thread in readers:
        thread.join()

    assert failures == []
    for w in range(writers):
        view = store.load(f"b{w}")
        assert view is not None
        assert view.counts[FileState.SUCCEEDED] == commits
        sequences = [e.sequence for e in store.events_after(f"b{w}", 0)]
        assert sequences == list(range(1, 2 * commits + 2))
        assert store.load_result(f"b{w}", f"f{commits:05d}") == result(f"f{commits:05d}")


def _assert_intact(path: Path) -> None:
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_bulk_change_updates_every_file_it_names_and_yields_to_newer_records(
    tmp_path: Path, kind: str
) -> None:
    opened: Store = SQLiteStore(tmp_path / "db.sqlite3") if kind == "sqlite" else MemoryStore()
    opened.create_batch(new_batch(files=4))
    book = BatchBook(opened.load("b1"))  # type: ignore[arg-type]
    book.set_batch(BatchState.RUNNING, 101.0)
    book.set_file("f00002", FileState.RUNNING, 101.0, attempts=started(book, "f00002", 101.0))
    book.set_file("f00002", FileState.BACKOFF, 102.0, next_attempt_at=110.0)
    opened.commit(book.take_changes(), {})
    book.set_file("f00003", FileState.RUNNING, 103.0, attempts=started(book, "f00003", 103.0))
    error = FileError.of(ErrorCode.CANCELLED, 104.0)
    book.set_files(["f00001", "f00002", "f00004"], FileState.CANCELLED, 104.0, "gone", error=error)
    # f00004 moves again in the same commit: its own record is the newer one.
    book.set_file("f00004", FileState.PENDING, 105.0, error=None)
    opened.commit(book.take_changes(), {})
    stored = opened.load("b1")
    assert stored is not None
    assert stored.files == book.view().files
    assert [f.state for f in stored.files] == [
        FileState.CANCELLED,
        FileState.CANCELLED,
        FileState.RUNNING,
        FileState.PENDING,
    ]
    assert stored.files[1].next_attempt_at is None
    assert stored.files[1].error == error
    assert len(stored.files[1].attempts) == 1, "a bulk change leaves the attempts alone"
    (bulk,) = [e for e in opened.events_after("b1", 0) if e.bulk is not None]
    assert bulk.bulk == BulkChange(("f00001", "f00002", "f00004"), FileState.CANCELLED, error)
    if isinstance(opened, SQLiteStore):
        opened.close()
