"""A worker's messages read back whole from its pipe, many in one read, parts kept."""

from __future__ import annotations

import multiprocessing
import os
import select
import struct
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from actors.execution.local.frames import FrameReader, MessageTooLongError

MAX = 8 * 1024 * 1024


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, Connection]]:
    """The two ends of a pipe as the pool makes one for a worker."""
    parent, child = multiprocessing.get_context("forkserver").Pipe(duplex=True)
    try:
        yield parent, child
    finally:
        parent.close()
        child.close()


def _readable(conn: Connection) -> None:
    assert select.select([conn.fileno()], [], [], 10)[0], "nothing came"


def test_messages_sent_together_come_back_from_one_read(
    pipe: tuple[Connection, Connection],
) -> None:
    parent, child = pipe
    sent = [b"", b"one", bytes(range(256)) * 40, "é".encode() * 3]
    for message in sent:
        child.send_bytes(message)
    reader = FrameReader(parent.fileno(), MAX)
    _readable(parent)
    assert reader.read() == sent
    # And the pipe is then as recv_bytes would leave it: the next message is read alone.
    child.send_bytes(b"after")
    _readable(parent)
    assert reader.read() == [b"after"]


def test_a_message_bigger_than_the_pipe_comes_whole_once_all_of_it_arrived(
    pipe: tuple[Connection, Connection],
) -> None:
    parent, child = pipe
    big = os.urandom(4 * 1024 * 1024)  # more than a socket buffer holds
    sender = threading.Thread(target=lambda: (child.send_bytes(big), child.send_bytes(b"next")))
    sender.start()
    reader = FrameReader(parent.fileno(), MAX)
    got: list[bytes] = []
    empty_reads = 0
    while len(got) < 2:
        _readable(parent)
        batch = reader.read()
        empty_reads += not batch
        got += batch
    sender.join()
    assert got == [big, b"next"]
    assert empty_reads > 0  # it did arrive in parts


def test_a_header_split_across_reads_waits_for_its_rest(
    pipe: tuple[Connection, Connection],
) -> None:
    parent, child = pipe
    reader = FrameReader(parent.fileno(), MAX)
    os.write(child.fileno(), b"\x00\x00")
    _readable(parent)
    assert reader.read() == []
    os.write(child.fileno(), b"\x00\x05hel")
    _readable(parent)
    assert reader.read() == []
    os.write(child.fileno(), b"lo\x00\x00\x00\x01x")
    _readable(parent)
    assert reader.read() == [b"hello", b"x"]


def test_the_long_form_of_the_length_is_read(pipe: tuple[Connection, Connection]) -> None:
    parent, child = pipe
    # What send_bytes writes past 2 GiB: -1, then the length in 8 bytes.
    os.write(child.fileno(), struct.pack("!i", -1) + struct.pack("!Q", 5) + b"hello")
    reader = FrameReader(parent.fileno(), MAX)
    _readable(parent)
    assert reader.read() == [b"hello"]


def test_a_message_longer_than_allowed_is_refused_before_it_is_read(
    pipe: tuple[Connection, Connection],
) -> None:
    parent, child = pipe
    os.write(child.fileno(), struct.pack("!i", 1001))
    reader = FrameReader(parent.fileno(), 1000)
    _readable(parent)
    with pytest.raises(MessageTooLongError, match="of 1001 bytes is longer than the 1000"):
        reader.read()


def test_a_negative_length_is_refused(pipe: tuple[Connection, Connection]) -> None:
    parent, child = pipe
    os.write(child.fileno(), struct.pack("!i", -2))
    reader = FrameReader(parent.fileno(), MAX)
    _readable(parent)
    with pytest.raises(OSError, match="negative length"):
        reader.read()


def test_a_closed_end_is_the_end(pipe: tuple[Connection, Connection]) -> None:
    parent, child = pipe
    child.send_bytes(b"last")
    os.write(child.fileno(), b"\x00\x00\x00\x09part")
    child.close()
    reader = FrameReader(parent.fileno(), MAX)
    _readable(parent)
    assert reader.read() == [b"last"]
    with pytest.raises(EOFError):
        reader.read()
