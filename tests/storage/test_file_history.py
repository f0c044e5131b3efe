"""A file's history read in parts: its own events, the bulk changes that name it, and
its owner's requests about its batch, each from where the last part stopped; the same
over the memory store and the SQLite store, whose queries run on indexes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from actors.policy.book import BatchBook
from actors.policy.catalogue import ErrorCode
from actors.policy.model import AuditEntry, BatchState, FileError, FileState
from actors.storage.sqlite_schema import SCHEMA_VERSION, migrate
from actors.storage.sqlite_store import SQLiteStore
from actors.storage.store import Store
from tests.helpers.records import new_batch, succeed


def _audit(store: Store, at: float, action: str, detail: str = "", caller: str = "alice") -> None:
    store.append_audit(AuditEntry(at, f"r{at}", caller, action, "b1", "OK", detail))


@pytest.fixture
def lived(store: Store) -> Store:
    """b1: f00001 succeeded; f00002 and f00003 cancelled together; requests by two
    callers, about one file, another, or the whole batch; a request about b2."""
    store.create_batch(new_batch(files=4))
    store.create_batch(new_batch("b2", files=1))
    book = BatchBook(store.load("b1"))  # type: ignore[arg-type]
    book.set_batch(BatchState.RUNNING, 101.0)
    store.commit(succeed(book, "f00001", 102.0), {})
    error = FileError.of(ErrorCode.CANCELLED, 104.0)
    book.set_files(["f00002", "f00003"], FileState.CANCELLED, 104.0, "client", error=error)
    store.commit(book.take_changes(), {})
    _audit(store, 100.0, "SubmitBatch")
    _audit(store, 105.0, "RetryFiles", "f00002")
    _audit(store, 106.0, "GetBatch", caller="mallory")
    _audit(store, 107.0, "RetryFiles", "f00003,f00004")
    store.append_audit(AuditEntry(108.0, "r108", "alice", "GetBatch", "b2", "OK", ""))
    return store


def _history(store: Store, file_id: str, **given: object) -> tuple[list[int], list[str]]:
    asked: dict[str, object] = {
        "after_sequence": 0,
        "after_request": 0,
        "until_request": None,
        "limit": 10,
    }
    asked.update(given)
    page = store.file_history("b1", file_id, caller="alice", **asked)  # type: ignore[arg-type]
    return [e.sequence for e in page.events], [f"{e.action}@{e.at:g}" for _, e in page.requests]


def test_a_history_has_the_files_own_changes_the_bulk_ones_and_its_requests(lived: Store) -> None:
    own_events, own_requests = _history(lived, "f00001")
    bulk_events, bulk_requests = _history(lived, "f00002")

    assert len(own_events) == 2, "running, then succeeded; not the bulk change"
    assert own_requests == ["SubmitBatch@100"], "requests about the batch, none naming it"
    (bulk,) = bulk_events
    assert bulk > max(own_events)
    assert bulk_requests == ["SubmitBatch@100", "RetryFiles@105"], "not mallory's, not b2's"
    assert _history(lived, "f00004")[1] == ["SubmitBatch@100", "RetryFiles@107"]
    assert _history(lived, "f00003")[1] == ["SubmitBatch@100", "RetryFiles@107"]


def test_each_part_starts_after_the_last_and_stops_at_its_bounds(lived: Store) -> None:
    first, _ = _history(lived, "f00001", limit=1)
    rest, _ = _history(lived, "f00001", after_sequence=first[-1])
    page = lived.file_history(
        "b1",
        "f00004",
        caller="alice",
        after_sequence=0,
        after_request=0,
        until_request=None,
        limit=1,
    )
    (number, _entry), newest = page.requests[0], page.newest_request
    after, _ = lived.file_history(
        "b1",
        "f00004",
        caller="alice",
        after_sequence=0,
        after_request=number,
        until_request=newest,
        limit=10,
    ).requests[0]

    assert len(first) == 1
    assert len(rest) == 1
    assert rest[0] > first[0]
    assert after > number
    _audit(lived, 109.0, "GetFileHistory")
    # Bounded by the newest request when the listing began: its own calls stay out.
    assert _history(lived, "f00004", until_request=newest)[1] == [
        "SubmitBatch@100",
        "RetryFiles@107",
    ]
    assert _history(lived, "f00004")[1][-1] == "GetFileHistory@109"


def test_the_history_queries_run_on_indexes_made_by_their_own_migration(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path, isolation_level=None) as old:
        migrate(old, SCHEMA_VERSION - 1)
    old.close()
    store = SQLiteStore(path)
    store.create_batch(new_batch(files=2))
    store.close()

    with sqlite3.connect(path) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        plans = [
            " ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {query}", params))
            for query, params in (
                (
                    "SELECT payload FROM events WHERE batch_id = ? AND "
                    "json_extract(payload, '$.file.file_id') = ? AND sequence > ? "
                    "ORDER BY sequence LIMIT 5",
                    ("b1", "f00001", 0),
                ),
                (
                    "SELECT payload FROM events WHERE batch_id = ? AND "
                    "json_type(payload, '$.bulk') = 'object' AND sequence > ? "
                    "ORDER BY sequence LIMIT 5",
                    ("b1", 0),
                ),
                (
                    "SELECT id FROM audit WHERE batch_id = ? AND caller = ? AND id > ? "
                    "ORDER BY id LIMIT 5",
                    ("b1", "alice", 0),
                ),
            )
        ]
    db.close()

    assert version == SCHEMA_VERSION
    assert "USING INDEX events_by_file" in plans[0]
    assert "USING INDEX events_in_bulk" in plans[1]
    assert "INDEX audit_by_caller" in plans[2]
    assert all("TEMP B-TREE" not in plan for plan in plans), "no sort of all the rows"


def test_one_file_is_read_alone_with_its_attempts(lived: Store) -> None:
    record = lived.file_record("b1", "f00001")

    assert record is not None
    assert record.state is FileState.SUCCEEDED
    assert len(record.attempts) == 1
    assert lived.file_record("b1", "nope") is None
    assert lived.file_record("nope", "f00001") is None
