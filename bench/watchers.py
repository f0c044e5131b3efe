"""The watch scenario's clients: many ``WatchBatch`` streams in a process of their own.

Run by :mod:`bench.watch` as ``python -m bench.watchers ADDRESS COUNT OUTPUT PER_MESSAGE``
(``PER_MESSAGE`` is the ``max_events_per_message`` each stream asks for). Each watcher
gets its own channel (and connection), as separate clients would; all of them share one
asyncio loop, so that the harness spends as little CPU as a client can and the latency
measured is the service's. Once every channel is connected it prints ``ready``; then it
reads the batch id from standard input, opens every stream at once, prints ``watching``
once every stream has its snapshot, and notes, for each event after the stream's
snapshot, the wall-clock time it arrived minus its ``event_time`` (one clock for every
process of the machine). When every stream has ended with the settled batch, it writes
``{"received": [[[sequence, seconds], ...], ...], "messages": n, "cpu_seconds": s}``
(``n`` the messages received by all the streams, ``s`` its own CPU time) to OUTPUT.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from server.client.api import events_of
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc

__all__ = ["main"]

_CONNECT_TIMEOUT = 30.0
# A connection per watcher, not one shared by every channel of the process.
_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


async def _watch(
    channel: grpc.aio.Channel,
    batch_id: str,
    per_message: int,
    out: list[list[float]],
    snapshot_arrived: Callable[[], None],
) -> int:
    """Follow the batch to its end; the number of messages received."""
    stub = batch_pb2_grpc.BatchServiceStub(channel)
    request = pb.WatchBatchRequest(batch_id=batch_id, max_events_per_message=per_message)
    messages = 0
    async for message in stub.WatchBatch(request):
        arrived = time.time()
        messages += 1
        if message.WhichOneof("change") == "snapshot":
            snapshot_arrived()
            continue
        for event in events_of(message):
            out.append([event.sequence, arrived - event.event_time.ToNanoseconds() / 1e9])
    return messages


async def _run(address: str, count: int, per_message: int) -> tuple[list[list[list[float]]], int]:
    channels = [grpc.aio.insecure_channel(address, options=_OPTIONS) for _ in range(count)]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(channel.channel_ready() for channel in channels)), _CONNECT_TIMEOUT
        )
        print("ready", flush=True)
        batch_id = (await asyncio.to_thread(sys.stdin.readline)).strip()
        received: list[list[list[float]]] = [[] for _ in channels]
        waiting = len(channels)

        def snapshot_arrived() -> None:
            nonlocal waiting
            waiting -= 1
            if waiting == 0:
                print("watching", flush=True)

        messages = await asyncio.gather(
            *(
                _watch(c, batch_id, per_message, out, snapshot_arrived)
                for c, out in zip(channels, received, strict=True)
            )
        )
        return received, sum(messages)
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


def main(argv: list[str]) -> int:
    """Watch as described above; 0 once every stream ended."""
    address, count, output, per_message = argv[0], int(argv[1]), Path(argv[2]), int(argv[3])
    received, messages = asyncio.run(_run(address, count, per_message))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    output.write_text(json.dumps({"received": received, "messages": messages, "cpu_seconds": cpu}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
