"""The latch that marks an attempt's end: waiters before and after it is set pass, and
none passes before."""

from __future__ import annotations

import threading

from actors.execution.contract import Latch


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
