"""``WatchBatch``: every committed event to every watcher, never slowing the store down.

The hub listens to the store. After each commit its listener appends the commit's events
once to their batch's feed (:class:`_Feed`), shared by the batch's watchers, wakes the
watchers that wait, and returns: it runs on the committing thread (the batch
supervisor's), so its work per event does not grow with the watchers. Each watcher takes
what lies after its own place in the feed: a woken watcher finds the whole commit there,
so a watch that allows several events per message sends about one message per commit,
not one per event. A watcher further behind than the feed keeps (``queue_size`` events)
catches up by re-reading the store's events after the last one it sent. So a slow or
stalled watcher costs the batch nothing, and still misses nothing.

A watcher registers before it reads the store, so an event committed while it reads is
either in what it read or in its feed (or both: duplicates are dropped by sequence).

Every watcher of a batch is handed the same :class:`_Shared` event, which is converted to
protobuf and serialized once, by the first watcher that sends it: with many watchers,
converting each event again for each of them cost more than sending it.

A watch that asks for several events per message (``max_events_per_message``) sends
whatever waits for it when it wakes in one message, the frames joined as they are
(:func:`~server.wire.convert.coalesced_event_frame`). Sending a message costs tens of
µs of CPU whatever it holds, so a watcher that falls behind catches up in a few
messages instead of one per event, and the cost of a batch's events grows with its
watchers rather than with its watchers times its events. Nothing is merged away: every
event goes out once, in sequence order.

The service sends watches from its event loop (:meth:`WatchSession.stream`, see
:mod:`server.service.serving`): a watch waiting for events holds no thread, and the
committing thread wakes all of a loop's waiting watches with one call into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import threading
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Sequence,
)
from typing import Any

import grpc

from actors.policy.model import BatchEvent, BatchState, BatchSummary
from actors.policy.refusals import BatchNotFound
from actors.storage.store import Store
from server.security.concurrency import Slot, TenantCaps
from server.wire import convert
from server.wire.errors import WireError, service_closing

__all__ = ["Blocking", "WatchHub", "WatchItem", "WatchSession"]

Blocking = Callable[[Callable[[], Any]], Awaitable[Any]]
"""Runs a function that may block off the event loop; awaited for its result."""

WatchItem = BatchSummary | BatchEvent
"""What a watch yields: a snapshot of the batch (its record and counts), or one event."""


def _expired(after: int) -> WireError:
    return WireError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "WATCH_HISTORY_EXPIRED",
        f"Events after sequence {after} are no longer kept. Read the batch again (watch "
        "from sequence 0 for a fresh snapshot).",
        metadata={"afterSequence": str(after)},
    )


class _Shared:
    """An event and its wire bytes, serialized at most once for all the watchers."""

    __slots__ = ("_frame", "event")

    def __init__(self, event: BatchEvent) -> None:
        self.event = event
        self._frame: bytes | None = None

    @property
    def sequence(self) -> int:
        """The event's sequence."""
        return self.event.sequence

    def frame(self) -> bytes:
        """The serialized ``pb.WatchBatchResponse``."""
        frame = self._frame
        if frame is None:
            # Watchers woken together may both get here; either's bytes are the same.
            frame = self._frame = convert.event_to_proto(self.event).SerializeToString()
        return frame


