"""Many small actors on a few shared threads, instead of a thread per actor.

pykka's :class:`~pykka.ThreadingActor` gives every actor its own thread. That suits the
long-lived actors (the manager, one supervisor per batch), but a file actor lives for
one attempt: starting a thread for it cost its batch supervisor more than a millisecond
per file, mostly waiting for the new thread to be scheduled. A
:class:`DispatchedActor` is a pykka actor in every other way (registry, refs, ``tell``,
``ask``, ``stop``, the ``on_*`` hooks, the same failure handling) whose messages run on
the threads of a :class:`Dispatcher`, one message at a time per actor and in order.
The long-lived actors keep a thread each, as :class:`ThreadActor`s, whose inbox is
written in C.

The price is the one every dispatcher-based actor system pays: a dispatched actor must
not block its thread waiting for another actor on the same dispatcher (an ``ask`` with
``block=True``); a short blocking call into the executor (killing a process) is fine.
Its ``on_start`` runs on the thread that starts it (``start`` returns once it ran), and
so must be as short.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka
import structlog
from pykka._envelope import Envelope

from actors.orchestration.clock import Scheduler

__all__ = ["DispatchedActor", "Dispatcher", "HoldingInbox", "ThreadActor"]

log = structlog.get_logger(__name__)

# Messages one actor handles before the thread moves on to the next actor.
_BURST = 32


class Dispatcher:
    """A few threads that run dispatched actors' messages.

    Args:
        threads: How many actors may run at the same moment. Default 2.
        name: Prefix of the threads' names.
    """

    def __init__(self, threads: int = 2, name: str = "pdfbatch-dispatch") -> None:
        if threads < 1:
            raise ValueError("a dispatcher needs at least one thread")
        self._ready: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._actors: set[DispatchedActor] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{index}") for index in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop every actor still running here, then the threads. Idempotent.

        Raises:
            pykka.Timeout: An actor did not stop within ``timeout`` seconds.
        """
        with self._lock:
            if self._closed:
                return
            actors = list(self._actors)
        stops = [actor.actor_ref.stop(block=False) for actor in actors]
        try:
            pykka.get_all(stops, timeout=timeout)
        finally:
            with self._lock:
                self._closed = True
            for _ in self._threads:
                self._ready.put(None)
            for thread in self._threads:
                thread.join()

    def running(self) -> int:
        """Actors started here and not stopped yet."""
        with self._lock:
            return sum(not actor.actor_stopped.is_set() for actor in self._actors)

    def _run_later(self, run: Callable[[], None]) -> None:
        self._ready.put(run)

    def _admit(self, actor: DispatchedActor) -> None:
        with self._lock:
            if self._closed:
                raise pykka.ActorDeadError("the dispatcher is closed")
            self._actors.add(actor)

    def _forget(self, actor: DispatchedActor) -> None:
        with self._lock:
            self._actors.discard(actor)

    def _loop(self) -> None:
        while (run := self._ready.get()) is not None:
            try:
                run()
            # An actor's own failures are handled inside run(); this is a bug of ours,
            # and the thread must go on serving the other actors.
            except Exception:
                log.exception("dispatcher_task_failed")


_urns = itertools.count()


class _Stopped:
    """An actor's ``actor_stopped``: set once, read from any thread."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


def _no_turn() -> None:
    pass


class _Mailbox:
    """An actor's inbox that asks the dispatcher for a turn when a message arrives."""

    def __init__(self, schedule: Callable[[], None]) -> None:
        self._messages: deque[Envelope[Any]] = deque()
        self._lock = threading.Lock()
        self._schedule = schedule
        # True while the actor holds or waits for a turn, and before it starts.
        self._scheduled = True

    def put(self, envelope: Envelope[Any], /) -> None:
        with self._lock:
            self._messages.append(envelope)
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            self._schedule()

    def claim(self, envelope: Envelope[Any], /) -> bool:
        """Put ``envelope`` in; ``True`` if the caller now holds the actor's turn (it
        had none and waited for none), which it must then run."""
        with self._lock:
            self._messages.append(envelope)
            if self._scheduled:
                return False
            self._scheduled = True
            return True

    def get(self) -> Envelope[Any]:
        return self._messages.popleft()

    def empty(self) -> bool:
        return not self._messages

    def close(self) -> None:
        """Forget the actor: its last turn is over, and a closed mailbox never asks for
        another (it stays scheduled). The turn's callable holds the actor, which holds
        its mailbox: without this, every stopped actor waited for the garbage
        collector's cycle search to be freed."""
        self._schedule = _no_turn

    def release(self) -> bool:
        """End the actor's turn; ``False`` (and the turn kept) if messages wait."""
        with self._lock:
            if self._messages:
                return False
            self._scheduled = False
            return True


