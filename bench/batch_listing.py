"""Part of ``scale-batches``: reading a service that holds many batches, and a big one.

The batches are written into the service's database file through
:class:`~actors.storage.sqlite_store.SQLiteStore` (``create_batch``, as an accepted
upload is stored), settled, before the server starts: ``ListBatches`` and
``GetBatch`` read the same tables and indexes whichever way the rows came, and 10,000
uploads through gRPC would measure the upload, not the listing. (The files' bytes are
not written: neither read needs them, and a settled batch is not resumed.) Then a
``pdfbatch serve`` child serves them, and a client on loopback times each call:

- ``ListBatches``: every page (50 a page, the default), newest first, walked from the
  first page to the last by token, with 100 stored batches and then with 10,000
  (the same run, side by side: the cost of a page must not grow with what is stored);
  also the first pages of a listing filtered to a state that 1% of the batches are in.
- ``GetBatch``: the basic view (counts, no file) and the full view (a first page of
  100 files) of a 100,000-file batch.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc

from actors.policy.model import BatchRecord, BatchState, BatchView, FileRecord, FileState
from actors.policy.rules import BatchPolicy
from actors.storage.sqlite_store import SQLiteStore
from bench.options import Options
from bench.report import Figure, at_most, judged, median, percentile
from bench.server_process import ServerProcess
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from server.service.app import DATABASE_NAME

__all__ = ["listing_latency"]

FEW_BATCHES = 100
MANY_BATCHES = 10_000
FILES_PER_BATCH = 10
BIG_BATCH_FILES = 100_000
# Every hundredth batch ended FAILED: what a filtered listing looks for.
FAILED_EVERY = 100
WALKS = 3
GETS = 200
PAGE_TARGET_MS = 20
DIGEST = "ab" * 32


def _batch(number: int, files: int) -> BatchView:
    state = BatchState.FAILED if number % FAILED_EVERY == 0 else BatchState.SUCCEEDED
    file_state = FileState.FAILED if state is BatchState.FAILED else FileState.SUCCEEDED
    created = 1_700_000_000.0 + number
    record = BatchRecord(
        f"{number:032x}", f"batch {number}", BatchPolicy(), state, created, created + 1
    )
    records = tuple(
        FileRecord(f"f{n:05d}", f"{n}.pdf", DIGEST, 1000, state=file_state)
        for n in range(1, files + 1)
    )
    return BatchView(record, records)


def _seed(data: Path, views: Iterable[BatchView]) -> None:
    """Store ``views`` (made as they are stored), as their uploads would have been."""
    data.mkdir(parents=True, exist_ok=True)
    # NORMAL: seeding is no service's commit, and 10,000 fsyncs would only slow it.
    store = SQLiteStore(data / DATABASE_NAME, synchronous="NORMAL")
    try:
        for view in views:
            store.create_batch(view)
    finally:
        store.close()


def _channel(server: ServerProcess) -> grpc.Channel:
    """A channel of the bench's own: the calls timed are the stub's, nothing around."""
    return grpc.insecure_channel(server.address)


def _timed(call: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    answer = call()
    return (time.perf_counter() - started) * 1000, answer


def _walk(
    stub: batch_pb2_grpc.BatchServiceStub, states: list[int], pages: int | None
) -> list[float]:
    """Milliseconds of each page of one listing, first to last (or ``pages`` pages)."""
    latencies: list[float] = []
    token = ""
    while pages is None or len(latencies) < pages:
        request = pb.ListBatchesRequest(page_token=token, states=states)  # type: ignore[arg-type]
        ms, answer = _timed(lambda request=request: stub.ListBatches(request, timeout=60))
        latencies.append(ms)
        token = answer.next_page_token  # type: ignore[attr-defined]
        if not token:
            break
    return latencies


def _listing(data: Path, workers: int, walks: int) -> dict[str, list[float]]:
    with ServerProcess(data, workers=workers) as server, _channel(server) as channel:
        stub = batch_pb2_grpc.BatchServiceStub(channel)
        _walk(stub, [], 1)  # the first call sets up the connection
        pages = [ms for _ in range(walks) for ms in _walk(stub, [], None)]
        failed = [ms for _ in range(walks) for ms in _walk(stub, [pb.BATCH_STATE_FAILED], 5)]
    return {"pages": pages, "failed_pages": failed}


def _gets(data: Path, workers: int, batch_id: str, count: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    with ServerProcess(data, workers=workers) as server, _channel(server) as channel:
        stub = batch_pb2_grpc.BatchServiceStub(channel)
        for name, view in (("basic", pb.BATCH_VIEW_BASIC), ("full", pb.BATCH_VIEW_FULL)):
            request = pb.GetBatchRequest(batch_id=batch_id, view=view)
            stub.GetBatch(request, timeout=60)
            found[name] = [
                _timed(lambda request=request: stub.GetBatch(request, timeout=60))[0]
                for _ in range(count)
            ]
            size = stub.GetBatch(request, timeout=60).ByteSize()
            found[f"{name}_bytes"] = [float(size)]
    return found


def listing_latency(options: Options) -> list[Figure]:
    """``ListBatches`` pages with 100 and 10,000 stored batches (``--files`` sets the
    larger number), and ``GetBatch`` of a 100,000-file batch (a tenth of ``--files``
    times 100 with ``--files``)."""
    many = options.files or MANY_BATCHES
    big = BIG_BATCH_FILES if options.files is None else max(options.files * 10, 1_000)
    walks = options.repeat or WALKS
    few = min(FEW_BATCHES, many)
    with tempfile.TemporaryDirectory(prefix="bench-listing-") as scratch:
        data = Path(scratch) / "data"
        _seed(data, (_batch(n, FILES_PER_BATCH) for n in range(1, few + 1)))
        # As many pages timed as with many batches, for percentiles worth comparing.
        small = _listing(data, options.workers, walks * max(many // few, 1))
        seeded = time.perf_counter()
        _seed(data, (_batch(n, FILES_PER_BATCH) for n in range(few + 1, many + 1)))
        seed_seconds = time.perf_counter() - seeded
        large = _listing(data, options.workers, walks)
        big_view = _batch(many + 1, big)
        _seed(data, [big_view])
        gets = _gets(data, options.workers, big_view.batch.batch_id, options.repeat or GETS)
    figures = []
    for label, stored, samples in (("few", few, small), ("many", many, large)):
        pages = samples["pages"]
        detail = {"latencies_ms": pages, "stored_batches": stored}
        note = f"p50 {median(pages):.2f} ms over {len(pages)} pages; {stored} stored batches"
        if label == "many":
            figures.append(
                judged(
                    "scale-batches",
                    f"ListBatches page p99, {stored} stored batches",
                    percentile(pages, 0.99),
                    "ms",
                    at_most(PAGE_TARGET_MS),
                    note=note + f" (seeded in {seed_seconds:.0f} s)",
                    detail=detail,
                )
            )
        else:
            figures.append(
                Figure(
                    "scale-batches",
                    f"ListBatches page p99, {stored} stored batches (side by side)",
                    percentile(pages, 0.99),
                    "ms",
                    note=note,
                    detail=detail,
                )
            )
    failed = large["failed_pages"]
    figures.append(
        Figure(
            "scale-batches",
            f"ListBatches page p99, only FAILED (1%), {many} stored batches",
            percentile(failed, 0.99),
            "ms",
            note=f"p50 {median(failed):.2f} ms; first 5 pages, {walks} times",
            detail={"latencies_ms": failed},
        )
    )
    for name in ("basic", "full"):
        samples = gets[name]
        size = gets[f"{name}_bytes"][0]
        figures.append(
            Figure(
                "scale-batches",
                f"GetBatch {name.upper()} p99, {big}-file batch",
                percentile(samples, 0.99),
                "ms",
                note=f"p50 {median(samples):.2f} ms over {len(samples)} calls; "
                f"reply {size / 1024:.1f} KiB",
                detail={"latencies_ms": samples, "reply_bytes": size},
            )
        )
    return figures
