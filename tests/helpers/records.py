"""Batch records for store tests: a pending batch, a result, a file run to success."""

from __future__ import annotations

from actors.policy.book import BatchBook, Changes
from actors.policy.model import (
    Attempt,
    BatchRecord,
    BatchState,
    BatchView,
    DocumentInfo,
    ExtractionResult,
    FileRecord,
    FileState,
)
from actors.policy.rules import BatchPolicy

__all__ = ["DIGEST", "OTHER", "new_batch", "result", "started", "succeed"]

DIGEST = "ab" * 32
OTHER = "cd" * 32


def new_batch(batch_id: str = "b1", files: int = 3, blob: str = DIGEST, key: str = "") -> BatchView:
    """A pending batch of ``files`` files sharing one blob."""
    batch = BatchRecord(
        batch_id=batch_id,
        name="name",
        policy=BatchPolicy(max_concurrency=2),
        state=BatchState.PENDING,
        created_at=100.0,
        updated_at=100.0,
        labels={"team": "docs"},
        owner="alice",
        idempotency_key=key,
    )
    records = tuple(
        FileRecord(file_id=f"f{n:05d}", name=f"{n}.pdf", blob=blob, size=10)
        for n in range(1, files + 1)
    )
    return BatchView(batch, records)


def result(*pages: str) -> ExtractionResult:
    """A result of ``pages``."""
    return ExtractionResult(len(pages), False, DocumentInfo(title="t"), pages)


def succeed(book: BatchBook, file_id: str, now: float) -> Changes:
    """Run ``file_id`` to success; the changes of both steps."""
    book.set_file(file_id, FileState.RUNNING, now, attempts=started(book, file_id, now))
    book.set_file(file_id, FileState.SUCCEEDED, now + 1)
    return book.take_changes()


def started(book: BatchBook, file_id: str, now: float) -> tuple[Attempt, ...]:
    """The file's attempts with a new one started at ``now``."""
    record = book.file(file_id)
    return (*record.attempts, Attempt(len(record.attempts) + 1, now))
