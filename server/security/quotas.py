"""Per-tenant quotas: batches in progress and bytes stored.

A tenant may have at most ``max_active_batches`` batches that are not settled, and its
batches may hold at most ``max_stored_bytes`` in all: uploaded files (each batch's
files counted in full, however many batches share a blob, until retention releases
them) and extracted results (until the batch is deleted). Uploads ask before they take
bytes (:meth:`TenantQuotas.admit` when the spec arrives, :meth:`Admission.reserve` at
each file header, which reserves the bytes the header declares until the upload ends)
and again when they commit, under the upload lock. So uploads side by side cannot
together go past the quota, nor two commits both take the last room.

An upload that repeats an idempotency key already used is not counted: it creates
nothing, and refusing it would hide the batch it names.
"""

from __future__ import annotations

import sys
import threading
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


class _Reservations:
    """Bytes that uploads in progress have declared, per tenant, until they end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: dict[str, dict[int, int]] = {}

    def others(self, owner: str, upload: int) -> int:
        """What ``owner``'s uploads other than ``upload`` hold; call under ``lock``."""
        return sum(size for key, size in self.held.get(owner, {}).items() if key != upload)


class Admission:
    """Room for one upload: the bytes it may add, reserved while it arrives.

    Each file header reserves the bytes it declares (:meth:`reserve`), against what the
    tenant's batches hold and what its other uploads in progress have reserved, so that
    uploads running side by side cannot together go past the quota. :meth:`release`
    gives the reservation back when the upload ends, stored or not.

    Args:
        stored_bytes: What the tenant's batches held when the upload began.
        max_stored_bytes: The tenant's quota.
        owner: The tenant.
        reservations: Shared by every upload of the service. Default: a private one
            (reserves against nobody else).
    """

    def __init__(
        self,
        stored_bytes: int,
        max_stored_bytes: int,
        *,
        owner: str = "",
        reservations: _Reservations | None = None,
    ) -> None:
        self.stored_bytes = stored_bytes
        self.max_stored_bytes = max_stored_bytes
        self._owner = owner
        self._reservations = reservations or _Reservations()

    @classmethod
    def unlimited(cls) -> Admission:
        """Room for anything (an upload that creates nothing)."""
        return cls(0, sys.maxsize)

    @property
    def reserved(self) -> int:
        """The bytes this upload holds reserved."""
        with self._reservations.lock:
            return self._reservations.held.get(self._owner, {}).get(id(self), 0)

    def reserve(self, incoming: int) -> None:
        """Reserve ``incoming`` bytes in all for this upload, if they fit.

        Raises:
            WireError: ``RESOURCE_EXHAUSTED``, ``TENANT_STORAGE_FULL``; the reservation
                stays as it was.
        """
        book = self._reservations
        with book.lock:
            self._check(incoming, book.others(self._owner, id(self)))
            book.held.setdefault(self._owner, {})[id(self)] = incoming

    def check(self, incoming: int, *, besides: Admission | None = None) -> None:
        """Refuse an upload that would hold ``incoming`` bytes in all.

        Args:
            incoming: The upload's bytes.
            besides: The upload's own admission, whose reservation is not counted
                again (a commit checks a fresh admission with what it reserved).

        Raises:
            WireError: ``RESOURCE_EXHAUSTED``, ``TENANT_STORAGE_FULL``.
        """
        book = self._reservations
        with book.lock:
            others = book.others(self._owner, id(besides) if besides is not None else 0)
            self._check(incoming, others)

    def release(self) -> None:
        """Give the reservation back (the upload ended). Idempotent."""
        book = self._reservations
        with book.lock:
            held = book.held.get(self._owner)
            if held is not None:
                held.pop(id(self), None)
                if not held:
                    del book.held[self._owner]

    def _check(self, incoming: int, others: int) -> None:
        if self.stored_bytes + others + incoming <= self.max_stored_bytes:
            return
        held = f"Your batches hold {self.stored_bytes} bytes of uploads and results"
        if others:
            held += f", and your other uploads in progress have reserved {others} more"
        raise WireError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TENANT_STORAGE_FULL",
            f"{held}; this upload's {incoming} declared bytes do not fit in the "
            f"{self.max_stored_bytes} allowed. Delete batches you no longer need, wait for "
            "your uploads to finish, or upload less.",
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
        self._reservations = _Reservations()

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
        return Admission(
            usage.stored_bytes,
            self._max_bytes,
            owner=owner,
            reservations=self._reservations,
        )

    def reserved(self, owner: str) -> int:
        """The bytes ``owner``'s uploads in progress have reserved."""
        with self._reservations.lock:
            return self._reservations.others(owner, 0)
