"""Uploads that stall: an idle timeout between messages and a deadline for the whole.

grpcio's threaded server hands a streaming handler an iterator whose ``next()`` waits,
on the handler's thread, until the client sends a message or ends the call, with no
timeout of its own: a client that sends a header and stops holds that thread for as
long as it keeps its connection, and a few dozen such uploads held every thread.

:func:`paced` reads the client's messages on a thread of its own and hands them over
through a one-message channel, which the handler waits on with a timeout. A timeout
ends the call with ``DEADLINE_EXCEEDED``, whose status, once sent, also wakes the
reading thread (the call is over, so its iterator ends), so neither thread outlives
the call. The alternative of cancelling the call from a timer (``context.cancel()``)
frees the thread too, but the client then sees a bare ``CANCELLED`` and no reason.

The channel holds one message, so a client cannot send ahead of what the handler has
written: gRPC's flow control still holds it back.
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

__all__ = ["UploadPace", "paced"]

_T = TypeVar("_T")


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
    """One message at a time from the reading thread to the handler."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._items: deque[_T | _Ended] = deque()
        self._abandoned = False

    def put(self, item: _T | _Ended) -> bool:
        """Hand ``item`` over once the last one was taken; ``False`` if nobody will."""
        with self._changed:
            self._changed.wait_for(lambda: self._abandoned or not self._items)
            if self._abandoned:
                return False
            self._items.append(item)
            self._changed.notify_all()
            return True

    def take(self, timeout: float) -> _T | _Ended | None:
        """The next item, or ``None`` after ``timeout`` seconds without one."""
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self._items), max(timeout, 0.0)):
                return None
            item = self._items.popleft()
            self._changed.notify_all()
            return item

    def abandon(self) -> None:
        """The handler takes nothing more: the reader stops handing over."""
        with self._changed:
            self._abandoned = True
            self._items.clear()
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
) -> Generator[_T, None, None]:
    """``requests``, refused if the next one takes too long or the whole does.

    The waits are real time (they bound a thread); ``clock`` tells when the upload
    began and how long it has run.

    Raises:
        WireError: ``DEADLINE_EXCEEDED``, ``UPLOAD_IDLE_TIMEOUT`` or ``UPLOAD_TOO_SLOW``.
        BaseException: Whatever ``requests`` raised (``grpc.RpcError`` when the client
            broke off).
    """
    deadline = clock() + pace.max_seconds
    handover: _Handover[_T] = _Handover()
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
