"""Dispatched actors: pykka actors that share a dispatcher's few threads."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
from pykka._envelope import Envelope

from actors.orchestration.clock import FakeScheduler
from actors.orchestration.dispatch import DispatchedActor, Dispatcher, HoldingInbox
from tests.helpers.processes import eventually


class Recorder(DispatchedActor):
    """Notes what it handles and on which thread; fails on request."""

    def __init__(self, dispatcher: Dispatcher, log: list[Any], gate: threading.Event) -> None:
        super().__init__(dispatcher)
        self.log = log
        self.gate = gate
        self.busy = False
        self.stopped = False
        self.failed: BaseException | None = None

    def on_receive(self, message: Any) -> Any:
        assert not self.busy, "two threads ran one actor at once"
        self.busy = True
        try:
            match message:
                case ("wait", name):
                    assert self.gate.wait(10)
                    self.log.append(name)
                case ("raise", text):
                    raise ValueError(text)
                case ("echo", value):
                    return (value, threading.current_thread().name)
                case "yourself":
                    return self
                case ("where", name):
                    self.log.append((name, threading.current_thread().name))
                case name:
                    self.log.append(name)
            return None
        finally:
            self.busy = False

    def on_stop(self) -> None:
        self.log.append(("stopped", self.actor_urn))

    def on_failure(self, *exc_info: Any) -> None:
        self.log.append(("failed", str(exc_info[1])))


class FailsToStart(DispatchedActor):
    def on_start(self) -> None:
        raise RuntimeError("no start")


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    d = Dispatcher(threads=2, name="test-dispatch")
    yield d
    d.close()


def test_each_actor_handles_its_messages_in_order_one_at_a_time(dispatcher: Dispatcher) -> None:
    logs: list[list[Any]] = [[] for _ in range(20)]
    gate = threading.Event()
    refs = [Recorder.start(dispatcher, log, gate) for log in logs]
    for n in range(200):
        for ref in refs:
            ref.tell(n)
    for ref in refs:
        ref.ask(("echo", None))
    assert all(log == list(range(200)) for log in logs)


def test_hundreds_of_actors_run_on_the_dispatchers_threads_only(dispatcher: Dispatcher) -> None:
    before = threading.active_count()
    refs = [Recorder.start(dispatcher, [], threading.Event()) for _ in range(300)]
    threads = {ref.ask(("echo", 1))[1] for ref in refs}
    assert threading.active_count() == before
    assert threads <= {"test-dispatch-0", "test-dispatch-1"}
    assert dispatcher.running() == 300
    for ref in refs:
        ref.stop()
    assert dispatcher.running() == 0


def test_an_ask_gets_the_handlers_exception_and_the_actor_lives_on(
    dispatcher: Dispatcher,
) -> None:
    log: list[Any] = []
    ref = Recorder.start(dispatcher, log, threading.Event())
    with pytest.raises(ValueError, match="asked"):
        ref.ask(("raise", "asked"))
    assert ref.ask(("echo", 7))[0] == 7


def test_a_tell_that_raises_fails_the_actor_without_on_stop(dispatcher: Dispatcher) -> None:
    log: list[Any] = []
    ref = Recorder.start(dispatcher, log, threading.Event())
    ref.tell(("raise", "told"))
    ref.tell("after")
    with pytest.raises(pykka.ActorDeadError):
        ref.ask(("echo", None), timeout=10)
    assert log == [("failed", "told")]
    assert dispatcher.running() == 0


def test_an_actor_whose_start_fails_is_stopped(dispatcher: Dispatcher) -> None:
    ref = FailsToStart.start(dispatcher)
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("anything", timeout=10)
    assert not ref.is_alive()


def test_a_busy_actor_gives_the_thread_back_to_the_others() -> None:
    dispatcher = Dispatcher(threads=1, name="test-dispatch")
    try:
        log: list[Any] = []
        gate = threading.Event()
        flood = Recorder.start(dispatcher, log, gate)
        other = Recorder.start(dispatcher, log, gate)
        flood.tell(("wait", "flood-0"))
        for n in range(1, 200):
            flood.tell(f"flood-{n}")
        other.tell("other")
        gate.set()
        flood.ask(("echo", None))
        other.ask(("echo", None))
        assert log.index("other") < log.index("flood-199")
        assert log.index("other") <= 40, "the other actor waited for more than one burst"
    finally:
        dispatcher.close()


def test_close_stops_the_actors_still_running_and_refuses_new_ones() -> None:
    dispatcher = Dispatcher(threads=2, name="test-dispatch")
    log: list[Any] = []
    refs = [Recorder.start(dispatcher, log, threading.Event()) for _ in range(5)]
    dispatcher.close()
    assert sorted(entry[1] for entry in log) == sorted(ref.actor_urn for ref in refs)
    assert not any(ref.is_alive() for ref in refs)
    with pytest.raises(pykka.ActorDeadError):
        Recorder.start(dispatcher, log, threading.Event())
    dispatcher.close()


def test_told_here_an_idle_actor_handles_the_message_on_the_callers_thread(
    dispatcher: Dispatcher,
) -> None:
    log: list[Any] = []
    ref = Recorder.start(dispatcher, log, threading.Event())
    actor = ref.ask("yourself")
    # The reply comes before the turn ends: wait until the actor has given its turn back.
    eventually(lambda: not actor.actor_inbox._scheduled)
    caller = threading.Thread(target=lambda: actor.tell_here(("where", "here")), name="executor")
    caller.start()
    caller.join()
    assert log == [("here", "executor")]


def test_told_here_a_busy_actor_gets_the_message_after_the_others_on_its_dispatcher(
    dispatcher: Dispatcher,
) -> None:
    log: list[Any] = []
    gate = threading.Event()
    ref = Recorder.start(dispatcher, log, gate)
    actor = ref.ask("yourself")
    ref.tell(("wait", "first"))
    ref.tell(("where", "second"))
    returned = threading.Event()

    def tell() -> None:
        actor.tell_here(("where", "third"))
        returned.set()

    caller = threading.Thread(target=tell, name="executor")
    caller.start()
    # It returns while the actor still waits: the message was queued, not handled.
    assert returned.wait(10)
    assert log == []
    gate.set()
    caller.join()
    ref.ask(("echo", None))
    assert [entry[0] if isinstance(entry, tuple) else entry for entry in log] == [
        "first",
        "second",
        "third",
    ]
    assert {entry[1] for entry in log[1:]} <= {"test-dispatch-0", "test-dispatch-1"}


def test_told_here_a_stopped_actor_drops_the_message(dispatcher: Dispatcher) -> None:
    log: list[Any] = []
    ref = Recorder.start(dispatcher, log, threading.Event())
    actor = ref.ask("yourself")
    ref.stop()
    actor.tell_here(("where", "late"))
    assert log == [("stopped", ref.actor_urn)]
    assert dispatcher.running() == 0


def test_a_stopped_actor_is_freed_as_soon_as_it_is_dropped() -> None:
    dispatcher = Dispatcher(threads=1, name="test-dispatch")
    gc.disable()  # freed by reference counting, or not at all
    try:
        ref = Recorder.start(dispatcher, [], threading.Event())
        actor = weakref.ref(ref.ask("yourself"))
        ref.tell("once")
        ref.stop()
        del ref
    finally:
        dispatcher.close()  # its last turn has ended
        try:
            assert actor() is None, "a stopped actor waited for the cycle collector"
        finally:
            gc.enable()


# A thread actor's holding inbox --------------------------------------------------------


class _Report:
    """A message the inbox's owner lets wait for the held moment."""