class _Feed:
    """One batch's latest events, shared by its watchers.

    The store's listener appends each commit's events once, whatever the number of
    watchers, and wakes those that wait; each watcher keeps its own place (a count of
    the events appended before it) and takes what lies after it. So the committing
    thread (the batch supervisor's) does the same small work per event for one watcher
    or fifty, besides one release per watcher that waits, once per commit. The feed
    keeps at most ``capacity`` events, and forgets them all once every watcher has taken
    them; a watcher further behind than the feed reaches falls back to the store.
    """

    def __init__(self, capacity: int) -> None:
        self.changed = threading.Condition(threading.Lock())
        self.watchers: set[_Watcher] = set()
        self._events: deque[_Shared] = deque(maxlen=capacity)
        # Events appended since the feed was made; a watcher's place counts the same way.
        self.end = 0
        # Watchers whose place is the end: when they are all, nothing kept is needed.
        self._current = 0
        # Watchers waiting on an event loop (the caller holds ``changed``).
        self.sleepers: set[_Watcher] = set()

    def extend(self, events: list[_Shared]) -> None:
        """Keep one commit's ``events`` for the watchers and wake those that wait, once
        for all of them, so that each takes the commit whole; never waits for them."""
        with self.changed:
            self._events.extend(events)
            self.end += len(events)
            self._current = 0
            self.wake()

    def wake(self) -> None:
        """Wake every waiting watcher (the caller holds ``changed``).

        Those waiting on an event loop are woken with one call into each loop, however
        many they are; they are waiting no more until they have taken what is new, so
        the further events of the same commit cost the committing thread nothing.
        """
        self.changed.notify_all()
        if not self.sleepers:
            return
        loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for sleeper in self.sleepers:
            if sleeper.waiting is not None:
                loop = sleeper.waiting.get_loop()
                loops.setdefault(loop, []).append(sleeper.waiting)
        self.sleepers.clear()
        for loop, waiting in loops.items():
            # A closed loop has no watch left to wake.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake_all, waiting)

    def join(self, watcher: _Watcher) -> int:
        """Add ``watcher``; its place, from which it sees every later event."""
        with self.changed:
            self.watchers.add(watcher)
            self._current += 1
            return self.end

    def leave(self, watcher: _Watcher) -> None:
        """Remove ``watcher`` (the caller holds ``changed``)."""
        self.watchers.discard(watcher)
        if watcher.place == self.end:
            self._current -= 1
        self._forget_taken()

    def after(self, place: int) -> list[_Shared] | None:
        """The events after ``place``, or ``None`` if some of them are no longer kept
        (the caller holds ``changed`` and moves the watcher's place to the end)."""
        behind = self.end - place
        if behind > len(self._events):
            return None
        taken = list(itertools.islice(reversed(self._events), behind))
        taken.reverse()
        return taken

    def caught_up(self) -> None:
        """One more watcher's place is the end (the caller holds ``changed``)."""
        self._current += 1
        self._forget_taken()

    def _forget_taken(self) -> None:
        if self._current >= len(self.watchers):
            self._events.clear()


def _wake_all(waiting: list[asyncio.Future[None]]) -> None:
    for future in waiting:
        if not future.done():
            future.set_result(None)


class _Watcher:
    """One watcher's place in its batch's feed; the watch takes what lies after it."""

    def __init__(self, batch_id: str, slot: Slot | None = None) -> None:
        self.batch_id = batch_id
        # The tenant's place among its watches, given back when the hub lets go of it.
        self.slot = slot
        self.feed: _Feed | None = None
        self.place = 0
        self._stopped = False
        self._stop_error: BaseException | None = None
        # What a watch on an event loop awaits while it waits for events.
        self.waiting: asyncio.Future[None] | None = None

    def joined(self, feed: _Feed) -> None:
        """Follow ``feed`` from its end."""
        self.place = feed.join(self)
        self.feed = feed

    def _feed(self) -> _Feed:
        if self.feed is None:
            raise RuntimeError("the watcher is not registered")
        return self.feed

    def stop(self, error: BaseException | None) -> None:
        """End the watch: quietly (``None``), or with ``error``. The first call wins."""
        feed = self._feed()
        with feed.changed:
            if self._stopped:
                return
            self._stopped = True
            self._stop_error = error
            # The batch's other watchers wake too, see nothing new and wait again.
            feed.wake()

    def idle(self) -> bool:
        """Whether nothing waits to be taken."""
        feed = self._feed()
        with feed.changed:
            return self.place == feed.end

    def take(self, timeout: float) -> tuple[list[_Shared], bool] | None:
        """Wait up to ``timeout`` for events; ``None`` once stopped.

        Returns:
            The events after the watcher's place, and whether some were dropped (it
            fell further behind than the feed keeps: read them from the store).

        Raises:
            BaseException: The error the watch was stopped with.
        """
        feed = self._feed()
        with feed.changed:
            feed.changed.wait_for(lambda: self._stopped or self.place != feed.end, timeout)
            return self._take(feed)

    async def take_soon(self, timeout: float) -> tuple[list[_Shared], bool] | None:
        """:meth:`take`, waiting on the running event loop instead of a thread."""
        feed = self._feed()
        with feed.changed:
            if self._stopped or self.place != feed.end:
                return self._take(feed)
            loop = asyncio.get_running_loop()
            self.waiting = waiting = loop.create_future()
            feed.sleepers.add(self)
        timer = loop.call_later(timeout, _wake_all, [waiting])
        try:
            await waiting
        finally:
            timer.cancel()
            with feed.changed:
                feed.sleepers.discard(self)
                self.waiting = None
        with feed.changed:
            return self._take(feed)

    def _take(self, feed: _Feed) -> tuple[list[_Shared], bool] | None:
        """What :meth:`take` returns once done waiting (the caller holds ``changed``)."""
        if self._stopped:
            if self._stop_error is not None:
                raise self._stop_error
            return None
        if self.place == feed.end:
            return [], False
        events = feed.after(self.place)
        self.place = feed.end
        feed.caught_up()
        return (events, False) if events is not None else ([], True)


