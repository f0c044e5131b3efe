"""Per-tenant rate limits: a token bucket per tenant for submissions and for manual retries.

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens a second; each request
takes one. A request that finds the bucket empty is refused with ``RESOURCE_EXHAUSTED``
and a ``RetryInfo`` saying how long until the next token. Refused requests take nothing,
so a client that waits as told always gets through. The clock is injected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from server.wire.errors import WireError

__all__ = ["RateLimiter", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """A token bucket at one moment: a value; :meth:`take` returns the next one.

    Attributes:
        rate: Tokens gained per second.
        burst: Most tokens held.
        tokens: Tokens held at ``updated``.
        updated: When ``tokens`` was counted, in seconds of the limiter's clock.

    Raises:
        ValueError: ``rate`` not positive, ``burst`` below 1, or ``tokens`` outside
            ``[0, burst]``.
    """

    rate: float
    burst: int
    tokens: float
    updated: float

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")
        if not 0 <= self.tokens <= self.burst:
            raise ValueError(f"tokens must be within [0, {self.burst}], got {self.tokens}")

    @classmethod
    def full(cls, rate: float, burst: int, now: float) -> TokenBucket:
        """A bucket holding ``burst`` tokens at ``now``."""
        return cls(rate, burst, float(burst), now)

    def take(self, now: float) -> tuple[TokenBucket, float]:
        """Take one token at ``now``.

        Returns:
            The bucket afterwards, and 0.0 if a token was taken, else the seconds until
            one will be there (the bucket is then unchanged but for the refill).
        """
        elapsed = max(0.0, now - self.updated)
        tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        if tokens >= 1.0:
            return TokenBucket(self.rate, self.burst, tokens - 1.0, now), 0.0
        return TokenBucket(self.rate, self.burst, tokens, now), (1.0 - tokens) / self.rate


# Keys kept at most before full buckets (which hold no news) are forgotten: peers, unlike
# tenants, are as many as callers make up.
_MAX_KEYS = 10_000


class RateLimiter:
    """One bucket per tenant for one kind of request.

    Args:
        what: What is limited, for messages (``"submissions"``).
        reason: ``ErrorInfo`` reason of a refusal (``"SUBMISSION_RATE_EXCEEDED"``).
        rate: Requests per second a tenant may make in the long run.
        burst: Requests a tenant may make at once after a quiet spell.
        clock: Monotonic seconds. Default ``time.monotonic``.

    Raises:
        ValueError: ``rate`` not positive or ``burst`` below 1.
    """

    def __init__(
        self,
        what: str,
        reason: str,
        *,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        TokenBucket.full(rate, burst, 0.0)  # validates
        self._what = what
        self._reason = reason
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, TokenBucket] = {}

    def acquire(self, tenant: str) -> None:
        """Take one of ``tenant``'s tokens.

        Raises:
            WireError: ``RESOURCE_EXHAUSTED`` with ``RetryInfo``: none is left.
        """
        with self._lock:
            now = self._clock()
            if len(self._buckets) >= _MAX_KEYS and tenant not in self._buckets:
                self._forget_full(now)
            bucket = self._buckets.get(tenant) or TokenBucket.full(self._rate, self._burst, now)
            self._buckets[tenant], wait = bucket.take(now)
        if wait > 0:
            raise WireError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                self._reason,
                f"Too many {self._what}: at most {self._burst} at once and {self._rate:g} per "
                f"second after that. Try again in {wait:.3g} s.",
                retry_after=wait,
                metadata={"ratePerSecond": f"{self._rate:g}", "burst": str(self._burst)},
            )

    def _forget_full(self, now: float) -> None:
        """Drop every bucket that has refilled: a new one would be the same."""
        for key, bucket in list(self._buckets.items()):
            refilled = bucket.tokens + max(0.0, now - bucket.updated) * bucket.rate
            if refilled >= bucket.burst:
                del self._buckets[key]
