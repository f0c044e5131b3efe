"""Caps on the calls that hold a thread for long: one tenant's share, and everyone's.

A ``WatchBatch`` stream or an upload holds one of the service's RPC threads for as long
as it lasts. A tenant within its rate limits could still open enough of them to leave
no thread to anyone else, so each kind of long call has a cap per tenant on top of the
cap for all tenants together. A call takes a :class:`Slot` before it starts its work and
gives it back when it ends, however it ends; a call over either cap is refused at once
with ``RESOURCE_EXHAUSTED``, a ``RetryInfo``, and the setting that sets the cap.

The caps are counters under one lock, not semaphores: a refusal never waits, and a
count can be read (metrics, tests) without taking anything.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from server.wire.errors import WireError

__all__ = ["CallCap", "Slot", "TenantCaps"]


@dataclass(frozen=True, slots=True)
class CallCap:
    """One cap: how many calls, the refusal's reason, and the setting that changes it.

    Attributes:
        limit: Calls allowed at once; ``None`` for no cap.
        reason: The ``ErrorInfo`` reason of a refusal (``TOO_MANY_UPLOADS``...).
        setting: The setting's name (``max_uploads``): the refusal's message names it,
            and its ``ErrorInfo`` metadata gives its value under the lowerCamelCase
            key (``maxUploads``).
        message: What the refusal says, with ``{limit}`` and ``{setting}`` where they go.
    """

    limit: int | None
    reason: str
    setting: str
    message: str

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"{self.setting} must be at least 1")

    def refusal(self, retry_after: float) -> WireError:
        """The error a call over this cap is refused with."""
        return WireError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            self.reason,
            self.message.format(limit=self.limit, setting=self.setting),
            retry_after=retry_after,
            metadata={_camel(self.setting): str(self.limit)},
        )


def _camel(snake: str) -> str:
    """``max_uploads_per_tenant`` -> ``maxUploadsPerTenant``, as metadata keys are."""
    first, *rest = snake.split("_")
    return first + "".join(word.capitalize() for word in rest)


class Slot:
    """A place taken by one call; :meth:`release` gives it back, once, from any thread."""

    __slots__ = ("_lock", "_release")

    def __init__(self, release: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        """Give the place back. Idempotent."""
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class TenantCaps:
    """Counts one kind of long call, per tenant and in all, against their caps.

    Args:
        per_tenant: The cap of each tenant.
        total: The cap of all tenants together. Default: none (another part of the
            service counts them, as the watch hub does its watchers).
        retry_after: Seconds a refused caller is told to wait. Default 5.
    """

    def __init__(
        self,
        per_tenant: CallCap,
        total: CallCap | None = None,
        *,
        retry_after: float = 5.0,
    ) -> None:
        self._per_tenant = per_tenant
        self._total = total
        self._retry_after = retry_after
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()

    def take(self, tenant: str) -> Slot:
        """A place for one call of ``tenant``.

        Raises:
            WireError: ``RESOURCE_EXHAUSTED``: the tenant, or everyone together, holds
                as many such calls as allowed. The tenant's own cap is named first:
                it is the one the caller can do something about.
        """
        with self._lock:
            limit = self._per_tenant.limit
            if limit is not None and self._held[tenant] >= limit:
                raise self._per_tenant.refusal(self._retry_after)
            total = self._total
            everyone = None if total is None else total.limit
            if total is not None and everyone is not None and self._held.total() >= everyone:
                raise total.refusal(self._retry_after)
            self._held[tenant] += 1
        return Slot(lambda: self._give_back(tenant))

    def held(self, tenant: str | None = None) -> int:
        """Calls holding a place now: ``tenant``'s, or everyone's."""
        with self._lock:
            return self._held.total() if tenant is None else self._held[tenant]

    def _give_back(self, tenant: str) -> None:
        with self._lock:
            self._held[tenant] -= 1
            if self._held[tenant] <= 0:
                del self._held[tenant]
