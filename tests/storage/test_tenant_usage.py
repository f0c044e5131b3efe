"""A tenant's usage is one aggregate read, in both stores."""

from __future__ import annotations

from actors.policy.book import BatchBook
from actors.policy.model import BatchRecord, BatchState, BatchView, FileRecord, FileState
from actors.policy.rules import BatchPolicy
from actors.storage.store import Store


def _batch(store: Store, batch_id: str, owner: str, sizes: tuple[int, ...]) -> BatchView:
    record = BatchRecord(batch_id, "", BatchPolicy(), BatchState.PENDING, 1.0, 1.0, owner=owner)
    files = tuple(
        FileRecord(f"f{i}", f"{i}.pdf", f"{i:064x}", size) for i, size in enumerate(sizes)
    )
    view = BatchView(record, files)
    store.create_batch(view)
    return view


def test_usage_counts_unsettled_batches_and_bytes_still_held(store: Store) -> None:
    _batch(store, "a", "alice", (10, 20))
    settled = _batch(store, "b", "alice", (5,))
    _batch(store, "c", "bob", (1000,))
    book = BatchBook(settled)
    book.set_batch(BatchState.RUNNING, 2.0)
    book.set_file("f0", FileState.RUNNING, 2.0)
    book.set_file("f0", FileState.FAILED, 3.0)
    book.set_batch(BatchState.FAILED, 3.0)
    store.commit(book.take_changes(), {})
    assert store.tenant_usage("alice") == (1, 35)
    assert store.release_bytes("b", 4.0)
    assert store.tenant_usage("alice") == (1, 30)
    assert store.tenant_usage("bob") == (1, 1000)
    assert store.tenant_usage("nobody") == (0, 0)
