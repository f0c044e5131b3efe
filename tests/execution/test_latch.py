"""The latch that marks an attempt's end: waiters before and after it is set pass, and
none passes before; and the attempt's callbacks, let go of once it ended."""

from __future__ import annotations

import gc
import threading
import weakref

from actors.execution.contract import AttemptCallbacks, AttemptFailure, Latch
from actors.policy.catalogue import ErrorCode


def test_a_latch_lets_every_waiter_through_once_set_and_none_before() -> None:
    latch = Latch()
    assert not latch.wait(0.01)
    passed: list[bool] = []
    waiters = [threading.Thread(target=lambda: passed.append(latch.wait(30.0))) for _ in range(3)]
    for waiter in waiters:
        waiter.start()

    latch.set()
    latch.set()  # idempotent
    for waiter in waiters:
        waiter.join()

    assert passed == [True, True, True]
    assert latch.is_set()
    assert latch.wait(0.0), "a waiter after the set passes at once"


class _Owner:
    """What an executor's callbacks typically hold: the actor that holds the attempt."""

    def __init__(self) -> None:
        self.outcomes: list[object] = []
        self.attempt = AttemptCallbacks(self.started, self.outcomes.append)

    def started(self, pid: int | None) -> None:
        self.outcomes.append(("started", pid))


def test_an_attempt_lets_go_of_its_callbacks_once_its_outcome_is_delivered() -> None:
    owner = _Owner()
    outcomes = owner.outcomes
    attempt = owner.attempt
    gone = weakref.ref(owner)
    gc.disable()  # freed by reference counting, or not at all
    try:
        del owner
        assert gone() is not None, "the attempt's callbacks hold their owner until it ends"
        attempt.deliver_started(7)
        attempt.deliver_done(AttemptFailure(ErrorCode.CANCELLED, 7))
        attempt.deliver_started(8)  # after the end: not reported
        assert outcomes == [("started", 7), AttemptFailure(ErrorCode.CANCELLED, 7)]
        assert gone() is None, "an ended attempt kept its owner alive"
    finally:
        gc.enable()
