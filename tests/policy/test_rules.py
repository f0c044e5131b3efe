"""Retry, restart-intensity and failure-tolerance policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from actors.policy.catalogue import CATALOGUE, ErrorCode
from actors.policy.rules import (
    BatchPolicy,
    FailureThreshold,
    GiveUp,
    GiveUpReason,
    RestartIntensity,
    RestartWindow,
    RetryAfter,
    RetryPolicy,
    decide_after_failure,
)

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 100),
    initial_backoff=st.floats(0.001, 100),
    max_backoff=st.floats(100, 86_400),
    multiplier=st.floats(1.0, 100),
    jitter=st.sampled_from(["full", "none"]),
)


def test_defaults_are_the_documented_ones() -> None:
    policy = BatchPolicy()
    assert policy.retry == RetryPolicy(
        max_attempts=3, initial_backoff=1.0, max_backoff=60.0, multiplier=2.0, jitter="full"
    )
    assert policy.max_manual_retries == 5
    assert policy.tolerated_failures == FailureThreshold()


def test_backoff_caps_grow_exponentially_up_to_the_maximum() -> None:
    policy = RetryPolicy(initial_backoff=1, max_backoff=10, multiplier=3)
    assert [policy.backoff_cap(n) for n in range(1, 6)] == [1, 3, 9, 10, 10]


def test_full_jitter_draws_between_zero_and_the_cap() -> None:
    policy = RetryPolicy(initial_backoff=2, max_backoff=60, multiplier=2)
    assert policy.restart_delay(3, lambda: 0.25) == pytest.approx(2.0)  # 0.25 * 8
    assert policy.restart_delay(1, lambda: 0.0) == 0.0


def test_no_jitter_waits_the_cap() -> None:
    policy = RetryPolicy(initial_backoff=2, max_backoff=5, multiplier=2, jitter="none")
    assert policy.restart_delay(2, lambda: 0.9) == 4
    assert policy.restart_delay(9, lambda: 0.9) == 5


@given(policies, st.integers(1, 10_000), st.floats(0, 1, exclude_max=True))
def test_delay_never_exceeds_max_backoff(policy: RetryPolicy, failures: int, r: float) -> None:
    delay = policy.restart_delay(failures, lambda: r)
    assert 0 <= delay <= policy.max_backoff
    assert delay <= policy.backoff_cap(failures)


@given(policies, st.integers(1, 200))
def test_caps_never_shrink(policy: RetryPolicy, failures: int) -> None:
    assert policy.backoff_cap(failures) <= policy.backoff_cap(failures + 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts\n  Input should be greater than or equal to 1"),
        ({"initial_backoff": 0}, "initial_backoff\n  Input should be greater than 0"),
        ({"multiplier": 0.5}, "multiplier\n  Input should be greater than or equal to 1"),
        (
            {"initial_backoff": 10, "max_backoff": 5},
            "Value error, max_backoff must be at least initial_backoff",
        ),
        ({"jitter": "half"}, "jitter\n  Input should be 'full' or 'none'"),
        ({"unknown": 1}, "unknown\n  Extra inputs are not permitted"),
    ],
)
def test_invalid_retry_policy_is_refused_with_a_clear_message(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_policies_are_frozen() -> None:
    with pytest.raises(ValidationError):
        BatchPolicy().max_concurrency = 9  # type: ignore[misc]


def test_permanent_codes_give_up_at_once() -> None:
    permanent = [code for code, spec in CATALOGUE.items() if not spec.retryable]
    assert ErrorCode.PDF_ENCRYPTED in permanent
    for code in permanent:
        decision, window = decide_after_failure(
            BatchPolicy(), code, 1, RestartWindow(), 0.0, lambda: 0.5
        )
        assert decision == GiveUp(GiveUpReason.NOT_RETRYABLE)
        assert window == RestartWindow()


def test_extra_non_retryable_codes_are_honoured() -> None:
    policy = BatchPolicy(retry=RetryPolicy(non_retryable_codes={ErrorCode.WORKER_CRASHED}))
    decision, _ = decide_after_failure(
        policy, ErrorCode.WORKER_CRASHED, 1, RestartWindow(), 0.0, lambda: 0.5
    )
    assert decision == GiveUp(GiveUpReason.NOT_RETRYABLE)


def test_retryable_failure_retries_until_attempts_run_out() -> None:
    policy = BatchPolicy(retry=RetryPolicy(max_attempts=3, initial_backoff=1, jitter="none"))
    delays = []
    window = RestartWindow()
    for failures in (1, 2, 3):
        decision, window = decide_after_failure(
            policy, ErrorCode.WORKER_CRASHED, failures, window, 0.0, lambda: 0.5
        )
        delays.append(decision)
    assert delays == [RetryAfter(1.0), RetryAfter(2.0), GiveUp(GiveUpReason.ATTEMPTS_EXHAUSTED)]


def test_restart_intensity_trips_when_restarts_cluster() -> None:
    policy = BatchPolicy(
        retry=RetryPolicy(max_attempts=10),
        restart_intensity=RestartIntensity(max_restarts=2, within_seconds=10),
    )
    window = RestartWindow()
    outcomes = []
    for now in (0.0, 1.0, 2.0):
        decision, window = decide_after_failure(
            policy, ErrorCode.WORKER_CRASHED, 1, window, now, lambda: 0.5
        )
        outcomes.append(type(decision))
    assert outcomes == [RetryAfter, RetryAfter, GiveUp]


def test_restarts_outside_the_window_are_forgotten() -> None:
    intensity = RestartIntensity(max_restarts=2, within_seconds=10)
    window = RestartWindow().record(0, intensity).record(5, intensity)
    window = window.record(10.5, intensity)
    assert window.times == (5, 10.5)
    assert not window.exceeded(intensity)


@pytest.mark.parametrize(
    ("threshold", "failed", "total", "exceeded"),
    [
        (FailureThreshold(), 100, 100, False),
        (FailureThreshold(max_failed_files=2), 2, 10, False),
        (FailureThreshold(max_failed_files=2), 3, 10, True),
        (FailureThreshold(max_failed_percent=20), 2, 10, False),
        (FailureThreshold(max_failed_percent=20), 3, 10, True),
        (FailureThreshold(max_failed_files=0), 1, 1000, True),
        (FailureThreshold(max_failed_files=50, max_failed_percent=1), 11, 1000, True),
    ],
)
def test_failure_threshold(
    threshold: FailureThreshold, failed: int, total: int, exceeded: bool
) -> None:
    assert threshold.exceeded(failed, total) is exceeded
