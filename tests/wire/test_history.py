"""A file's history shows the changes by state that moved it, though they name no file."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.policy.book import BatchBook
from actors.policy.catalogue import ErrorCode
from actors.policy.model import BatchState, FileError, FileState
from actors.storage.sqlite_store import SQLiteStore
from actors.storage.store import MemoryStore, Store
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.wire import convert
from server.wire.paging import PageTokens, history_page
from tests.helpers.records import new_batch


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    stored = SQLiteStore(tmp_path / "history.db")
    yield stored
    stored.close()


def _moves(store: Store, book: BatchBook, file_id: str, page_size: int) -> list[tuple[int, ...]]:
    """The file's transitions, read through every page of its history."""
    tokens, token, moves = PageTokens.generate(), "", []
    record = book.file(file_id)
    while True:
        page = history_page(
            store,
            book.batch.batch_id,
            file_id,
            page_size,
            token,
            caller=book.batch.owner,
            tokens=tokens,
            current_state=record.state,
        )
        history = convert.history_to_proto(record, page.entries, page.token)
        moves += [
            (e.transition.from_state, e.transition.to_state)
            for e in history.entries
            if e.HasField("transition")
        ]
        token = page.token
        if not token:
            return moves


@pytest.mark.parametrize("page_size", [1, 100])
def test_changes_by_state_appear_in_the_history_of_the_files_they_moved(
    store: Store, page_size: int
) -> None:
    view = new_batch(files=3)
    # The third file has used every manual retry the batch allows: a retry leaves it.
    spent = dataclasses.replace(view.files[2], manual_retries=5)
    view = dataclasses.replace(view, files=(*view.files[:2], spent))
    store.create_batch(view)
    book = BatchBook(view)

    def commit() -> None:
        store.commit(book.take_changes(), {})

    book.set_batch(BatchState.RUNNING, 101.0)
    book.set_batch(BatchState.CANCELLING, 102.0, "stop")
    commit()
    error = FileError.of(ErrorCode.CANCELLED, 102.0)
    book.set_state(FileState.PENDING, FileState.CANCELLED, 102.0, "stop", error=error, count=3)
    book.set_batch(BatchState.CANCELLED, 102.0, "stop")
    commit()
    book.set_state(
        FileState.CANCELLED,
        FileState.PENDING,
        103.0,
        "retried",
        error=None,
        count=2,
        max_manual_retries=5,
    )
    book.set_batch(BatchState.RUNNING, 103.0)
    commit()
    # Only f00001 runs again after the retry; f00002 waits, f00003 was not retried.
    book.set_file("f00001", FileState.RUNNING, 104.0, "attempt 1 started")
    commit()

    cancel = (pb.FILE_STATE_PENDING, pb.FILE_STATE_CANCELLED)
    retry = (pb.FILE_STATE_CANCELLED, pb.FILE_STATE_PENDING)
    start = (pb.FILE_STATE_PENDING, pb.FILE_STATE_RUNNING)
    assert _moves(store, book, "f00001", page_size) == [cancel, retry, start]
    assert _moves(store, book, "f00002", page_size) == [cancel, retry]
    assert _moves(store, book, "f00003", page_size) == [cancel]
