"""The watch scenario's clients: many ``WatchBatch`` streams in a process of their own.

Run by :mod:`bench.watch` as ``python -m bench.watchers ADDRESS COUNT OUTPUT``. Each
watcher gets its own channel (and connection), as separate clients would; all of them
share one asyncio loop, so that the harness spends as little CPU as a client can and
the latency measured is the service's. Once every channel is connected it prints
``ready``; then it reads the batch id from standard input, opens every stream at once
and records ``time.monotonic()`` (one clock for every process of the machine) as each
event arrives. When every stream has ended with the settled batch, it writes
``{"received": [[[sequence, seconds], ...], ...], "cpu_seconds": s}`` (``s`` its own
CPU time) to OUTPUT.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from pathlib import Path

import grpc

from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc

__all__ = ["main"]

_CONNECT_TIMEOUT = 30.0
# A connection per watcher, not one shared by every channel of the process.
_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


async def _watch(channel: grpc.aio.Channel, batch_id: str, out: list[list[float]]) -> None:
    stub = batch_pb2_grpc.BatchServiceStub(channel)
    async for event in stub.WatchBatch(pb.WatchBatchRequest(batch_id=batch_id)):
        arrived = time.monotonic()
        if event.WhichOneof("change") != "snapshot":
            out.append([event.sequence, arrived])


async def _run(address: str, count: int) -> list[list[list[float]]]:
    channels = [grpc.aio.insecure_channel(address, options=_OPTIONS) for _ in range(count)]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(channel.channel_ready() for channel in channels)), _CONNECT_TIMEOUT
        )
        print("ready", flush=True)
        batch_id = (await asyncio.to_thread(sys.stdin.readline)).strip()
        received: list[list[list[float]]] = [[] for _ in channels]
        await asyncio.gather(
            *(_watch(c, batch_id, out) for c, out in zip(channels, received, strict=True))
        )
        return received
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


def main(argv: list[str]) -> int:
    """Watch as described above; 0 once every stream ended."""
    address, count, output = argv[0], int(argv[1]), Path(argv[2])
    received = asyncio.run(_run(address, count))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    output.write_text(json.dumps({"received": received, "cpu_seconds": cpu}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
