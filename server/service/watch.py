"""``WatchBatch``: every committed event to every watcher, never slowing the store down.

The hub listens to the store. Its listener only appends to each watcher's bounded queue
and returns; when a watcher's queue is full the watcher is flagged as overflowed and its
queue dropped, and it catches up by re-reading the store's events after the last one it
sent. So a slow or stalled watcher costs the batch nothing, and still misses nothing.

A watcher registers before it reads the store, so an event committed while it reads is
either in what it read or in its queue (or both: duplicates are dropped by sequence).

Every watcher of a batch is handed the same :class:`_Shared` event, which is converted to
protobuf and serialized once, by the first watcher that sends it: with many watchers,
converting each event again for each of them cost more than sending it.

A watch that asks for several events per message (``max_events_per_message``) sends
whatever its queue holds when it wakes in one message, the frames joined as they are
(:func:`~server.wire.convert.coalesced_event_frame`). Sending a message costs the
threaded server about 60 µs of CPU whatever it holds, so a watcher that falls behind
catches up in a few messages instead of one per event, and the cost of a batch's events
grows with its watchers rather than with its watchers times its events. Nothing is
merged away: every event goes out once, in sequence order.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Generator, Iterator

import grpc

from actors.policy.model import BatchEvent, BatchState, BatchSummary
from actors.policy.refusals import BatchNotFound
from actors.storage.store import Store
from server.security.concurrency import Slot, TenantCaps
from server.wire import convert
from server.wire.errors import WireError, service_closing

__all__ = ["WatchHub", "WatchItem", "WatchSession"]

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


class _Watcher:
    """One watcher's queue; filled by the store's listener, drained by the watch."""

    def __init__(self, batch_id: str, capacity: int, slot: Slot | None = None) -> None:
        self.batch_id = batch_id
        # The tenant's place among its watches, given back when the hub lets go of it.
        self.slot = slot
        self._capacity = capacity
        self._changed = threading.Condition(threading.Lock())
        self._queue: deque[_Shared] = deque()
        self._overflowed = False
        self._stopped = False
        self._stop_error: BaseException | None = None

    def offer(self, event: _Shared) -> None:
        """Queue ``event``, or flag the overflow; never waits for the watcher."""
        with self._changed:
            if self._stopped or self._overflowed:
                return
            # The watch waits only while nothing is queued: only the first event wakes it.
            waiting = not self._queue
            if len(self._queue) >= self._capacity:
                self._overflowed = True
                self._queue.clear()
            else:
                self._queue.append(event)
            if waiting:
                self._changed.notify()

    def stop(self, error: BaseException | None) -> None:
        """End the watch: quietly (``None``), or with ``error``. The first call wins."""
        with self._changed:
            if self._stopped:
                return
            self._stopped = True
            self._stop_error = error
            self._changed.notify()

    def idle(self) -> bool:
        """Whether nothing is queued."""
        with self._changed:
            return not self._queue and not self._overflowed

    def take(self, timeout: float) -> tuple[list[_Shared], bool] | None:
        """Wait up to ``timeout`` for events; ``None`` once stopped.

        Returns:
            The queued events and whether some were dropped since the last take.

        Raises:
            BaseException: The error the watch was stopped with.
        """
        with self._changed:
            self._changed.wait_for(
                lambda: self._stopped or self._overflowed or bool(self._queue), timeout
            )
            if self._stopped:
                if self._stop_error is not None:
                    raise self._stop_error
                return None
            events = list(self._queue)
            self._queue.clear()
            overflowed, self._overflowed = self._overflowed, False
            return events, overflowed


class WatchHub:
    """Fans the store's events out to the open watches.

    Args:
        store: The events' source; subscribed to at once, until :meth:`close`.
        queue_size: Events buffered per watcher before it falls back to the store.
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
        self._watchers: dict[str, set[_Watcher]] = {}
        self._count = 0
        self._closed = False
        self._unsubscribe = store.subscribe(self._on_event)

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
        watcher = _Watcher(batch_id, self._queue_size, self._admit_tenant(tenant))
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
            self._watchers.setdefault(batch_id, set()).add(watcher)
            self._count += 1

    def batch_deleted(self, batch_id: str) -> None:
        """End every watch of the batch with ``NOT_FOUND``."""
        with self._lock:
            watchers = list(self._watchers.get(batch_id, ()))
        for watcher in watchers:
            watcher.stop(BatchNotFound("The batch was deleted."))

    def close(self) -> None:
        """Stop listening; end every watch with ``UNAVAILABLE`` so clients resume elsewhere.

        Idempotent.
        """
        with self._lock:
            self._closed = True
            watchers = [w for group in self._watchers.values() for w in group]
        self._unsubscribe()
        for watcher in watchers:
            watcher.stop(service_closing())

    @property
    def open_watches(self) -> int:
        """How many watches are registered."""
        with self._lock:
            return self._count

    def _remove(self, watcher: _Watcher) -> None:
        with self._lock:
            group = self._watchers.get(watcher.batch_id)
            if group is None or watcher not in group:
                return
            group.discard(watcher)
            self._count -= 1
            if not group:
                del self._watchers[watcher.batch_id]
        if watcher.slot is not None:
            watcher.slot.release()

    def _on_event(self, event: BatchEvent) -> None:
        with self._lock:
            watchers = tuple(self._watchers.get(event.batch_id, ()))
        if not watchers:
            return
        shared = _Shared(event)
        for watcher in watchers:
            watcher.offer(shared)


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
        fresh = [e for e in queued if e.sequence > self._last]
        contiguous = all(e.sequence == self._last + i for i, e in enumerate(fresh, start=1))
        if overflowed or not contiguous:
            return self._read(self._last)
        return fresh

    def _read(self, after: int) -> list[_Shared]:
        events = self._hub.store.events_after(self._watcher.batch_id, after)
        if events and events[0].sequence != after + 1:
            raise _expired(after)
        return [_Shared(event) for event in events]

    def _check_exists(self) -> None:
        if self._hub.store.oldest_sequence(self._watcher.batch_id) is None:
            raise BatchNotFound("The batch was deleted.")