class WatchHub:
    """Fans the store's events out to the open watches.

    Args:
        store: The events' source; subscribed to at once, until :meth:`close`.
        queue_size: Events a batch's feed keeps for its watchers; a watcher further
            behind falls back to the store.
        max_watchers: Open watches allowed; more are refused with ``RESOURCE_EXHAUSTED``.
        liveness_interval: Seconds an idle watch waits before checking that its batch
            still exists. Default 2.
        per_tenant: Each tenant's cap on its open watches. Default: none.
        max_events_per_message: Most events one message may carry, whatever a watch
            asks for. Default 256.
        max_message_bytes: A message ends before its events would exceed this many
            bytes (a single larger event goes alone). Default 1 MiB, a quarter of
            gRPC's usual receive limit.
    """

    def __init__(
        self,
        store: Store,
        *,
        queue_size: int = 256,
        max_watchers: int = 64,
        liveness_interval: float = 2.0,
        per_tenant: TenantCaps | None = None,
        max_events_per_message: int = 256,
        max_message_bytes: int = 1024 * 1024,
    ) -> None:
        self.store = store
        self.max_events_per_message = max_events_per_message
        self.max_message_bytes = max_message_bytes
        self._queue_size = queue_size
        self._max_watchers = max_watchers
        self.liveness_interval = liveness_interval
        self._per_tenant = per_tenant
        self._lock = threading.Lock()
        self._feeds: dict[str, _Feed] = {}
        self._count = 0
        self._closed = False
        self._count_listeners: list[Callable[[int], None]] = []
        self._unsubscribe = store.subscribe(self._on_commit)

    def follow_count(self, listener: Callable[[int], None]) -> None:
        """Call ``listener`` with the number of open watches each time it changes, in
        order (under the hub's lock: it must be quick, or rarely slow, and must not open
        or end a watch)."""
        with self._lock:
            self._count_listeners.append(listener)

    def open(
        self,
        batch_id: str,
        after_sequence: int,
        *,
        follow: bool,
        tenant: str = "",
        events_per_message: int = 1,
    ) -> WatchSession:
        """Register a watch for ``tenant``; iterate the result to stream it.

        Args:
            batch_id: The batch.
            after_sequence: 0 for a snapshot first, else the last event received.
            follow: Keep watching once the batch settled.
            events_per_message: Most events a message may carry (0 is taken as 1);
                capped at the hub's ``max_events_per_message``.

        Raises:
            WireError: ``events_per_message`` is negative, or too many watches are open,
                the tenant's or everyone's.
            ServiceClosing: The hub is closed.
        """
        if events_per_message < 0:
            raise WireError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_EVENTS_PER_MESSAGE",
                "max_events_per_message cannot be negative; 0 or 1 sends one event per message.",
            )
        per_message = min(max(events_per_message, 1), self.max_events_per_message)
        watcher = _Watcher(batch_id, self._admit_tenant(tenant))
        try:
            self._register(watcher)
        except BaseException:
            if watcher.slot is not None:
                watcher.slot.release()
            raise
        return WatchSession(self, watcher, after_sequence, follow=follow, per_message=per_message)

    def _admit_tenant(self, tenant: str) -> Slot | None:
        """The tenant's place among its watches, if it has one left (see ``per_tenant``)."""
        return None if self._per_tenant is None else self._per_tenant.take(tenant)

    def _register(self, watcher: _Watcher) -> None:
        batch_id = watcher.batch_id
        with self._lock:
            if self._closed:
                raise service_closing()
            if self._count >= self._max_watchers:
                raise WireError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "TOO_MANY_WATCHERS",
                    "Too many watches are open on this server; try again shortly.",
                    retry_after=5.0,
                )
            feed = self._feeds.get(batch_id)
            if feed is None:
                feed = self._feeds[batch_id] = _Feed(self._queue_size)
            watcher.joined(feed)
            self._count += 1
            self._counted()

    def batch_deleted(self, batch_id: str) -> None:
        """End every watch of the batch with ``NOT_FOUND``."""
        for watcher in self._watching(batch_id):
            watcher.stop(BatchNotFound("The batch was deleted."))

    def close(self) -> None:
        """Stop listening; end every watch with ``UNAVAILABLE`` so clients resume elsewhere.

        Idempotent.
        """
        with self._lock:
            self._closed = True
            feeds = list(self._feeds)
        self._unsubscribe()
        watchers = [watcher for batch_id in feeds for watcher in self._watching(batch_id)]
        for watcher in watchers:
            watcher.stop(service_closing())

    @property
    def open_watches(self) -> int:
        """How many watches are registered."""
        with self._lock:
            return self._count

    def _watching(self, batch_id: str) -> list[_Watcher]:
        with self._lock:
            feed = self._feeds.get(batch_id)
        if feed is None:
            return []
        with feed.changed:
            return list(feed.watchers)

    def _remove(self, watcher: _Watcher) -> None:
        with self._lock:
            feed = self._feeds.get(watcher.batch_id)
            if feed is None:
                return
            with feed.changed:
                if watcher not in feed.watchers:
                    return
                feed.leave(watcher)
                if not feed.watchers:
                    del self._feeds[watcher.batch_id]
            self._count -= 1
            self._counted()
        if watcher.slot is not None:
            watcher.slot.release()

    def _counted(self) -> None:
        """Tell the count's listeners (the caller holds the lock)."""
        for listener in self._count_listeners:
            listener(self._count)

    def _on_commit(self, events: Sequence[BatchEvent]) -> None:
        # The same work for any number of watchers: on the thread that committed.
        with self._lock:
            feed = self._feeds.get(events[0].batch_id)
        if feed is not None:
            feed.extend([_Shared(event) for event in events])


