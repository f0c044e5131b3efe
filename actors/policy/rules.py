"""Retry, restart-intensity and failure-tolerance policy: pure values and functions.

Nothing here has a clock or a random source of its own; callers pass ``now`` and a
``rand`` function returning a float in ``[0, 1)`` so that tests can check exact delays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.policy.catalogue import ErrorCode, spec_for
from actors.policy.document import ExtractionMode

__all__ = [
    "MAX_WRONG_PASSWORDS",
    "BatchPolicy",
    "FailureThreshold",
    "GiveUp",
    "GiveUpReason",
    "RestartIntensity",
    "RestartWindow",
    "RetryAfter",
    "RetryPolicy",
    "decide_after_failure",
    "password_guesses_exhausted",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class RetryPolicy(BaseModel):
    """Automatic retries of one file, with capped exponential backoff.

    The delay before attempt ``n + 1`` (after ``n`` failures) is drawn uniformly from
    ``[0, min(max_backoff, initial_backoff * multiplier ** (n - 1))]`` with full jitter,
    or is exactly that cap with ``jitter="none"``. Unlike Akka's random factor, the
    jitter never pushes a delay past ``max_backoff``.

    Attributes:
        max_attempts: Attempts per file in one round, first one included. Default 3.
        initial_backoff: Cap of the first delay, in seconds. Default 1.0.
        max_backoff: Upper bound of any delay, in seconds. Default 60.0.
        multiplier: Growth of the cap per failure. Default 2.0.
        jitter: ``"full"`` (default) or ``"none"``.
        non_retryable_codes: Codes to treat as permanent on top of the catalogue's.
    """

    model_config = _FROZEN

    max_attempts: int = Field(default=3, ge=1, le=100)
    initial_backoff: float = Field(default=1.0, gt=0, le=3600)
    max_backoff: float = Field(default=60.0, gt=0, le=86_400)
    multiplier: float = Field(default=2.0, ge=1.0, le=100)
    jitter: Literal["full", "none"] = "full"
    non_retryable_codes: frozenset[ErrorCode] = frozenset()

    @model_validator(mode="after")
    def _cap_not_below_start(self) -> Self:
        if self.max_backoff < self.initial_backoff:
            raise ValueError("max_backoff must be at least initial_backoff")
        return self

    def is_retryable(self, code: ErrorCode) -> bool:
        """Whether a failure with ``code`` may be retried under this policy."""
        return spec_for(code).retryable and code not in self.non_retryable_codes

    def backoff_cap(self, failures: int) -> float:
        """The largest delay allowed after ``failures`` failures (``failures >= 1``)."""
        if failures < 1:
            raise ValueError("failures must be at least 1")
        # Grow step by step and stop at the cap, so a large exponent never overflows.
        cap = self.initial_backoff
        for _ in range(failures - 1):
            cap *= self.multiplier
            if cap >= self.max_backoff:
                return self.max_backoff
        return min(cap, self.max_backoff)

    def restart_delay(self, failures: int, rand: Callable[[], float]) -> float:
        """The delay before the next attempt after ``failures`` failures.

        Args:
            failures: Failures so far in this round, at least 1.
            rand: Returns a float in ``[0, 1)``; used only with full jitter.
        """
        cap = self.backoff_cap(failures)
        if self.jitter == "none":
            return cap
        return rand() * cap


class FailureThreshold(BaseModel):
    """How many failed files a batch tolerates before it fails fast.

    Each limit is optional; a batch fails fast as soon as either is exceeded. With both
    unset (the default) every file is tried and the batch ends in partial success.

    Attributes:
        max_failed_files: Failed files tolerated; one more fails the batch.
        max_failed_percent: Failed share of all files tolerated, in percent.
    """

    model_config = _FROZEN

    max_failed_files: int | None = Field(default=None, ge=0)
    max_failed_percent: float | None = Field(default=None, ge=0, le=100)

    def exceeded(self, failed: int, total: int) -> bool:
        """Whether ``failed`` of ``total`` files is more than this threshold tolerates."""
        if self.max_failed_files is not None and failed > self.max_failed_files:
            return True
        return (
            self.max_failed_percent is not None and failed * 100 > self.max_failed_percent * total
        )


class RestartIntensity(BaseModel):
    """At most ``max_restarts`` automatic restarts within ``within_seconds``.

    As with Erlang/OTP's intensity and period: more restarts than that in the window
    means the failures are systemic (a crashing pool, a broken disk), and restarting
    more would only burn every file's budget.

    Attributes:
        max_restarts: Restarts allowed in the window. Default 50.
        within_seconds: Length of the sliding window. Default 60.0.
    """

    model_config = _FROZEN

    max_restarts: int = Field(default=50, ge=0)
    within_seconds: float = Field(default=60.0, gt=0)


class BatchPolicy(BaseModel):
    """Everything that governs one batch.

    Attributes:
        retry: Per-file automatic retries.
        max_concurrency: Files of this batch running at once. Default 4.
        file_timeout: Wall-clock seconds one attempt may take. Default 300.
        tolerated_failures: Fail-fast threshold. Default: tolerate any number.
        restart_intensity: Limit on automatic restarts across the batch.
        max_manual_retries: Manual retries allowed per file. Default 5.
        extraction_mode: How pages' text is put together: ``PLAIN`` reading order
            (default) or ``LAYOUT``, laid out as on the page.
    """

    model_config = _FROZEN

    retry: RetryPolicy = RetryPolicy()
    max_concurrency: int = Field(default=4, ge=1, le=1024)
    file_timeout: float = Field(default=300.0, gt=0, le=86_400)
    tolerated_failures: FailureThreshold = FailureThreshold()
    restart_intensity: RestartIntensity = RestartIntensity()
    max_manual_retries: int = Field(default=5, ge=0, le=1000)
    extraction_mode: ExtractionMode = ExtractionMode.PLAIN


@dataclass(frozen=True, slots=True)
class RestartWindow:
    """The times of recent automatic restarts, oldest first."""

    times: tuple[float, ...] = ()

    def record(self, now: float, intensity: RestartIntensity) -> RestartWindow:
        """Add a restart at ``now`` and forget those that left the window."""
        horizon = now - intensity.within_seconds
        return RestartWindow((*(t for t in self.times if t > horizon), now))

    def exceeded(self, intensity: RestartIntensity) -> bool:
        """Whether the restarts in the window are more than the intensity allows."""
        return len(self.times) > intensity.max_restarts


class GiveUpReason(StrEnum):
    """Why a failed file is not retried automatically."""

    NOT_RETRYABLE = "NOT_RETRYABLE"
    ATTEMPTS_EXHAUSTED = "ATTEMPTS_EXHAUSTED"
    RESTART_INTENSITY_EXCEEDED = "RESTART_INTENSITY_EXCEEDED"


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """Retry the file after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Fail the file for ``reason``."""

    reason: GiveUpReason


def decide_after_failure(  # noqa: PLR0917 - a pure function of six plain inputs
    policy: BatchPolicy,
    code: ErrorCode,
    failures: int,
    window: RestartWindow,
    now: float,
    rand: Callable[[], float],
) -> tuple[RetryAfter | GiveUp, RestartWindow]:
    """Decide what happens to a file whose attempt just failed.

    Args:
        policy: The batch's policy.
        code: The failure's catalogue code.
        failures: Failures of this file in the current round, this one included.
        window: The batch's recent restarts.
        now: The current time, in seconds on the batch's clock.
        rand: Uniform ``[0, 1)`` source for jitter.

    Returns:
        The decision and the restart window to keep (updated when a restart is made).
    """
    if not policy.retry.is_retryable(code):
        return GiveUp(GiveUpReason.NOT_RETRYABLE), window
    if failures >= policy.retry.max_attempts:
        return GiveUp(GiveUpReason.ATTEMPTS_EXHAUSTED), window
    updated = window.record(now, policy.restart_intensity)
    if updated.exceeded(policy.restart_intensity):
        return GiveUp(GiveUpReason.RESTART_INTENSITY_EXCEEDED), updated
    return RetryAfter(policy.retry.restart_delay(failures, rand)), updated


MAX_WRONG_PASSWORDS = 3
"""Attempts with a wrong password one file may have over its life; then it is not retried.

Not part of :class:`BatchPolicy` on purpose: the submitter, who may be the one guessing,
chooses the batch's policy.
"""


def password_guesses_exhausted(codes: Iterable[ErrorCode | None]) -> bool:
    """Whether attempts that ended with ``codes`` used up the file's password guesses."""
    wrong = sum(code is ErrorCode.PDF_WRONG_PASSWORD for code in codes)
    return wrong >= MAX_WRONG_PASSWORDS
