"""A file's history shows the changes by state that moved it, though they name no file."""

from __future__ import annotations

from actors.policy.book import BatchBook
from actors.policy.catalogue import ErrorCode
from actors.policy.model import BatchState, FileError, FileState
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.wire import convert
from tests.helpers.records import new_batch


def test_changes_by_state_appear_in_the_history_of_the_files_they_moved() -> None:
    book = BatchBook(new_batch(files=2))
    book.set_batch(BatchState.RUNNING, 101.0)
    book.set_batch(BatchState.CANCELLING, 102.0, "stop")
    error = FileError.of(ErrorCode.CANCELLED, 102.0)
    book.set_state(FileState.PENDING, FileState.CANCELLED, 102.0, "stop", error=error, count=2)
    book.set_batch(BatchState.CANCELLED, 102.0, "stop")
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
    # Only f00001 is seen to run again after the retry.
    book.set_file("f00001", FileState.RUNNING, 104.0, "attempt 1 started")
    events = book.take_changes().events

    first = convert.history_to_proto(book.file("f00001"), events, [])
    second = convert.history_to_proto(book.file("f00002"), events, [])

    def moves(history: pb.FileHistory) -> list[tuple[int, int, str]]:
        return [
            (e.transition.from_state, e.transition.to_state, e.transition.reason)
            for e in history.entries
        ]

    assert moves(first) == [
        (pb.FILE_STATE_PENDING, pb.FILE_STATE_CANCELLED, "stop"),
        (pb.FILE_STATE_CANCELLED, pb.FILE_STATE_PENDING, "retried"),
        (pb.FILE_STATE_PENDING, pb.FILE_STATE_RUNNING, "attempt 1 started"),
    ]
    # Nothing shows f00002 was retried (it might have had no retries left): only the
    # cancel, which moved every waiting file, is certain.
    assert moves(second) == [(pb.FILE_STATE_PENDING, pb.FILE_STATE_CANCELLED, "stop")]