class WatchSession:
    """One ``WatchBatch`` call. Iterate it, or its :meth:`frames`, once.

    :meth:`cancel` ends it from any thread.
    """

    def __init__(
        self, hub: WatchHub, watcher: _Watcher, after: int, *, follow: bool, per_message: int = 1
    ) -> None:
        self._hub = hub
        self._watcher = watcher
        self._after = after
        self._follow = follow
        self._per_message = per_message
        self._last = 0
        self._state: BatchState | None = None

    def cancel(self) -> None:
        """End the watch quietly (the client went away). Idempotent."""
        self._watcher.stop(None)
        self._hub._remove(self._watcher)

    def __iter__(self) -> Iterator[WatchItem]:
        with contextlib.closing(self._items()) as items:
            for item in items:
                if isinstance(item, BatchSummary):
                    yield item
                else:
                    yield from (shared.event for shared in item)

    def frames(self) -> Iterator[bytes]:
        """The watch as serialized ``pb.WatchBatchResponse`` messages, ready for the wire.

        An event that reached the watch live was serialized once, for every watcher of
        the batch. The events waiting when a message is sent go out together, up to the
        watch's events per message and the hub's bytes per message.
        """
        with contextlib.closing(self._items()) as items:
            for item in items:
                if isinstance(item, BatchSummary):
                    yield convert.snapshot_to_proto(item).SerializeToString()
                else:
                    yield from self._messages(item)

    async def stream(self, blocking: Blocking) -> AsyncIterator[bytes]:
        """:meth:`frames` on an event loop, which it never blocks.

        It waits for events on the loop; what reads the store (the snapshot or the
        events after ``after_sequence``, a catch-up, the check that the batch still
        exists) it runs through ``blocking``, which calls a function elsewhere and
        returns its result. Many watches then cost no thread each, and a commit wakes
        them all with one call into the loop.
        """
        async with contextlib.aclosing(self._items_soon(blocking)) as items:
            async for item in items:
                if isinstance(item, BatchSummary):
                    yield convert.snapshot_to_proto(item).SerializeToString()
                else:
                    for message in self._messages(item):
                        yield message

    async def _items_soon(
        self, blocking: Blocking
    ) -> AsyncGenerator[BatchSummary | list[_Shared], None]:
        try:
            for first in await blocking(lambda: list(self._start())):
                yield first
            while not self._done():
                taken = await self._watcher.take_soon(self._hub.liveness_interval)
                if taken is None:
                    return
                events, overflowed = taken
                if not events and not overflowed:
                    await blocking(self._check_exists)
                    continue
                fresh = None if overflowed else self._fresh(events)
                if fresh is None:
                    fresh = await blocking(functools.partial(self._read, self._last))
                for item in self._send(fresh):
                    yield item
        finally:
            self.cancel()

    def _messages(self, events: list[_Shared]) -> Iterator[bytes]:
        """``events`` cut into messages of at most the allowed count and bytes."""
        if self._per_message == 1:
            yield from (shared.frame() for shared in events)
            return
        budget = self._hub.max_message_bytes
        group: list[bytes] = []
        size = 0
        for shared in events:
            frame = shared.frame()
            # Each earlier event costs its frame and a few bytes of field header.
            if group and (len(group) == self._per_message or size + len(frame) + 6 > budget):
                yield convert.coalesced_event_frame(group)
                group, size = [], 0
            group.append(frame)
            size += len(frame) + 6
        if group:
            yield convert.coalesced_event_frame(group)

    def _items(self) -> Generator[BatchSummary | list[_Shared], None, None]:
        try:
            yield from self._start()
            while not self._done():
                taken = self._watcher.take(self._hub.liveness_interval)
                if taken is None:
                    return
                events, overflowed = taken
                if not events and not overflowed:
                    self._check_exists()
                    continue
                yield from self._send(self._catch_up(events, overflowed))
        finally:
            self.cancel()

    def _start(self) -> Iterator[BatchSummary | list[_Shared]]:
        store = self._hub.store
        batch_id = self._watcher.batch_id
        # The record and counts only: opening a watch costs the same for any batch size.
        view = store.batch_summary(batch_id)
        if view is None:
            raise BatchNotFound("No batch with this id exists.")
        current = view.batch.sequence
        if self._after < 0:
            raise WireError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_SEQUENCE",
                "after_sequence cannot be negative.",
            )
        if self._after > current:
            raise WireError(
                grpc.StatusCode.OUT_OF_RANGE,
                "WATCH_SEQUENCE_AHEAD",
                f"The batch's last event is {current}; resume after a sequence you received.",
                metadata={"sequence": str(current)},
            )
        if self._after == 0:
            self._last, self._state = current, view.batch.state
            yield view
            return
        oldest = store.oldest_sequence(batch_id)
        if oldest is None:
            raise BatchNotFound("No batch with this id exists.")
        if self._after + 1 < oldest:
            raise _expired(self._after)
        self._last, self._state = self._after, view.batch.state
        yield from self._send(self._read(self._after))

    def _done(self) -> bool:
        """Whether the batch is settled and every event up to that was sent."""
        return (
            not self._follow
            and self._state is not None
            and self._state.terminal
            and self._watcher.idle()
        )

    def _send(self, events: list[_Shared]) -> Iterator[list[_Shared]]:
        if events:
            newest = events[-1].event
            self._last, self._state = newest.sequence, newest.batch_state
            yield events

    def _catch_up(self, queued: list[_Shared], overflowed: bool) -> list[_Shared]:
        """The events after the last one sent, without gaps or repeats."""
        fresh = None if overflowed else self._fresh(queued)
        return self._read(self._last) if fresh is None else fresh

    def _fresh(self, queued: list[_Shared]) -> list[_Shared] | None:
        """The queued events after the last one sent; ``None`` if some between are
        missing (then they are read from the store)."""
        fresh = [e for e in queued if e.sequence > self._last]
        contiguous = all(e.sequence == self._last + i for i, e in enumerate(fresh, start=1))
        return fresh if contiguous else None

    def _read(self, after: int) -> list[_Shared]:
        events = self._hub.store.events_after(self._watcher.batch_id, after)
        if events and events[0].sequence != after + 1:
            raise _expired(after)
        return [_Shared(event) for event in events]

    def _check_exists(self) -> None:
        if self._hub.store.oldest_sequence(self._watcher.batch_id) is None:
            raise BatchNotFound("The batch was deleted.")
