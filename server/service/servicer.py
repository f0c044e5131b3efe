"""The ``pdfbatch.v1.BatchService`` servicer: protobuf in, runtime calls, protobuf out.

Every method checks its request's shape, calls the runtime (or the upload and watch
helpers), converts the answer, and turns any refusal into a status with rich details.
Nothing here decides anything about batches.

Every call acts for the calling tenant (:meth:`server.security.auth.Authenticator.caller`): it
owns the batches it submits, and another tenant's batch is answered for exactly as a
batch that does not exist (same status, reason and message), so ids leak nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import NoReturn, TypeVar

import grpc
import structlog

from actors.orchestration.runtime import Runtime
from actors.policy.model import FileState
from actors.policy.refusals import BatchNotFound, FileNotFound
from actors.storage.store import Store
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc
from server.security.auth import Authenticator
from server.security.concurrency import TenantCaps
from server.security.ratelimit import RateLimiter
from server.service.caps import tenant_caps
from server.service.requests import RequestContext, begin_request, bound, end_request
from server.service.upload import Uploads
from server.service.watch import WatchHub
from server.wire import convert
from server.wire.errors import FieldViolation, WireError, abort, service_closing, wire_error
from server.wire.paging import PageTokens, file_page, history_page, list_page

__all__ = ["DEFAULT_MAX_EXPORTS", "BatchServicer", "watch_handler"]

DEFAULT_MAX_EXPORTS = 8
# Files read from the store at once by an export: a page's records, never the batch's.
_EXPORT_FILES_PER_READ = 100


# The runtime's words for a batch that does not exist, for one that is someone else's.
_NO_SUCH_BATCH = "No batch with this id exists."
# Tries at reading a full view's batch and first page at the same event.
_CONSISTENT_READS = 3


# Longer than any id this service makes (batch ids have 32 characters, file ids 6).
_MAX_RECORDED_ID = 64
_MAX_RECORDED_DETAIL = 16_384


def _recorded(caller_id: str) -> str:
    """``caller_id`` as logged and audited: whole if it could be an id, else cut short."""
    if len(caller_id) <= _MAX_RECORDED_ID:
        return caller_id
    return caller_id[: _MAX_RECORDED_ID - 1] + "\u2026"


def _current_request_id() -> str:
    """The running call's id, bound by :func:`server.service.requests.bound`."""
    return str(structlog.contextvars.get_contextvars().get("request_id", ""))


def _require(value: str, field: str) -> str:
    if not value:
        raise WireError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "MISSING_FIELD",
            f"{field} is required.",
            violations=[FieldViolation(field, "Required.")],
        )
    return value


_S = TypeVar("_S", bound="BatchServicer")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Result = TypeVar("_Result")
_Unary = Callable[[_S, _Request, grpc.ServicerContext], _Response]
_Streaming = Callable[[_S, _Request, grpc.ServicerContext], Iterator[_Response]]


@contextlib.contextmanager
def _answering(
    servicer: BatchServicer, context: grpc.ServicerContext, action: str, request: object
) -> Iterator[RequestContext]:
    """Refuse the call while closing; audit it; turn whatever it raises into a status."""
    if servicer.closing:
        abort(context, service_closing())
    with servicer.request(context, action, request) as call:
        try:
            yield call
        except grpc.RpcError:
            # The client's side of the call broke off; gRPC already knows.
            call.outcome = "ABANDONED_BY_CLIENT"
            raise
        except Exception as exc:  # noqa: BLE001 - every failure leaves as a status
            error = wire_error(exc)
            call.outcome = f"{error.code.name} {error.reason}"
            abort(context, error)


def _unary(method: _Unary[_S, _Request, _Response]) -> _Unary[_S, _Request, _Response]:
    """A unary method, answered by :func:`_answering`."""

    @functools.wraps(method)
    def answer(self: _S, request: _Request, context: grpc.ServicerContext) -> _Response:
        with _answering(self, context, method.__name__, request) as call:
            response = method(self, request, context)
            call.batch_id = call.batch_id or str(getattr(response, "batch_id", ""))
            return response

    return answer