class _Due:
    """What the inbox hands over when the moment comes and nothing is in."""


class _Moment:
    """A scheduler whose every wait finds the moment already come; it notes, for each
    wait, whether a message had ended it (``wake`` set) and until when it was."""

    def __init__(self) -> None:
        self.waits: list[tuple[bool, float]] = []

    def now(self) -> float:
        return 100.0

    def wait(self, wake: threading.Event, until: float) -> None:
        self.waits.append((wake.is_set(), until))


def _message(envelope: Any) -> Any:
    return envelope.message


def test_a_held_inbox_is_woken_by_a_message_but_not_by_one_its_owner_lets_wait() -> None:
    inbox = HoldingInbox()
    moment = _Moment()
    due = _Due()

    assert inbox.hold(moment, 105.0, due, (_Report,))
    report = _Report()
    inbox.put(Envelope(report))
    # The wait was not ended by the report: it waits for the moment with the rest.
    assert _message(inbox.get()) is report
    assert moment.waits == [(False, 105.0)]

    assert inbox.hold(moment, 106.0, due, (_Report,))
    inbox.put(Envelope("cancel"))
    assert _message(inbox.get()) == "cancel"
    assert moment.waits[-1] == (True, 106.0)

    # Nothing came: the moment brings the held message.
    assert inbox.hold(moment, 107.0, due, (_Report,))
    assert _message(inbox.get()) is due
    # Without a hold, nothing waits and nothing is made up.
    inbox.put(Envelope(report))
    assert _message(inbox.get()) is report
    assert len(moment.waits) == 3


def test_a_hold_is_refused_while_a_message_waits_in_the_inbox() -> None:
    inbox = HoldingInbox()
    moment = _Moment()
    inbox.put(Envelope("first"))

    assert not inbox.hold(moment, 105.0, _Due(), ())
    assert _message(inbox.get()) == "first"
    assert moment.waits == []


def test_a_held_inbox_waits_for_the_schedulers_moment() -> None:
    clock = FakeScheduler()
    inbox = HoldingInbox()
    due = _Due()
    got: list[Any] = []
    assert inbox.hold(clock, clock.now() + 5.0, due, (_Report,))
    reader = threading.Thread(target=lambda: got.append(_message(inbox.get())))
    reader.start()
    try:
        clock.wait_pending(1, timeout=10)
        inbox.put(Envelope(_Report()))
        assert clock.pending() == [clock.now() + 5.0]
        clock.advance(5.0)
    finally:
        reader.join(10)
    assert not reader.is_alive()
    # The report came first; the moment found it in, so nothing was made up.
    assert len(got) == 1
    assert isinstance(got[0], _Report)
    assert clock.pending() == []
