"""Uploads that stall: an idle timeout between messages and a deadline for the whole.

A streaming handler gets an iterator whose ``next()`` waits, on the handler's thread,
until the client sends a message or ends the call, with no timeout of its own (see
:mod:`server.service.serving`): a client that sends a header and stops holds that thread for as
long as it keeps its connection, and a few dozen such uploads held every thread.

:func:`paced` reads the client's messages on a thread of its own and hands them over
through a one-message channel, which the handler waits on with a timeout. A timeout
ends the call with ``DEADLINE_EXCEEDED``, whose status, once sent, also wakes the
reading thread (the call is over, so its iterator ends), so neither thread outlives
the call. The alternative of cancelling the call from a timer (``context.cancel()``)
frees the thread too, but the client then sees a bare ``CANCELLED`` and no reason.

The channel holds the messages read ahead of the handler: at most
:data:`AHEAD_MESSAGES` of them and :data:`AHEAD_BYTES` of their payload, and always
one, however big. A client cannot send further ahead of what the handler has written:
gRPC's flow control holds it back. Reading ahead matters for small files, a message
each: with a channel of one message, each one cost both threads a wake-up; now a thread
waits only when the channel is empty or full.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from server.wire.errors import WireError

__all__ = ["AHEAD_BYTES", "AHEAD_MESSAGES", "UploadPace", "paced"]

_T = TypeVar("_T")

# What the reading thread may hold ahead of the handler, per upload: payload bytes, and
# messages (a message of a small file holds little payload, but its object some 200 bytes).
AHEAD_BYTES = 256 * 1024
AHEAD_MESSAGES = 64


@dataclass(frozen=True, slots=True)
class UploadPace:
    """How slow an upload may be.

    Attributes:
        idle_seconds: Longest wait for the next message (the first included).
        max_seconds: Longest time from the call's start to its last message.
    """

    idle_seconds: float
    max_seconds: float

    def __post_init__(self) -> None:
        if self.idle_seconds <= 0 or self.max_seconds <= 0:
            raise ValueError("upload timeouts must be positive")

    def idle(self) -> WireError:
        """The refusal of an upload that sent nothing for ``idle_seconds``."""
        return WireError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "UPLOAD_IDLE_TIMEOUT",
            f"The upload sent nothing for {self.idle_seconds:g} s, so it was ended and "
            "nothing of it was stored. Send each file's bytes without pausing, then `end`; "
            "an operator can raise upload_idle_timeout_seconds.",
            metadata={"uploadIdleTimeoutSeconds": f"{self.idle_seconds:g}"},
        )

    def too_long(self) -> WireError:
        """The refusal of an upload still sending after ``max_seconds``."""
        return WireError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "UPLOAD_TOO_SLOW",
            f"The upload was still sending after {self.max_seconds:g} s, the most one may "
            "take, so it was ended and nothing of it was stored. Send smaller batches, or "
            "ask an operator to raise max_upload_seconds.",
            metadata={"maxUploadSeconds": f"{self.max_seconds:g}"},
        )


class _Ended:
    """The client's stream ended (``error`` is ``None``) or broke off with ``error``."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class _Handover(Generic[_T]):
    """Messages from the reading thread to the handler: at most :data:`AHEAD_MESSAGES`
    and ``ahead_bytes`` of them (by ``size``) held at once, and always one."""

    def __init__(self, ahead_bytes: int, size: Callable[[_T], int]) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._items: deque[tuple[_T | _Ended, int]] = deque()
        self._held = 0
        self._ahead_bytes = ahead_bytes
        self._size = size
        self._abandoned = False
        # Whether a thread waits for the other: only then is a wake-up worth sending.
        self._putter_waits = False
        self._taker_waits = False

    def put(self, item: _T | _Ended) -> bool:
        """Hand ``item`` over once there is room; ``False`` if nobody will take it."""
        size = 0 if isinstance(item, _Ended) else self._size(item)
        with self._changed:
            while not self._abandoned and self._items and self._full(size):
                self._putter_waits = True
                self._changed.wait()
            self._putter_waits = False
            if self._abandoned:
                return False
            self._items.append((item, size))
            self._held += size
            if self._taker_waits:
                self._changed.notify_all()
            return True

    def _full(self, size: int) -> bool:
        return len(self._items) >= AHEAD_MESSAGES or self._held + size > self._ahead_bytes

    def take(self, timeout: float) -> _T | _Ended | None:
        """The next item, or ``None`` after ``timeout`` seconds without one."""
        with self._changed:
            if not self._items:
                self._taker_waits = True
                try:
                    if not self._changed.wait_for(lambda: bool(self._items), max(timeout, 0.0)):
                        return None
                finally:
                    self._taker_waits = False
            item, size = self._items.popleft()
            self._held -= size
            if self._putter_waits:
                self._changed.notify_all()
            return item

    def abandon(self) -> None:
        """The handler takes nothing more: the reader stops handing over."""
        with self._changed:
            self._abandoned = True
            self._items.clear()
            self._held = 0
            self._changed.notify_all()


def _read(requests: Iterator[_T], handover: _Handover[_T]) -> None:
    try:
        for request in requests:
            if not handover.put(request):
                return
    except BaseException as error:  # noqa: BLE001 - raised again on the handler's thread
        handover.put(_Ended(error))
        return
    handover.put(_Ended(None))


def paced(
    requests: Iterator[_T],
    pace: UploadPace,
    *,
    clock: Callable[[], float] = time.monotonic,
    size: Callable[[_T], int] = lambda _: AHEAD_BYTES,
    ahead_bytes: int = AHEAD_BYTES,
) -> Generator[_T, None, None]:
    """``requests``, refused if the next one takes too long or the whole does.

    The waits are real time (they bound a thread); ``clock`` tells when the upload
    began and how long it has run. ``size`` tells how many bytes a message holds, for
    the read-ahead bound ``ahead_bytes``; by default each message counts as the whole
    bound, so that one is read ahead at a time.

    Raises:
        WireError: ``DEADLINE_EXCEEDED``, ``UPLOAD_IDLE_TIMEOUT`` or ``UPLOAD_TOO_SLOW``.
        BaseException: Whatever ``requests`` raised (``grpc.RpcError`` when the client
            broke off).
    """
    deadline = clock() + pace.max_seconds
    handover: _Handover[_T] = _Handover(ahead_bytes, size)
    reader = threading.Thread(
        target=_read, args=(requests, handover), name="pdfbatch-upload-reader", daemon=True
    )
    reader.start()
    try:
        while True:
            left = deadline - clock()
            if left <= 0:
                raise pace.too_long()
            item = handover.take(min(pace.idle_seconds, left))
            if item is None:
                raise pace.too_long() if clock() >= deadline else pace.idle()
            if isinstance(item, _Ended):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        handover.abandon()