def _streaming(
    method: _Streaming[_S, _Request, _Response],
) -> _Streaming[_S, _Request, _Response]:
    """A method that streams its response, answered by :func:`_answering`."""

    @functools.wraps(method)
    def answer(self: _S, request: _Request, context: grpc.ServicerContext) -> Iterator[_Response]:
        with _answering(self, context, method.__name__, request):
            yield from method(self, request, context)

    return answer


def _streaming_from_loop(
    method: Callable[[_S, _Request, grpc.ServicerContext], AsyncIterator[_Response]],
) -> Callable[[_S, _Request, grpc.ServicerContext], AsyncIterator[_Response]]:
    """A method whose stream is sent from the server's event loop (see
    :mod:`server.service.serving`): opened on a call thread like :func:`_streaming`'s,
    its failures while streaming turned into a status the same way, and its end logged
    and audited on a call thread."""

    @functools.wraps(method)
    def answer(
        self: _S, request: _Request, context: grpc.ServicerContext
    ) -> AsyncIterator[_Response]:
        if self.closing:
            abort(context, service_closing())
        call = self.begin(context, method.__name__, request)
        try:
            with bound(call):
                stream = method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every failure leaves as a status
            _refuse(context, call, exc, self._store)
        return _sent(self, stream, call, context)

    return answer


async def _sent(
    servicer: BatchServicer,
    stream: AsyncIterator[_Response],
    call: RequestContext,
    context: grpc.ServicerContext,
) -> AsyncIterator[_Response]:
    error = None
    try:
        async with contextlib.aclosing(stream) as messages:  # type: ignore[type-var]
            async for message in messages:
                yield message
    except Exception as exc:  # noqa: BLE001 - every failure leaves as a status
        error = wire_error(exc)
        call.outcome = f"{error.code.name} {error.reason}"
    finally:
        # Also when the client left: the generator is closed, or its task cancelled.
        await servicer.blocking(lambda: end_request(servicer._store, call))
    if error is not None:
        abort(context, error)


def _refuse(
    context: grpc.ServicerContext, call: RequestContext, exc: Exception, store: Store
) -> NoReturn:
    error = wire_error(exc)
    call.outcome = f"{error.code.name} {error.reason}"
    end_request(store, call)
    abort(context, error)


