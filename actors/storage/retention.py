"""Retention: how long what a batch leaves behind is kept, and the sweep that removes it.

A terminal batch keeps its uploaded bytes for ``bytes_after_end`` (its files can be
retried until then), its records and results until ``DeleteBatch`` or
``records_after_end``, and events for ``WatchBatch`` resumes for ``events_max_age``.
Blobs are shared between batches, so a blob is removed only once no batch whose bytes
are kept refers to it; the same pass removes blobs a crash left without any batch.

The batch manager runs :func:`sweep` on a timer, so that no supervisor starts for a
batch while the sweep decides about it.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import structlog
from pydantic import BaseModel, ConfigDict, Field

from actors.policy.model import BatchState
from actors.storage.blobs import BlobStore
from actors.storage.store import Store

__all__ = ["RetentionPolicy", "SweepReport", "collect_garbage", "sweep"]

log = structlog.get_logger(__name__)

_ENDED = frozenset(state for state in BatchState if state.terminal)

DAY = 86_400.0


class RetentionPolicy(BaseModel):
    """How long a batch's bytes, records and events are kept once it has ended.

    A batch ends when it becomes terminal; a retry starts the clock again.

    Attributes:
        bytes_after_end: Seconds the uploaded bytes are kept, so that files can be
            retried. Default 7 days.
        records_after_end: Seconds the batch record, files and results are kept, then
            deleted as ``DeleteBatch`` would. Default ``None``: until ``DeleteBatch``.
        events_max_age: Seconds an event is kept for ``WatchBatch`` resumes. Default 7
            days; ``None`` keeps events as long as their batch.
        sweep_interval: Seconds between two sweeps. Default 1 hour.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bytes_after_end: float = Field(default=7 * DAY, ge=0)
    records_after_end: float | None = Field(default=None, ge=0)
    events_max_age: float | None = Field(default=7 * DAY, ge=0)
    sweep_interval: float = Field(default=3600.0, gt=0)


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep removed.

    Attributes:
        bytes_released: Batches whose uploaded bytes were released.
        batches_deleted: Batches deleted whole.
        events_pruned: Events forgotten for age.
        blobs_removed: Blob files deleted; ``None`` when uploads kept the blob lock
            busy and deleting waits for the next sweep.
    """

    bytes_released: tuple[str, ...] = ()
    batches_deleted: tuple[str, ...] = ()
    events_pruned: int = 0
    blobs_removed: int | None = 0


def sweep(
    store: Store,
    blobs: BlobStore,
    policy: RetentionPolicy,
    now: float,
    *,
    busy: Collection[str] = (),
    lock_timeout: float = 1.0,
) -> SweepReport:
    """Remove what ``policy`` no longer keeps, as of ``now``.

    Args:
        store: The batches.
        blobs: Their uploaded bytes.
        policy: What is kept, and how long.
        now: The current time on the batches' clock.
        busy: Batches with a live supervisor, left alone this time.
        lock_timeout: Seconds to wait for the blob lock before leaving the deleting
            of blobs to the next sweep. Default 1.

    Raises:
        StorageUnavailableError: The store failed; what was done so far stays done,
            and the next sweep carries on.
    """
    released: list[str] = []
    deleted: list[str] = []
    # Only batches that ended long enough ago, from an index: a sweep's cost follows
    # what it removes, not what is stored.
    oldest_kept = min(
        policy.bytes_after_end,
        policy.records_after_end if policy.records_after_end is not None else math.inf,
    )
    for batch in store.batches_in(_ENDED, updated_by=now - oldest_kept):
        if batch.batch_id in busy:
            continue
        age = now - batch.updated_at
        if policy.records_after_end is not None and age >= policy.records_after_end:
            store.delete_batch(batch.batch_id)
            deleted.append(batch.batch_id)
        elif (
            batch.bytes_released_at is None
            and age >= policy.bytes_after_end
            and store.release_bytes(batch.batch_id, now)
        ):
            released.append(batch.batch_id)
    pruned = 0
    if policy.events_max_age is not None:
        pruned = store.prune_events(now - policy.events_max_age)
    removed = collect_garbage(store, blobs, lock_timeout=lock_timeout)
    report = SweepReport(tuple(released), tuple(deleted), pruned, removed)
    log.info(
        "retention_swept",
        bytes_released=len(released),
        batches_deleted=len(deleted),
        events_pruned=pruned,
        blobs_removed=removed,
    )
    return report


def collect_garbage(store: Store, blobs: BlobStore, *, lock_timeout: float = 1.0) -> int | None:
    """Delete every blob that no batch whose bytes are kept refers to.

    The candidates are found without the blob lock, then checked again and deleted
    holding it, so uploads wait only for the deleting.

    Returns:
        How many blobs were deleted; ``None`` if the lock stayed busy for
        ``lock_timeout`` seconds (nothing was deleted).

    Raises:
        StorageUnavailableError: The store failed.
    """
    candidates = [digest for digest in blobs.digests() if not store.blob_in_use(digest)]
    if not candidates:
        return 0
    if not blobs.reference_lock.acquire(timeout=lock_timeout):
        log.info("blob_collection_postponed", candidates=len(candidates))
        return None
    try:
        removed = 0
        for digest in candidates:
            if not store.blob_in_use(digest):
                blobs.delete(digest)
                removed += 1
        if removed:
            blobs.scrub()
        return removed
    finally:
        blobs.reference_lock.release()
