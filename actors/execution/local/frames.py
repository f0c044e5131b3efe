"""Whole messages from a worker's pipe, as many as one read brings.

A worker sends each outcome with :meth:`multiprocessing.connection.Connection.send_bytes`:
a 4-byte big-endian signed length (``-1`` and then an 8-byte length past 2 GiB) and
the payload. ``recv_bytes`` on the parent's end reads one message with two reads,
the length and then the payload, and the monitor asked ``poll`` after each whether
another one was there: three system calls a file, each one letting the monitor's
thread give up the GIL and wait to take it back. :class:`FrameReader` reads what the
pipe holds in one call and splits it into messages, keeping a message's beginning
for the next read when the rest is still on its way; it never waits for one.
"""

from __future__ import annotations

import os
import struct

__all__ = ["FrameReader", "MessageTooLongError"]

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
# What one read asks for at least: a few dozen one-page outcomes.
_READ_BYTES = 256 * 1024


class MessageTooLongError(OSError):
    """A message announced itself longer than the reader accepts."""


class FrameReader:
    """Splits what arrives on ``fd`` into the messages ``send_bytes`` wrote.

    Nothing else may read from ``fd``: what this reader took from it and has not
    returned yet is only here.

    Args:
        fd: The descriptor of the parent's end of the worker's pipe.
        max_bytes: The longest message accepted.
    """

    def __init__(self, fd: int, max_bytes: int) -> None:
        self._fd = fd
        self._max_bytes = max_bytes
        self._buffer = bytearray()

    def read(self) -> list[bytes]:
        """Read once and return the messages now complete, in order; none if the read
        brought only part of one (the rest comes with a later read).

        Call only when ``fd`` is readable (or closed): the read blocks otherwise.

        Raises:
            EOFError: The other end is closed (what came before a part is returned
                first, by an earlier call).
            MessageTooLongError: A message is longer than ``max_bytes``.
            OSError: The read failed.
        """
        data = os.read(self._fd, max(_READ_BYTES, self._missing()))
        if not data:
            raise EOFError("the worker's end of the pipe is closed")
        buffer = self._buffer
        buffer += data
        messages: list[bytes] = []
        start, end = 0, len(buffer)
        view = memoryview(buffer)
        try:
            while True:
                framed = self._frame_at(view, start, end)
                if framed is None:
                    break
                body, after = framed
                messages.append(bytes(view[body:after]))
                start = after
        finally:
            view.release()
        del buffer[:start]
        return messages

    def _missing(self) -> int:
        """How many more bytes the message begun in the buffer needs (0 if none)."""
        buffer = self._buffer
        framed = _header(buffer, 0, len(buffer))
        if framed is None:
            return 0
        body, size = framed
        return max(0, body + min(size, self._max_bytes) - len(buffer))

    def _frame_at(self, view: memoryview, start: int, end: int) -> tuple[int, int] | None:
        """The span of the whole message at ``start``; ``None`` if it is not all in."""
        framed = _header(view, start, end)
        if framed is None:
            return None
        body, size = framed
        if size > self._max_bytes:
            raise MessageTooLongError(
                f"a worker's message of {size} bytes is longer than the {self._max_bytes} "
                "bytes accepted"
            )
        if end - body < size:
            return None
        return body, body + size


def _header(data: bytearray | memoryview, start: int, end: int) -> tuple[int, int] | None:
    """Where the payload of the message at ``start`` begins and its length; ``None``
    while the length itself is not all in."""
    if end - start < _SHORT.size:
        return None
    (size,) = _SHORT.unpack_from(data, start)
    if size != -1:
        if size < 0:
            raise OSError(f"a worker's message announced a negative length ({size})")
        return start + _SHORT.size, size
    if end - start < _SHORT.size + _LONG.size:
        return None
    (size,) = _LONG.unpack_from(data, start + _SHORT.size)
    return start + _SHORT.size + _LONG.size, size
