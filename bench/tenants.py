"""``python -m bench.tenants``: what anyone without a token, or another tenant, can take
from a tenant (the figures of issue #17's "done when").

A ``pdfbatch serve`` child with two tenants, acme (A) and globex (B), and the scripted
processor. Side by side in one run, A's calls are timed:

- calm, nothing else going on;
- while 300 health watches and reflection streams are open without a token, never read;
- while B holds every watch it may (and asks for more) and 40 uploads that send a
  header and half a file, then stall.

Then B's ``GetBatch`` on A's 300-file batch is timed against ``GetBatch`` on ids that
do not exist, interleaved, and their medians compared.

The hostile calls are a copy of ``tests/helpers/hostile_tenant.py``, so that the bench
does not import tests. Run it on a quiet machine for figures to compare across runs;
on a busy one, compare the phases of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bench.processors import OK, SCRIPTED
from bench.server_process import ROOT, wait_gone
from server.client.auth import BearerToken
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from server.security.auth import hash_token

__all__ = ["Plan", "main", "measure"]

TOKENS = {"acme": "acme-bench-token-3f9a1c7e", "globex": "globex-bench-token-8b2d4e6f"}
WAIT = 120.0
HOLD = 600.0
OPEN_STREAMS = 300
STALLED_UPLOADS = 40
# Watches B asks for: more than its share (a quarter of the default 64).
WATCHES_ASKED = 64


def _upload(name: str, count: int) -> Iterator[pb.SubmitBatchRequest]:
    yield pb.SubmitBatchRequest(spec=pb.BatchSpec(display_name=name))
    for index in range(count):
        header = pb.FileHeader(name=f"{name}-{index:04d}.pdf", size_bytes=len(OK), content=OK)
        yield pb.SubmitBatchRequest(file=header)
    yield pb.SubmitBatchRequest(end=pb.UploadEnd(file_count=count))


def _stalled(release: threading.Event) -> Iterator[pb.SubmitBatchRequest]:
    yield pb.SubmitBatchRequest(spec=pb.BatchSpec(display_name="stalled"))
    yield pb.SubmitBatchRequest(file=pb.FileHeader(name="stalled.pdf", size_bytes=65536))
    yield pb.SubmitBatchRequest(chunk=b"%PDF-" + b"x" * 32_000)
    release.wait(HOLD)


class _Server:
    """The service in a child process, with the tenants' tokens file."""

    def __init__(self, root: Path) -> None:
        tokens = root / "tokens.toml"
        lines = [f'{t} = ["{hash_token(token)}"]' for t, token in TOKENS.items()]
        tokens.write_text("[tenants]\n" + "\n".join(lines) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PDFBATCH_")}
        env.update(
            PYTHONPATH=str(ROOT),
            PDFBATCH_PROCESSOR=SCRIPTED,
            PDFBATCH_TOKENS_FILE=str(tokens),
            PDFBATCH_SUBMISSION_BURST="10000",
            PDFBATCH_SUBMISSIONS_PER_SECOND="10000",
        )
        self._log = (root / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "server.main", "serve", "--address", "127.0.0.1:0"),
                *("--data-dir", str(root / "data"), "--workers", "2"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the server did not start: {line!r}")
        self.address = line.removeprefix("listening on ").strip()
        self._channels: list[grpc.Channel] = []

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address)
        self._channels.append(channel)
        return channel

    def stub(self, tenant: str) -> batch_pb2_grpc.BatchServiceStub:
        channel = grpc.intercept_channel(self.channel(), BearerToken(TOKENS[tenant]))
        return batch_pb2_grpc.BatchServiceStub(channel)

    def stop(self) -> None:
        for channel in self._channels:
            channel.close()
        tree = [psutil.Process(self.process.pid)]
        tree += tree[0].children(recursive=True)
        self.process.terminate()
        self.process.wait(WAIT)
        wait_gone(tree)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


# Seconds each of A's timed calls may take; a call past it counts as failed.
CALL_TIMEOUT = 10.0


def _timed(call: Callable[[], object], failures: list[str]) -> float:
    """Seconds ``call`` took; a refused call is recorded in ``failures``."""
    began = time.perf_counter()
    try:
        call()
    except grpc.RpcError as error:
        failures.append(error.code().name)
    return time.perf_counter() - began


@dataclass(frozen=True)
class Plan:
    """How many of A's calls each phase times, and how long each may take."""

    samples: int = 200
    call_timeout: float = CALL_TIMEOUT


def _a_calls(a: batch_pb2_grpc.BatchServiceStub, small: str, plan: Plan) -> dict[str, list[float]]:
    """A's GetBatch, submit of one file and watch of a settled batch, timed.

    ``"failed"`` holds one number, not a latency: how many of the calls failed.
    """
    get = pb.GetBatchRequest(batch_id=small)
    watch = pb.WatchBatchRequest(batch_id=small)
    limit = plan.call_timeout
    out: dict[str, list[float]] = {"get": [], "submit": [], "watch": []}
    failed: list[str] = []
    for index in range(plan.samples):
        out["get"].append(_timed(lambda: a.GetBatch(get, timeout=limit), failed))
        if index % 10 == 0:
            out["submit"].append(
                _timed(partial(a.SubmitBatch, _upload("a", 1), timeout=limit), failed)
            )
            out["watch"].append(_timed(lambda: list(a.WatchBatch(watch, timeout=limit)), failed))
    out["failed"] = [float(len(failed))]
    return out


def _settle(stub: batch_pb2_grpc.BatchServiceStub, batch_id: str) -> None:
    for _ in stub.WatchBatch(pb.WatchBatchRequest(batch_id=batch_id), timeout=WAIT):
        pass


def _held(calls: list[Any]) -> int:
    return sum(not call.done() for call in calls)


def measure(plan: Plan, files: int = 300) -> dict[str, Any]:
    """Run every phase; the figures and their raw samples."""
    with tempfile.TemporaryDirectory(prefix="pdfbatch-bench-tenants-") as scratch:
        server = _Server(Path(scratch))
        try:
            return _phases(server, plan, files)
        finally:
            server.stop()


def _phases(server: _Server, plan: Plan, files: int) -> dict[str, Any]:
    a, b = server.stub("acme"), server.stub("globex")
    small = a.SubmitBatch(_upload("small", 1), timeout=WAIT).batch_id
    big = a.SubmitBatch(_upload("big", files), timeout=WAIT).batch_id
    theirs = b.SubmitBatch(_upload("theirs", 1), timeout=WAIT).batch_id
    for batch_id in (small, big):
        _settle(a, batch_id)
    _settle(b, theirs)
    held: dict[str, int] = {}
    phases = {
        "calm": _a_calls(a, small, plan),
        "300 open streams": _under_open_streams(server, a, small, plan, held=held),
        "B holds its watches and 40 stalled uploads": _under_hostile_tenant(
            a, b, small, theirs, plan, held=held
        ),
    }
    foreign, missing = _foreign_and_missing(b, big, plan.samples)
    figures: dict[str, Any] = {"held": held, "phases": {}}
    for phase, calls in phases.items():
        failed = int(calls.pop("failed")[0])
        figures["phases"][phase] = {
            f"{call} {stat} ms": round(1000 * fn(values), 2)
            for call, values in calls.items()
            for stat, fn in (("median", statistics.median), ("max", max))
        } | {"calls failed": failed}
    figures["foreign/missing GetBatch median"] = round(
        statistics.median(foreign) / statistics.median(missing), 3
    )
    figures["foreign GetBatch median ms"] = round(1000 * statistics.median(foreign), 3)
    figures["missing GetBatch median ms"] = round(1000 * statistics.median(missing), 3)
    return figures


def _under_open_streams(
    server: _Server,
    a: batch_pb2_grpc.BatchServiceStub,
    small: str,
    plan: Plan,
    *,
    held: dict[str, int],
) -> dict[str, list[float]]:
    """A's calls while anyone, without a token, opens streams and never reads them."""
    release = threading.Event()
    channels = [server.channel() for _ in range(10)]

    def silent() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        release.wait(HOLD)
        return
        yield

    streams: list[Any] = []
    for index in range(OPEN_STREAMS):
        channel = channels[index % len(channels)]
        if index % 2:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="")
            streams.append(health.Watch(request, timeout=HOLD))
        else:
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            streams.append(reflection.ServerReflectionInfo(silent(), timeout=HOLD))
    try:
        time.sleep(1.0)  # let the refusals come back
        held["open streams held"] = _held(streams)
        return _a_calls(a, small, plan)
    finally:
        release.set()
        for call in streams:
            call.cancel()