class BatchServicer(batch_pb2_grpc.BatchServiceServicer):
    """Serves ``BatchService`` from a runtime.

    Args:
        runtime: Carries out the commands.
        store: Read for listings.
        uploads: Receives ``SubmitBatch`` streams.
        hub: Streams ``WatchBatch`` events.
        auth: Tells the calling tenant. Default: single-tenant, everyone is ``""``.
        submissions: Rate limit of ``SubmitBatch`` per tenant. Default none.
        retries: Rate limit of ``RetryFiles`` per tenant. Default none.
        exports: Counts ``ExportResults`` streams, each holding a call's thread for as
            long as it runs, per tenant and in all; more are refused with
            ``RESOURCE_EXHAUSTED``. Default: 8 in all, no cap per tenant.
        tokens: Signs and checks page tokens. Default a random key of this process's.
        full_view_files: Files in the first page of a ``BATCH_VIEW_FULL`` reply.
            Default 100.
        threads: Runs what streams sent from the event loop must not run there (see
            :meth:`blocking`). Default: the loop's own executor.
    """

    def __init__(
        self,
        runtime: Runtime,
        store: Store,
        uploads: Uploads,
        hub: WatchHub,
        *,
        auth: Authenticator | None = None,
        submissions: RateLimiter | None = None,
        retries: RateLimiter | None = None,
        exports: TenantCaps | None = None,
        tokens: PageTokens | None = None,
        full_view_files: int = 100,
        threads: Executor | None = None,
    ) -> None:
        self._threads = threads
        self._runtime = runtime
        self._store = store
        self._uploads = uploads
        self._hub = hub
        self._auth = auth or Authenticator(None)
        self._submissions = submissions
        self._retries = retries
        self._tokens = tokens or PageTokens.generate()
        self._full_view_files = full_view_files
        self._closing = threading.Event()
        self._exports = exports or tenant_caps(
            "exports", per_tenant=None, total=DEFAULT_MAX_EXPORTS
        )

    def start_closing(self) -> None:
        """Refuse every new call with ``UNAVAILABLE`` from now on."""
        self._closing.set()

    @property
    def closing(self) -> bool:
        """Whether new calls are refused."""
        return self._closing.is_set()

    @contextlib.contextmanager
    def request(
        self, context: grpc.ServicerContext, action: str, request: object
    ) -> Iterator[RequestContext]:
        """The call's id, log context and audit entry (see :mod:`server.service.requests`)."""
        call = self.begin(context, action, request)
        with bound(call):
            try:
                yield call
            finally:
                end_request(self._store, call)

    def begin(self, context: grpc.ServicerContext, action: str, request: object) -> RequestContext:
        """The call's id and what it asks about; :func:`end_request` logs and audits it."""
        try:
            caller = self._auth.caller(context)
        except WireError:
            caller = "<unauthenticated>"  # the interceptor refuses such calls earlier
        call = begin_request(context, action, caller)
        # What the caller sent goes into every log line and the audit trail: ids that
        # cannot be real are cut short, so a 4 MB id is not written out again per call.
        call.batch_id = _recorded(str(getattr(request, "batch_id", "")))
        file_ids = (_recorded(file_id) for file_id in getattr(request, "file_ids", ()))
        call.detail = ",".join(file_ids)[:_MAX_RECORDED_DETAIL]
        return call

    async def blocking(self, function: Callable[[], _Result]) -> _Result:
        """``function``'s result, run on a call thread: for what a stream sent from the
        event loop must not do there (read or write the store)."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, function)

    def _check_owner(self, batch_id: str, caller: str) -> None:
        """Refuse a batch that is not the caller's as a missing one, reading only its
        record: someone else's batch costs what a missing one does.

        Raises:
            WireError: ``batch_id`` is empty.
            BatchNotFound: No such batch, or not the caller's.
        """
        if self._runtime.record(_require(batch_id, "batch_id")).owner != caller:
            raise BatchNotFound(_NO_SUCH_BATCH)

    def _reply(self, batch_id: str, caller: str, *, with_files: bool) -> pb.Batch:
        """The batch as stored now: its summary, and with ``with_files`` the first page
        of its files and the token of the next (``BATCH_VIEW_FULL``). Never more than a
        page, whatever the batch's size.

        Raises:
            BatchNotFound: The batch is gone.
        """
        for _ in range(_CONSISTENT_READS):
            summary = self._store.batch_summary(batch_id)
            if summary is None:
                raise BatchNotFound(_NO_SUCH_BATCH)
            batch = convert.summary_to_proto(summary)
            if not with_files:
                return batch
            page, token = file_page(
                self._store,
                batch_id,
                self._full_view_files,
                "",
                (),
                caller=caller,
                tokens=self._tokens,
            )
            batch.files.extend(convert.file_to_proto(record) for _, record in page.files)
            batch.next_page_token = token
            # Two reads; a change between them is read again, so that the counts and
            # the files show the same moment (a busy batch may still differ slightly).
            if page.sequence == summary.batch.sequence:
                break
        return batch

    @_unary
    def SubmitBatch(
        self, request_iterator: Iterator[pb.SubmitBatchRequest], context: grpc.ServicerContext
    ) -> pb.Batch:
        caller = self._auth.caller(context)
        if self._submissions is not None:
            self._submissions.acquire(caller)
        batch_id = self._uploads.submit(
            request_iterator, owner=caller, still_wanted=context.is_active
        )
        return self._reply(batch_id, caller, with_files=True)

    @_unary
    def GetBatch(self, request: pb.GetBatchRequest, context: grpc.ServicerContext) -> pb.Batch:
        caller = self._auth.caller(context)
        # The basic view is the stored record and counts: no file is read, whatever
        # the batch's size, and no supervisor is asked.
        summary = self._store.batch_summary(_require(request.batch_id, "batch_id"))
        if summary is None or summary.batch.owner != caller:
            raise BatchNotFound(_NO_SUCH_BATCH)
        if convert.wants_files(request.view, default=False):
            return self._reply(request.batch_id, caller, with_files=True)
        return convert.summary_to_proto(summary)

    @_unary
    def ListBatches(
        self, request: pb.ListBatchesRequest, context: grpc.ServicerContext
    ) -> pb.ListBatchesResponse:
        states = {
            convert.batch_state_from_proto(state, f"states[{index}]")
            for index, state in enumerate(request.states)
        }
        summaries, token = list_page(
            self._store,
            request.page_size,
            request.page_token,
            states,
            owner=self._auth.caller(context),
            tokens=self._tokens,
        )
        return pb.ListBatchesResponse(
            batches=[convert.summary_to_proto(summary) for summary in summaries],
            next_page_token=token,
        )

    @_unary
    def ListFiles(
        self, request: pb.ListFilesRequest, context: grpc.ServicerContext
    ) -> pb.ListFilesResponse:
        caller = self._auth.caller(context)
        self._check_owner(request.batch_id, caller)
        states = {
            convert.file_state_from_proto(state, f"states[{index}]")
            for index, state in enumerate(request.states)
        }
        page, token = file_page(
            self._store,
            request.batch_id,
            request.page_size,
            request.page_token,
            states,
            caller=caller,
            tokens=self._tokens,
        )
        return pb.ListFilesResponse(
            files=[convert.file_to_proto(record) for _, record in page.files],
            next_page_token=token,
            total_size=page.total,
            sequence=page.sequence,
        )

    @_streaming_from_loop
    def WatchBatch(  # type: ignore[override]  # serialized events: see watch_handler
        self, request: pb.WatchBatchRequest, context: grpc.ServicerContext
    ) -> AsyncIterator[bytes]:
        caller = self._auth.caller(context)
        self._check_owner(request.batch_id, caller)
        session = self._hub.open(
            request.batch_id,
            request.after_sequence,
            follow=request.follow,
            tenant=caller,
            events_per_message=request.max_events_per_message,
        )
        if not context.add_callback(session.cancel):
            session.cancel()
        return session.stream(self.blocking)

    @_unary
    def RetryFiles(self, request: pb.RetryFilesRequest, context: grpc.ServicerContext) -> pb.Batch:
        caller = self._auth.caller(context)
        # Before the batch is looked up: a refusal must not depend on whose it is.
        if self._retries is not None:
            self._retries.acquire(caller)
        self._check_owner(request.batch_id, caller)
        for file_id, password in request.passwords.items():
            self._uploads.limits.check_password(password, f"passwords[{file_id!r}]")
        summary = self._runtime.retry(
            request.batch_id,
            list(request.file_ids) or None,
            passwords=dict(request.passwords),
            requested_by=caller,
            request_id=_current_request_id(),
        )
        return self._reply(summary.batch.batch_id, caller, with_files=True)

    @_unary
    def CancelBatch(
        self, request: pb.CancelBatchRequest, context: grpc.ServicerContext
    ) -> pb.Batch:
        caller = self._auth.caller(context)
        self._check_owner(request.batch_id, caller)
        with_files = convert.wants_files(request.view, default=True)
        summary = self._runtime.cancel(
            request.batch_id, reason="client", request_id=_current_request_id()
        )
        return self._reply(summary.batch.batch_id, caller, with_files=with_files)

    @_streaming
    def GetFileResult(
        self, request: pb.GetFileResultRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetFileResultResponse]:
        file_id = _require(request.file_id, "file_id")
        batch_id = request.batch_id
        self._check_owner(batch_id, self._auth.caller(context))
        record, summary = self._runtime.result_summary(batch_id, file_id)
        yield from convert.result_chunks(
            batch_id, record, summary, self._runtime.result_text(batch_id, file_id)
        )

    @_unary
    def GetFileHistory(
        self, request: pb.GetFileHistoryRequest, context: grpc.ServicerContext
    ) -> pb.GetFileHistoryResponse:
        file_id = _require(request.file_id, "file_id")
        caller = self._auth.caller(context)
        self._check_owner(request.batch_id, caller)
        record = self._store.file_record(request.batch_id, file_id)
        if record is None:
            raise FileNotFound(f"The batch has no file with id {file_id!r}.", file_id=file_id)
        # Only the owner's requests (the caller's, once ownership is checked): another
        # tenant's probes of this id are audited under that tenant, and are none of the
        # owner's history.
        page = history_page(
            self._store,
            request.batch_id,
            file_id,
            request.page_size,
            request.page_token,
            caller=caller,
            tokens=self._tokens,
            current_state=record.state,
        )
        return convert.history_to_proto(record, page.entries, page.token)

    @_streaming
    def ExportResults(
        self, request: pb.ExportResultsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportResultsResponse]:
        batch_id = request.batch_id
        # The record first, as for every call: someone else's batch is a missing one.
        self._check_owner(batch_id, self._auth.caller(context))
        after = -1
        if request.after_file_id:
            position = self._store.file_position(batch_id, request.after_file_id)
            if position is None:
                raise FileNotFound(
                    f"after_file_id: the batch has no file with id {request.after_file_id!r}.",
                    file_id=request.after_file_id,
                )
            after = position
        with self._exports.take(self._auth.caller(context)):
            yield from self._export(batch_id, after)

    def _export(self, batch_id: str, after: int) -> Iterator[pb.ExportResultsResponse]:
        """The batch's summary, then each file after position ``after`` with its result,
        read a page of files and a few pieces of text at a time."""
        summary = self._store.batch_summary(batch_id)
        if summary is None:
            raise BatchNotFound(_NO_SUCH_BATCH)
        yield pb.ExportResultsResponse(batch=convert.summary_to_proto(summary))
        while True:
            if self.closing:
                # The client resumes after the last file it received, elsewhere or later.
                raise service_closing()
            page = self._store.file_page(
                batch_id, states=(), after_position=after, limit=_EXPORT_FILES_PER_READ
            )
            if page is None:
                raise BatchNotFound(_NO_SUCH_BATCH)
            for position, record in page.files:
                result = None
                if record.state is FileState.SUCCEEDED:
                    # Stored with the state change that made the file succeed; only a
                    # deletion of the batch since the page was read takes it away.
                    result = self._store.result_summary(batch_id, record.file_id)
                    if result is None and self._store.load_batch(batch_id) is None:
                        raise BatchNotFound(_NO_SUCH_BATCH)
                pieces = (
                    self._store.result_text(batch_id, record.file_id) if result is not None else ()
                )
                yield from convert.exported_file(batch_id, record, result, pieces)
                after = position
            if len(page.files) < _EXPORT_FILES_PER_READ:
                return

    @_unary
    def DeleteBatch(
        self, request: pb.DeleteBatchRequest, context: grpc.ServicerContext
    ) -> pb.DeleteBatchResponse:
        batch_id = request.batch_id
        self._check_owner(batch_id, self._auth.caller(context))
        self._runtime.delete(batch_id, release=self._uploads.release)
        self._hub.batch_deleted(batch_id)
        return pb.DeleteBatchResponse()


def watch_handler(servicer: BatchServicer) -> grpc.RpcMethodHandler[pb.WatchBatchRequest, bytes]:
    """``WatchBatch`` sending the bytes its events were serialized to, as they are.

    Register it over the generated handler, which would serialize them again:
    ``server.add_registered_method_handlers(service, {"WatchBatch": watch_handler(s)})``
    after ``add_BatchServiceServicer_to_server``.
    """
    return grpc.unary_stream_rpc_method_handler(
        servicer.WatchBatch,
        request_deserializer=pb.WatchBatchRequest.FromString,
        response_serializer=None,
    )
