"""Per-tenant quotas: batches in progress and bytes stored.

A tenant may have at most ``max_active_batches`` batches that are not settled, and its
batches may hold at most ``max_stored_bytes`` in all: uploaded files (each batch's
files counted in full, however many batches share a blob, until retention releases
them) and extracted results (until the batch is deleted). Uploads ask before they take
bytes (:meth:`TenantQuotas.admit` when the spec arrives, :meth:`Admission.check` at each
file header) and again when they commit, under the upload lock, so two uploads at once
cannot both take the last room.

An upload that repeats an idempotency key already used is not counted: it creates
nothing, and refusing it would hide the batch it names.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import grpc

from actors.storage.store import Store
from server.wire.errors import WireError

__all__ = ["Admission", "TenantQuotas", "TenantUsage"]

# A batch in progress frees its place when it settles; waiting may help.
_ACTIVE_RETRY_AFTER = 10.0


@dataclass(frozen=True, slots=True)
class TenantUsage:
    """What a tenant holds now."""

    active_batches: int
    stored_bytes: int


@dataclass(frozen=True, slots=True)
class Admission:
    """Room for one upload: the bytes it may add."""

    stored_bytes: int
    max_stored_bytes: int

    @classmethod
    def unlimited(cls) -> Admission:
        """Room for anything (an upload that creates nothing)."""
        return cls(0, sys.maxsize)

    def check(self, incoming: int) -> None:
        """Refuse an upload that would hold ``incoming`` bytes in all.

        Raises:
            WireError: ``RESOURCE_EXHAUSTED``, ``TENANT_STORAGE_FULL``.
        """
        if self.stored_bytes + incoming > self.max_stored_bytes:
            raise WireError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "TENANT_STORAGE_FULL",
                f"Your batches already hold {self.stored_bytes} bytes of uploads and results; "
                f"with this upload they would hold more than the {self.max_stored_bytes} "
                "allowed. Delete batches you no longer need, or upload less.",
                metadata={"maxStoredBytes": str(self.max_stored_bytes)},
            )


class TenantQuotas:
    """Checks uploads against a tenant's quotas.

    Args:
        store: Where the tenant's batches are counted.
        max_active_batches: Batches not yet settled, per tenant.
        max_stored_bytes: Bytes of uploaded files, per tenant.
    """

    def __init__(self, store: Store, *, max_active_batches: int, max_stored_bytes: int) -> None:
        self._store = store
        self._max_active = max_active_batches
        self._max_bytes = max_stored_bytes

    def usage(self, owner: str) -> TenantUsage:
        """What ``owner``'s batches hold now."""
        # One aggregate query: loading every batch made each upload slower than the last.
        active, stored = self._store.tenant_usage(owner)
        return TenantUsage(active, stored)

    def admit(self, owner: str, idempotency_key: str) -> Admission:
        """Let ``owner`` start an upload, if a new batch fits.

        Returns:
            The room the upload has for its bytes.

        Raises:
            WireError: ``RESOURCE_EXHAUSTED``, ``TOO_MANY_ACTIVE_BATCHES`` with
                ``RetryInfo``.
        """
        if idempotency_key and self._store.find_by_idempotency_key(owner, idempotency_key):
            return Admission.unlimited()
        usage = self.usage(owner)
        if usage.active_batches >= self._max_active:
            raise WireError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "TOO_MANY_ACTIVE_BATCHES",
                f"You have {usage.active_batches} batches in progress, the most allowed. Wait "
                "until one settles (or cancel one), then submit again.",
                retry_after=_ACTIVE_RETRY_AFTER,
                metadata={"maxActiveBatches": str(self._max_active)},
            )
        return Admission(usage.stored_bytes, self._max_bytes)