def _under_hostile_tenant(
    a: batch_pb2_grpc.BatchServiceStub,
    b: batch_pb2_grpc.BatchServiceStub,
    small: str,
    theirs: str,
    plan: Plan,
    *,
    held: dict[str, int],
) -> dict[str, list[float]]:
    """A's calls while B holds every watch it may and 40 stalled uploads."""
    release = threading.Event()
    follow = pb.WatchBatchRequest(batch_id=theirs, follow=True)
    watches = [b.WatchBatch(follow, timeout=HOLD) for _ in range(WATCHES_ASKED)]
    uploads = [
        b.SubmitBatch.future(_stalled(release), timeout=HOLD) for _ in range(STALLED_UPLOADS)
    ]
    try:
        time.sleep(1.0)
        held["B watches held"] = _held(watches)
        held["B uploads held"] = _held(uploads)
        calls = _a_calls(a, small, plan)
        held["B uploads still held after"] = _held(uploads)
        return calls
    finally:
        release.set()
        for call in (*watches, *uploads):
            call.cancel()


def _foreign_and_missing(
    b: batch_pb2_grpc.BatchServiceStub, big: str, samples: int
) -> tuple[list[float], list[float]]:
    """B's GetBatch on A's big batch and on ids that do not exist, interleaved."""
    foreign: list[float] = []
    missing: list[float] = []
    for _ in range(samples):
        for batch_id, into in ((big, foreign), (uuid.uuid4().hex, missing)):
            request = pb.GetBatchRequest(batch_id=batch_id)
            began = time.perf_counter()
            code = b.GetBatch.future(request, timeout=WAIT).code()
            into.append(time.perf_counter() - began)
            if code != grpc.StatusCode.NOT_FOUND:
                raise RuntimeError(f"B's GetBatch of {batch_id} answered {code}")
    return foreign, missing


def main(argv: list[str] | None = None) -> int:
    """Measure and print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.tenants", description=__doc__)
    parser.add_argument("--samples", type=int, default=200, help="GetBatch calls per phase")
    parser.add_argument("--files", type=int, default=300, help="files of A's big batch")
    parser.add_argument(
        "--call-timeout", type=float, default=CALL_TIMEOUT, help="seconds A's calls may take"
    )
    args = parser.parse_args(argv)
    print(json.dumps(measure(Plan(args.samples, args.call_timeout), args.files), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
