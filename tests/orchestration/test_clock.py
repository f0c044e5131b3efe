"""Timers: the fake scheduler for tests and the one-thread real scheduler."""

from __future__ import annotations

import threading

from actors.orchestration.clock import FakeScheduler, ThreadScheduler


def test_fake_timers_fire_in_due_order_only_when_advanced() -> None:
    clock = FakeScheduler(start=100.0)
    fired: list[tuple[str, float]] = []
    clock.call_later(5, lambda: fired.append(("b", clock.now())))
    clock.call_later(2, lambda: fired.append(("a", clock.now())))
    cancelled = clock.call_later(3, lambda: fired.append(("x", clock.now())))
    cancelled.cancel()
    clock.advance(1.9)
    assert fired == []
    clock.advance(10)
    assert fired == [("a", 102.0), ("b", 105.0)]
    assert clock.now() == 111.9
    assert clock.pending() == []


def test_fake_timer_set_by_a_timer_fires_within_the_same_advance() -> None:
    clock = FakeScheduler(start=0.0)
    fired: list[float] = []
    clock.call_later(1, lambda: clock.call_later(1, lambda: fired.append(clock.now())))
    clock.advance(5)
    assert fired == [2.0]


def test_thread_scheduler_runs_callbacks_on_its_thread_and_stops() -> None:
    scheduler = ThreadScheduler()
    done = threading.Event()
    where: list[str] = []

    def callback() -> None:
        where.append(threading.current_thread().name)
        done.set()

    never = scheduler.call_later(3600, lambda: where.append("late"))
    scheduler.call_later(0, callback)
    assert done.wait(5)
    never.cancel()
    scheduler.close()
    assert where == ["pdfbatch-timers"]


def test_thread_scheduler_survives_a_failing_callback() -> None:
    scheduler = ThreadScheduler()
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("bug in a callback")

    scheduler.call_later(0, boom)
    scheduler.call_later(0, done.set)
    assert done.wait(5)
    scheduler.close()