class DispatchedActor(pykka.ThreadingActor):
    """A pykka actor whose messages run on a :class:`Dispatcher`'s threads.

    Args:
        dispatcher: Runs the actor. Subclasses take it as their first argument and
            pass it on before anything else touches the actor.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._started = False
        # What pykka.Actor.__init__ sets, made for less: a file actor is made for every
        # attempt, and its random URN (a system call for 16 random bytes) and its
        # threading.Event (a Condition over a lock) cost half of its making. A number
        # from a counter is as unique within the process, and of ``actor_stopped``
        # pykka asks only ``set`` and ``is_set``.
        self.actor_urn = f"urn:pdfbatch:actor:{next(_urns)}"
        self.actor_inbox = self._create_actor_inbox()
        self.actor_stopped = _Stopped()  # type: ignore[assignment]
        self._actor_ref = pykka.ActorRef(self)

    def _create_actor_inbox(self) -> Any:  # type: ignore[override]
        return _Mailbox(lambda: self._dispatcher._run_later(self._run_turn))

    def _start_actor_loop(self) -> None:
        try:
            self._dispatcher._admit(self)
        except pykka.ActorDeadError:
            # pykka registered the actor already: it must not look alive.
            pykka.ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
            raise
        # The first turn (on_start, and whatever arrived meanwhile) runs on the thread
        # that starts the actor: handing it to a dispatcher thread cost a wake-up per
        # actor, a third of the dispatcher's cost per file. The mailbox counts as
        # scheduled until this turn ends, so no dispatcher thread runs the actor
        # meanwhile; messages left after it get a turn on the dispatcher as usual.
        self._run_turn()

    def tell_here(self, message: object) -> None:
        """Tell the actor ``message``; if it is idle, handle it now on the calling thread.

        For a message whose handling is as short as an executor's callback must be (a
        file actor reporting its outcome and stopping), brought by a thread that is
        not a dispatcher's: handled here, it costs no wake-up of a dispatcher thread
        (with :class:`ThreadActor`'s inbox, the server's voluntary context switches for
        15,000 files went from about 70,000 to 43,000). An actor that holds or awaits a
        turn gets the message in its mailbox as with ``tell``,
        so one actor still never runs on two threads at once. A stopped actor's
        message is dropped, as :func:`~actors.orchestration.file_actor.tell_if_alive`
        drops it.
        """
        if self.actor_stopped.is_set():
            log.debug("message_to_stopped_actor", message=type(message).__name__)
            return
        mailbox: _Mailbox = self.actor_inbox  # type: ignore[assignment]
        if mailbox.claim(Envelope(message)):
            self._run_turn()

    def _run_turn(self) -> None:
        """Handle up to a burst of messages; give the thread back; ask for another turn."""
        mailbox: _Mailbox = self.actor_inbox  # type: ignore[assignment]
        if not self._started:
            self._started = True
            self._actor_loop_setup()
        handled = 0
        while not self.actor_stopped.is_set():
            if mailbox.empty() or handled == _BURST:
                if handled == _BURST or not mailbox.release():
                    self._dispatcher._run_later(self._run_turn)
                return
            self._handle_envelope(mailbox.get())
            handled += 1
        self._actor_loop_teardown()
        mailbox.close()
        self._dispatcher._forget(self)

    def _handle_envelope(self, envelope: Envelope[Any]) -> None:
        # The same outcomes as pykka's own loop: a reply or the exception to the asker;
        # for a tell, the failure stops the actor after on_failure.
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        # The actor's failure boundary: whatever a handler raises is the actor's failure.
        except Exception:  # noqa: BLE001
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception()
                return
            self._handle_failure(*sys.exc_info())
            try:
                self.on_failure(*sys.exc_info())
            except Exception:  # noqa: BLE001
                self._handle_failure(*sys.exc_info())
        except BaseException:  # noqa: BLE001
            # As in pykka: stop everything. Not waiting, since the actors to stop may
            # need this very thread to do it.
            self._stop()
            pykka.ActorRegistry.stop_all(block=False)


class HoldingInbox(queue.SimpleQueue[Envelope[Any]]):
    """A :class:`ThreadActor`'s inbox, which its actor can tell to hold until a moment.

    What an inbox must do (``put``, ``get``, ``empty``, first in first out) is a
    :class:`queue.SimpleQueue`'s, in C: pykka's own inbox is a :class:`queue.Queue`,
    written in Python over a :class:`threading.Condition` that makes a lock for every
    wait, and a batch supervisor takes a message per file.

    :meth:`hold` asks the next ``get`` to wait until a moment (the supervisor's next
    group commit) and then hand over a given message if nothing came: the actor waits
    in its inbox, between two messages, and an ``ask`` it answered is not kept waiting.
    Messages of the types the actor names may arrive meanwhile without waking it: they
    wait for the moment, and are handled together then (see
    :meth:`~actors.orchestration.supervisor.BatchSupervisor._commit_unless_more_coming`).
    Any other message ends the wait at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self._wake = threading.Event()
        # While a hold is set: its scheduler, its moment, what to hand over then, and
        # the types of the messages that do not end it. One value, read at once by put.
        self._hold: tuple[Scheduler, float, Any, tuple[type, ...]] | None = None

    def put(self, item: Envelope[Any], block: bool = True, timeout: float | None = None) -> None:
        super().put(item)
        # After the item is in: an actor that saw the inbox empty is woken by this.
        hold = self._hold
        if hold is not None and not isinstance(item.message, hold[3]):
            self._wake.set()

    def hold(
        self, scheduler: Scheduler, until: float, message: Any, quiet: tuple[type, ...]
    ) -> bool:
        """On the actor's thread, its inbox empty: make the next ``get`` wait until
        ``until`` by ``scheduler``'s clock, then return ``message`` if nothing is in.

        Messages of the ``quiet`` types that arrive meanwhile do not end the wait.
        Returns ``False`` (and holds nothing) if a message is in already.
        """
        self._wake.clear()
        self._hold = (scheduler, until, message, quiet)
        if not self.empty():
            self._hold = None
            return False
        return True

    def get(self, block: bool = True, timeout: float | None = None) -> Envelope[Any]:
        hold = self._hold
        if hold is None:
            return super().get(block, timeout)
        scheduler, until, message, _ = hold
        try:
            scheduler.wait(self._wake, until)
        finally:
            self._hold = None
        if self.empty():
            return Envelope(message)
        return super().get(block, timeout)


class ThreadActor(pykka.ThreadingActor):
    """A pykka :class:`~pykka.ThreadingActor` (a thread of its own) with a
    :class:`HoldingInbox`."""

    actor_inbox: HoldingInbox

    @staticmethod
    def _create_actor_inbox() -> Any:
        return HoldingInbox()
