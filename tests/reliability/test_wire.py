"""Bad input on the wire (issue #9): every request ends with a precise status.

Hypothesis generates every request message of every RPC (empty, huge, unicode and
control characters, wrong and other tenants' ids, nonsense page tokens, invalid
policies), upload streams that break the protocol or lie about sizes or stop midway,
and raw bytes that are no message at all. Each goes to a real server on loopback, one
per test. Every answer must carry the exact code the request deserves (or one of the
codes its RPC may give, where the request's validity is not known), never ``UNKNOWN``
or ``INTERNAL``, a message with no trace or server path, and rich error details. After
each request the service must still answer its health check; at the end every batch it
accepted is still there, nothing else is, and a new batch still succeeds.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from server.service.app import SERVICE_NAME
from tests.helpers.blob_checks import incoming_blobs, stored_blobs
from tests.helpers.processes import eventually
from tests.helpers.reliability import REPORT
from tests.helpers.security_fixtures import SecureFactory, SecureServer
from tests.helpers.server_fixtures import WAIT, audited, make_pdf, upload
from tests.helpers.wire_checks import (
    OK,
    Accepted,
    Answer,
    Expected,
    Limits,
    UploadOracle,
    answer_of,
    check_answer,
    expect_unary,
    failed,
    watch_waits,
)
from tests.helpers.wire_strategies import Known, PageToken, UploadCase, unary_requests, upload_cases

# Rate limits and the batch quota out of reach: their refusals are tested elsewhere and
# would only blur which code a request deserves.
GENEROUS = {
    "submissions_per_second": 1e6,
    "submission_burst": 1_000_000,
    "retries_per_second": 1e6,
    "retry_burst": 1_000_000,
    "max_active_batches": 1_000_000,
}
LIMITS = Limits(
    max_file_bytes=2048,
    max_batch_bytes=4096,
    max_files_per_batch=3,
    max_name_chars=64,
    max_stored_bytes=50 * 1024**3,
)
KEYS = ("", "key-a", "key-b")
# A watch that rightly waits for events is ended by the client after this long.
WAITING_WATCH_DEADLINE = 0.5
METHOD = "/pdfbatch.v1.BatchService/{}"


def wire_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


@dataclass
class Wire:
    """A server under attack and what it has accepted so far."""

    server: SecureServer
    stub: batch_pb2_grpc.BatchServiceStub
    health: health_pb2_grpc.HealthStub
    channel: grpc.Channel
    batches: dict[str, pb.Batch] = field(default_factory=dict)
    seeds: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    tokens: list[PageToken] = field(default_factory=list)
    by_key: dict[str, Accepted] = field(default_factory=dict)
    stored_bytes: int = 0
    cut_off: list[UploadCase] = field(default_factory=list)

    @property
    def known(self) -> Known:
        """What requests aim at: this world's ids, read at each draw."""
        return Known(
            batch_ids=lambda: sorted(self.batches),
            file_ids=lambda: sorted({f.file_id for b in self.batches.values() for f in b.files}),
            tokens=lambda: self.tokens,
            deletable=lambda: sorted(set(self.batches) - self.seeds),
        )

    @property
    def secrets(self) -> list[str]:
        return [str(self.server.data_dir)]

    def refresh(self, batch_id: str) -> pb.Batch:
        batch = self.stub.GetBatch(
            pb.GetBatchRequest(batch_id=batch_id, view=pb.BATCH_VIEW_FULL), timeout=WAIT
        )
        self.batches[batch_id] = batch
        return batch

    def settle(self, batch_id: str) -> pb.Batch:
        list(self.stub.WatchBatch(pb.WatchBatchRequest(batch_id=batch_id), timeout=WAIT))
        return self.refresh(batch_id)

    def accept(self, batch: pb.Batch, contents: list[tuple[str, str, int]], key: str) -> None:
        """Record a batch the service accepted (or returned again for its key)."""
        assert [(f.name, f.sha256, f.size_bytes) for f in batch.files] == contents
        earlier = self.by_key.get(key) if key else None
        if earlier is not None:
            assert batch.batch_id == earlier.batch_id, "an idempotent upload made a new batch"
            REPORT.invariant("wire: idempotency key returns its batch")
            return
        assert batch.batch_id not in self.batches
        self.batches[batch.batch_id] = batch
        self.stored_bytes += sum(size for _, _, size in contents)
        if key:
            self.by_key[key] = Accepted(batch.batch_id, contents)

    def still_serving(self) -> None:
        for name in ("", SERVICE_NAME):
            request = health_pb2.HealthCheckRequest(service=name)
            reply = self.health.Check(request, timeout=WAIT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        REPORT.invariant("wire: service still serving")

    def no_temp_files(self) -> None:
        eventually(lambda: incoming_blobs(self.server.data_dir / "blobs") == [])
        REPORT.invariant("wire: no half-received upload left")

    def nothing_lost(self) -> None:
        """Every accepted batch is there, listed, and nothing else; a new batch succeeds."""
        for batch_id, before in self.batches.items():
            now = self.stub.GetBatch(
                pb.GetBatchRequest(batch_id=batch_id, view=pb.BATCH_VIEW_FULL), timeout=WAIT
            )
            assert [f.file_id for f in now.files] == [f.file_id for f in before.files]
        for batch_id in self.deleted:
            missing = answer_of(
                lambda b=batch_id: self.stub.GetBatch(
                    pb.GetBatchRequest(batch_id=b, view=pb.BATCH_VIEW_FULL), timeout=WAIT
                )
            )
            assert missing.code == grpc.StatusCode.NOT_FOUND
        extra = self.listed() - set(self.batches)
        assert not extra, f"batches no answer accepted: {[self.describe(b) for b in extra]}"
        assert self.listed() == set(self.batches)
        REPORT.invariant("wire: nothing accepted was lost")
        self.no_temp_files()
        stored = {p.name for p in stored_blobs(self.server.data_dir / "blobs")}
        digests = {f.sha256 for b in self.batches.values() for f in b.files}
        assert stored == digests, "stored bytes differ from the accepted batches' files"
        REPORT.invariant("wire: only accepted uploads stored")
        fresh = self.stub.SubmitBatch(
            upload(pb.BatchSpec(display_name="after"), [("after.pdf", make_pdf("after"))]),
            timeout=WAIT,
        )
        assert self.settle(fresh.batch_id).state == pb.BATCH_STATE_SUCCEEDED
        REPORT.invariant("wire: a valid batch still succeeds")
        eventually(lambda: self.server.service.hub.open_watches == 0)
        REPORT.invariant("wire: no watch left open")

    def newest(self) -> str | None:
        """The id of the batch created last, if any batch is listed."""
        page = self.stub.ListBatches(pb.ListBatchesRequest(page_size=1), timeout=WAIT)
        return page.batches[0].batch_id if page.batches else None

    def describe(self, batch_id: str) -> str:
        batch = self.stub.GetBatch(
            pb.GetBatchRequest(batch_id=batch_id, view=pb.BATCH_VIEW_FULL), timeout=WAIT
        )
        files = [(f.name, f.size_bytes) for f in batch.files]
        return f"{batch_id} key={batch.idempotency_key!r} files={files}"

    def listed(self) -> set[str]:
        seen: set[str] = set()
        token = ""
        while True:
            request = pb.ListBatchesRequest(page_size=7, page_token=token)
            page = self.stub.ListBatches(request, timeout=WAIT)
            seen |= {b.batch_id for b in page.batches}
            if not (token := page.next_page_token):
                return seen


@pytest.fixture
def wire(secure_serve: SecureFactory) -> Iterator[Wire]:
    """A single-tenant server with the test's limits, two settled batches in it."""
    server = secure_serve(tenants=False, security=GENEROUS, limits=_limits())
    channel = server.channel()
    world = Wire(
        server,
        batch_pb2_grpc.BatchServiceStub(channel),
        health_pb2_grpc.HealthStub(channel),
        channel,
    )
    yield world
    world.nothing_lost()


def _limits() -> dict[str, int]:
    return {
        "max_file_bytes": LIMITS.max_file_bytes,
        "max_batch_bytes": LIMITS.max_batch_bytes,
        "max_files_per_batch": LIMITS.max_files_per_batch,
        "max_name_chars": LIMITS.max_name_chars,
    }


def _seed(world: Wire, *files: tuple[str, bytes], protect: bool = True) -> None:
    batch = world.stub.SubmitBatch(upload(pb.BatchSpec(), files), timeout=WAIT)
    contents = UploadOracle(LIMITS, {}, 0).contents(list(upload(pb.BatchSpec(), files)))
    world.accept(batch, contents, "")
    world.settle(batch.batch_id)
    if protect:
        world.seeds.add(batch.batch_id)


def seeded(world: Wire) -> Wire:
    """Settled batches to aim at: one succeeded, one partly, three to delete."""
    if not world.seeds:
        _seed(world, ("good.pdf", make_pdf("good")))
        _seed(world, ("good.pdf", make_pdf("good")), ("bad.pdf", b"not a pdf"))
        for n in range(3):
            _seed(world, (f"scratch-{n}.pdf", b"scratch %d" % n), protect=False)
    return world


def _reason(answer: Answer) -> str:
    """The refusal's reason, for Hypothesis's statistics."""
    if answer.status is None:
        return ""
    info = error_details_pb2.ErrorInfo()
    found = [d for d in answer.status.details if d.Unpack(info)]
    return info.reason if found else ""


# Unary and server-streaming RPCs ---------------------------------------------------------


def _send(world: Wire, rpc: str, request: Any) -> Answer:
    if rpc == "WatchBatch":
        waits = watch_waits(request, world.batches)
        call = world.stub.WatchBatch(request, timeout=WAITING_WATCH_DEADLINE if waits else WAIT)
        try:
            first = next(call, None)
        except grpc.RpcError as error:
            return failed(error)
        call.cancel()
        return Answer(OK, items=[first] if first is not None else [])
    if rpc == "GetFileResult":
        return answer_of(lambda: list(world.stub.GetFileResult(request, timeout=WAIT)))
    return answer_of(lambda: getattr(world.stub, rpc)(request, timeout=WAIT))


def _after(world: Wire, rpc: str, request: Any, answer: Answer) -> None:
    """Keep the model in step with what an accepted request changed; check replies."""
    if answer.code != OK:
        if rpc == "CancelBatch" and request.batch_id in world.batches:
            before = world.batches[request.batch_id]
            after = world.refresh(request.batch_id)
            assert (after.state, after.sequence) == (before.state, before.sequence)
            REPORT.invariant("wire: a refused cancel changes nothing")
        return
    match rpc:
        case "ListBatches":
            if answer.response.next_page_token:
                token = PageToken(answer.response.next_page_token, tuple(request.states))
                world.tokens.append(token)
            assert len(answer.response.batches) <= (request.page_size or 50)
        case "ListFiles":
            page = answer.response
            assert len(page.files) <= min(request.page_size or 100, 1000)
            assert page.total_size <= world.batches[request.batch_id].file_count
        case "DeleteBatch":
            world.batches.pop(request.batch_id)
            world.deleted.add(request.batch_id)
        case "RetryFiles":
            world.settle(request.batch_id)
        case "GetBatch" | "CancelBatch":
            reply = answer.response
            assert reply.batch_id == request.batch_id
            # GetBatch is basic unless asked for the full view, CancelBatch the opposite;
            # the full view is a first page: all of a small batch's files, and a token
            # exactly when there are more.
            basic = request.view == pb.BATCH_VIEW_BASIC or (
                rpc == "GetBatch" and request.view == pb.BATCH_VIEW_UNSPECIFIED
            )
            if basic:
                assert not reply.files, f"{rpc} in the basic view carried files"
                assert not reply.next_page_token
            else:
                assert len(reply.files) == min(reply.file_count, 100)
                assert bool(reply.next_page_token) == (reply.file_count > 100)
            REPORT.invariant("wire: a reply carries the files its view asks for")
        case "GetFileResult":
            assert answer.response[0].metadata.file_id == request.file_id
        case "WatchBatch" if request.after_sequence == 0:
            assert answer.items[0].snapshot.batch_id == request.batch_id


def unary_example(world: Wire, data: st.DataObject) -> None:
    world = seeded(world)
    rpc, request = data.draw(unary_requests(world.known), label="request")
    expected = expect_unary(rpc, request, world.batches, world.tokens)
    REPORT.attack(f"wire: {rpc}")
    answer = _send(world, rpc, request)
    event(f"{rpc}: {answer.code.name} {_reason(answer)}")
    check_answer(rpc, answer, expected, secrets=world.secrets)
    _after(world, rpc, request, answer)
    world.still_serving()


@wire_settings(400)
@given(data=st.data())
def test_every_request_of_every_rpc_ends_with_a_precise_status(
    wire: Wire, data: st.DataObject
) -> None:
    unary_example(wire, data)


@pytest.mark.soak
@wire_settings(3000)
@given(data=st.data())
def test_every_request_of_every_rpc_ends_with_a_precise_status_soak(
    wire: Wire, data: st.DataObject
) -> None:
    unary_example(wire, data)


# Uploads -------------------------------------------------------------------------------


def _submit(stub: batch_pb2_grpc.BatchServiceStub, case: UploadCase, request_id: str) -> Answer:
    """Send the stream; cancel it after ``case.cancel_after`` messages if asked to."""
    metadata = [("x-request-id", request_id)]
    if case.cancel_after is None:
        return _finished(stub.SubmitBatch, case.messages, metadata)
    # The client stops midway: the stream stays open until the call is cancelled.
    reached, release = _Latch(), _Latch()

    def stream() -> Iterator[pb.SubmitBatchRequest]:
        yield from case.messages[: case.cancel_after]
        reached.open()
        release.wait()

    future = stub.SubmitBatch.future(stream(), timeout=WAIT, metadata=metadata)
    future.add_done_callback(lambda _: reached.open())  # refused before the end
    reached.wait()
    future.cancel()
    release.open()
    if future.cancelled():
        return Answer(grpc.StatusCode.CANCELLED)
    try:
        return Answer(OK, response=future.result())
    except grpc.RpcError as error:
        return failed(error)


def _finished(submit: Any, messages: Sequence[Any], metadata: Sequence[Any] = ()) -> Answer:
    """Send a whole upload and wait, bounded, for its answer.

    The future API rather than a blocking call: one soak run saw grpcio's blocking
    stream-unary call wait forever for an answer, its deadline long past, while the
    server had finished the call. A hang must fail the test, not stop the run.
    """
    future = submit.future(iter(messages), timeout=WAIT, metadata=metadata)
    try:
        return Answer(OK, response=future.result(timeout=2 * WAIT))
    except grpc.FutureTimeoutError:
        future.cancel()
        raise AssertionError("SubmitBatch never ended") from None
    except grpc.RpcError as error:
        return failed(error)


class _Latch:
    def __init__(self) -> None:
        self._event = threading.Event()

    def open(self) -> None:
        self._event.set()

    def wait(self) -> None:
        assert self._event.wait(WAIT), "an upload stream never got that far"


def upload_example(world: Wire, data: st.DataObject) -> None:
    case = data.draw(upload_cases(KEYS, LIMITS.max_file_bytes + 16), label="upload")
    oracle = UploadOracle(LIMITS, world.by_key, world.stored_bytes)
    if case.cancel_after is None:
        expected = oracle.outcome(case.messages, case.spec_valid, closed=True)
        assert expected is not None
    else:
        sent = case.messages[: case.cancel_after]
        early = oracle.outcome(sent, case.spec_valid, closed=False)
        expected = Expected.exactly(grpc.StatusCode.CANCELLED)
        expected = expected if early is None else expected | early
    REPORT.attack(
        "wire: SubmitBatch" if case.cancel_after is None else "wire: SubmitBatch, cut off"
    )
    request_id = uuid.uuid4().hex
    answer = _submit(world.stub, case, request_id)
    cut = ""
    if case.cancel_after is not None:
        sent = case.messages[: case.cancel_after]
        after_end = any(m.WhichOneof("item") == "end" for m in sent)
        cut = ", cut off after end" if after_end else ", cut off"
    event(f"SubmitBatch ({case.ending}{cut}): {answer.code.name} {_reason(answer)}")
    check_answer("SubmitBatch", answer, expected, secrets=world.secrets)
    if answer.code == OK:
        spec = case.messages[0].spec
        world.accept(answer.response, oracle.contents(case.messages), spec.idempotency_key)
    elif case.cancel_after is not None:
        world.cut_off.append(case)
        _after_cancel(world, case, oracle, request_id)
    world.no_temp_files()
    world.still_serving()


def _after_cancel(world: Wire, case: UploadCase, oracle: UploadOracle, request_id: str) -> None:
    """A cancel before a right ``end`` left no batch; one after it may have been too late."""
    sent = case.messages[: case.cancel_after]
    complete = oracle.complete(sent, case.spec_valid)
    if complete:
        # The service is done with the call, batch or not, once it has audited it.
        eventually(lambda: bool(audited(world.server.data_dir, "SubmitBatch", request_id)))
    newest = world.newest()
    if newest is None or newest in world.batches:
        REPORT.invariant("wire: a cancelled upload left no batch")
        return
    assert complete, f"an upload cancelled before its end made a batch: {world.describe(newest)}"
    # The whole upload and its `end` were sent: the cancel came too late, as it may.
    REPORT.invariant("wire: a cancel after end may come too late")
    batch = world.stub.GetBatch(
        pb.GetBatchRequest(batch_id=newest, view=pb.BATCH_VIEW_FULL), timeout=WAIT
    )
    world.accept(batch, oracle.contents(sent), sent[0].spec.idempotency_key)


@wire_settings(400)
@given(data=st.data())
def test_every_upload_stream_ends_with_a_precise_status(wire: Wire, data: st.DataObject) -> None:
    upload_example(wire, data)


@pytest.mark.soak
@wire_settings(3000)
@given(data=st.data())
def test_every_upload_stream_ends_with_a_precise_status_soak(
    wire: Wire, data: st.DataObject
) -> None:
    upload_example(wire, data)


# Bytes that are no message ---------------------------------------------------------------

_REQUEST_TYPES: dict[str, Any] = {
    "GetBatch": pb.GetBatchRequest,
    "ListBatches": pb.ListBatchesRequest,
    "ListFiles": pb.ListFilesRequest,
    "WatchBatch": pb.WatchBatchRequest,
    "RetryFiles": pb.RetryFilesRequest,
    "CancelBatch": pb.CancelBatchRequest,
    "GetFileResult": pb.GetFileResultRequest,
    "GetFileHistory": pb.GetFileHistoryRequest,
    "DeleteBatch": pb.DeleteBatchRequest,
    "Health/Check": health_pb2.HealthCheckRequest,
}
_MALFORMED = Expected.exactly(grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")


def _raw_bytes() -> st.SearchStrategy[bytes]:
    """Random bytes, and encodings of real requests cut short or with a byte changed."""
    encoded = st.sampled_from(
        [
            pb.GetBatchRequest(batch_id="b" * 40).SerializeToString(),
            pb.SubmitBatchRequest(spec=pb.BatchSpec(display_name="n")).SerializeToString(),
            pb.SubmitBatchRequest(file=pb.FileHeader(name="a", size_bytes=3)).SerializeToString(),
            pb.SubmitBatchRequest(end=pb.UploadEnd(file_count=1)).SerializeToString(),
            pb.RetryFilesRequest(batch_id="b", file_ids=["f"]).SerializeToString(),
        ]
    )

    def mutate(data: bytes, at: int, value: int, cut: bool) -> bytes:
        at %= len(data)
        return data[:at] if cut else data[:at] + bytes([value]) + data[at + 1 :]

    mutated = st.builds(mutate, encoded, st.integers(0, 100), st.integers(0, 255), st.booleans())
    return st.one_of(st.binary(max_size=64), mutated)


def _decoded(message_type: Any, data: bytes) -> Any:
    try:
        return message_type.FromString(data)
    except DecodeError:
        return None


def _expect_raw_unary(rpc: str, data: bytes) -> Expected:
    request = _decoded(_REQUEST_TYPES[rpc], data)
    if request is None:
        return _MALFORMED
    if rpc == "Health/Check":
        known = request.service in ("", SERVICE_NAME)
        return Expected.exactly(OK if known else grpc.StatusCode.NOT_FOUND)
    return expect_unary(rpc, request, {}, [])


def _expect_raw_upload(world: Wire, messages: Sequence[bytes]) -> tuple[Expected, list[Any]]:
    oracle = UploadOracle(LIMITS, world.by_key, world.stored_bytes)
    decoded: list[Any] = []
    for data in messages:
        message = _decoded(pb.SubmitBatchRequest, data)
        if message is None:
            early = oracle.outcome(decoded, None, closed=False)
            return (_MALFORMED if early is None else early | _MALFORMED), decoded
        decoded.append(message)
    outcome = oracle.outcome(decoded, None, closed=True)
    assert outcome is not None
    return outcome, decoded


def raw_example(world: Wire, data: st.DataObject) -> None:
    rpc = data.draw(st.sampled_from(["SubmitBatch", *_REQUEST_TYPES]), label="rpc")
    REPORT.attack(f"wire: raw bytes to {rpc}")
    if rpc == "SubmitBatch":
        messages = data.draw(st.lists(_raw_bytes(), min_size=1, max_size=4), label="messages")
        expected, decoded = _expect_raw_upload(world, messages)
        call = world.channel.stream_unary(
            METHOD.format(rpc), request_serializer=bytes, response_deserializer=pb.Batch.FromString
        )
        answer = _finished(call, messages)
        event(f"raw {rpc}: {answer.code.name} {_reason(answer)}")
        check_answer(rpc, answer, expected, secrets=world.secrets)
        if answer.code == OK:
            contents = UploadOracle(LIMITS, {}, 0).contents(decoded)
            world.accept(answer.response, contents, decoded[0].spec.idempotency_key)
        world.still_serving()
        return
    payload = data.draw(_raw_bytes(), label="bytes")
    expected = _expect_raw_unary(rpc, payload)
    method = "/grpc.health.v1.Health/Check" if rpc == "Health/Check" else METHOD.format(rpc)
    answer = _raw_call(world.channel, rpc, method, payload)
    event(f"raw {rpc}: {answer.code.name} {_reason(answer)}")
    check_answer(
        rpc,
        answer,
        expected,
        secrets=world.secrets,
        rich_required=rpc != "Health/Check" or expected is _MALFORMED,
    )
    world.still_serving()


def _raw_call(channel: grpc.Channel, rpc: str, method: str, payload: bytes) -> Answer:
    if rpc in ("WatchBatch", "GetFileResult"):
        stream = channel.unary_stream(method, request_serializer=bytes)
        return answer_of(lambda: list(stream(payload, timeout=WAIT)))
    unary: Callable[..., Any] = channel.unary_unary(method, request_serializer=bytes)
    return answer_of(lambda: unary(payload, timeout=WAIT))


@wire_settings(300)
@given(data=st.data())
def test_bytes_that_are_no_request_are_refused_as_malformed(
    wire: Wire, data: st.DataObject
) -> None:
    raw_example(wire, data)


@pytest.mark.soak
@wire_settings(2000)
@given(data=st.data())
def test_bytes_that_are_no_request_are_refused_as_malformed_soak(
    wire: Wire, data: st.DataObject
) -> None:
    raw_example(wire, data)


# Another tenant's ids ---------------------------------------------------------------------


@dataclass
class Tenants:
    """A server with two tenants; ``acme`` owns two settled batches, ``globex`` attacks."""

    server: SecureServer
    acme: batch_pb2_grpc.BatchServiceStub
    globex: batch_pb2_grpc.BatchServiceStub
    owned: dict[str, pb.Batch]

    @property
    def known(self) -> Known:
        ids = sorted(self.owned)
        files = sorted({f.file_id for b in self.owned.values() for f in b.files})
        return Known(lambda: ids, lambda: files, lambda: [], lambda: ids)


@pytest.fixture
def tenants(secure_serve: SecureFactory) -> Iterator[Tenants]:
    server = secure_serve(security=GENEROUS)
    acme, globex = server.stub("acme"), server.stub("globex")
    owned = {}
    for files in ([("a.pdf", make_pdf("a"))], [("a.pdf", make_pdf("a")), ("b.pdf", b"no")]):
        batch = acme.SubmitBatch(upload(pb.BatchSpec(), files), timeout=WAIT)
        list(acme.WatchBatch(pb.WatchBatchRequest(batch_id=batch.batch_id), timeout=WAIT))
        owned[batch.batch_id] = acme.GetBatch(
            pb.GetBatchRequest(batch_id=batch.batch_id, view=pb.BATCH_VIEW_FULL)
        )
    world = Tenants(server, acme, globex, owned)
    yield world
    for batch_id, before in owned.items():
        after = acme.GetBatch(
            pb.GetBatchRequest(batch_id=batch_id, view=pb.BATCH_VIEW_FULL), timeout=WAIT
        )
        assert (after.state, after.sequence) == (before.state, before.sequence)
    REPORT.invariant("wire: another tenant's batch untouched")


def tenant_example(world: Tenants, data: st.DataObject) -> None:
    rpc, request = data.draw(unary_requests(world.known), label="request")
    # globex owns nothing: acme's ids must be answered as ids that do not exist.
    expected = expect_unary(rpc, request, {}, [])
    REPORT.attack(f"wire: {rpc} as another tenant")
    answer = _send_as(world.globex, rpc, request)
    event(f"{rpc}: {answer.code.name} {_reason(answer)}")
    check_answer(rpc, answer, expected, secrets=[str(world.server.data_dir)])
    if getattr(request, "batch_id", "") in world.owned:
        unknown = type(request)()
        unknown.CopyFrom(request)
        unknown.batch_id = uuid.uuid4().hex
        twin = _send_as(world.globex, rpc, unknown)
        assert (twin.code, twin.details) == (answer.code, answer.details)
        REPORT.invariant("wire: another tenant's id tells nothing")


def _send_as(stub: batch_pb2_grpc.BatchServiceStub, rpc: str, request: Any) -> Answer:
    if rpc in ("WatchBatch", "GetFileResult"):
        return answer_of(lambda: list(getattr(stub, rpc)(request, timeout=WAIT)))
    return answer_of(lambda: getattr(stub, rpc)(request, timeout=WAIT))


@wire_settings(150)
@given(data=st.data())
def test_another_tenants_ids_are_answered_as_ids_that_do_not_exist(
    tenants: Tenants, data: st.DataObject
) -> None:
    tenant_example(tenants, data)


@pytest.mark.soak
@wire_settings(1500)
@given(data=st.data())
def test_another_tenants_ids_are_answered_as_ids_that_do_not_exist_soak(
    tenants: Tenants, data: st.DataObject
) -> None:
    tenant_example(tenants, data)
