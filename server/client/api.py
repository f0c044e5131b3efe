"""A Python client for the pdfbatch service; the command-line client is built on it.

    with Client("127.0.0.1:50051") as client:
        batch = client.submit(["invoices/"], name="March")
        for event in client.watch(batch.batch_id):
            ...
        for file in client.files(batch.batch_id, states=[pb.FILE_STATE_SUCCEEDED]):
            text = client.result(batch.batch_id, file.file_id).pages

Replies are bounded whatever the batch's size: ``get`` is the batch, its counts and the
first page of its files (only the counts with ``with_files=False``), and ``files`` pages
through every file.

Idempotent calls (get, list, watch, cancel, results) are retried on ``UNAVAILABLE`` by
gRPC itself (service config: at most 5 attempts, exponential backoff with jitter). A
submit is retried here, by sending the upload again, and only with its idempotency key
(one is made up when none is given), so a retry never creates a second batch. A watch
that loses its connection resumes after the last event it yielded.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from server.client.auth import BearerToken
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.gen.pdfbatch.v1 import batch_pb2_grpc

__all__ = [
    "BUNDLE_FILES",
    "CHUNK_BYTES",
    "SERVICE_CONFIG",
    "Client",
    "ErrorDescription",
    "ExportedResult",
    "FileResult",
    "UploadFile",
    "UploadProgress",
    "collect_files",
    "describe_error",
    "events_of",
]

SERVICE = "pdfbatch.v1.BatchService"
CHUNK_BYTES = 1024 * 1024
# Small files sent whole in one message at most (and CHUNK_BYTES in all): a message
# costs the service about as much as storing a small file.
BUNDLE_FILES = 256
# Events per WatchBatch message the client asks for; the service may cap it lower.
WATCH_EVENTS_PER_MESSAGE = 256
MAX_ATTEMPTS = 5
_IDEMPOTENT = (
    "GetBatch",
    "GetFileHistory",
    "ListBatches",
    "ListFiles",
    "WatchBatch",
    "CancelBatch",
    "GetFileResult",
    "ExportResults",
)
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": SERVICE, "method": method} for method in _IDEMPOTENT],
                "retryPolicy": {
                    "maxAttempts": MAX_ATTEMPTS,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


@dataclass(frozen=True, slots=True)
class ErrorDescription:
    """What a failed call said: status code, ``ErrorInfo`` reason and the message."""

    code: grpc.StatusCode
    reason: str
    message: str
    violations: tuple[tuple[str, str], ...] = ()


def describe_error(error: grpc.RpcError) -> ErrorDescription:
    """Read the status and the rich error details of a failed call."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    message = error.details() if isinstance(error, grpc.Call) else str(error)
    reason = ""
    violations: list[tuple[str, str]] = []
    status: Any = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [(v.field, v.description) for v in bad.field_violations]
    return ErrorDescription(code, reason, message or "", tuple(violations))


@dataclass(frozen=True, slots=True)
class UploadFile:
    """A local file to upload, and the name the batch will know it by."""

    path: Path
    name: str
    password: str | None = field(default=None, repr=False)


def events_of(message: pb.WatchBatchResponse) -> list[pb.WatchBatchResponse]:
    """The events one ``WatchBatch`` message carries, oldest first.

    ``message``'s ``earlier_events``, then ``message`` itself without them.
    """
    if not message.earlier_events:
        return [message]
    newest = pb.WatchBatchResponse()
    newest.CopyFrom(message)
    del newest.earlier_events[:]
    return [*message.earlier_events, newest]


def collect_files(paths: Iterable[str | Path]) -> list[UploadFile]:
    """The files named, and the ``*.pdf`` files under the directories named, sorted.

    Raises:
        FileNotFoundError: A path does not exist.
    """
    found: list[UploadFile] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += [
                UploadFile(p, p.name)
                for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix.lower() == ".pdf"
            ]
        elif path.is_file():
            found.append(UploadFile(path, path.name))
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    return found


@dataclass(frozen=True, slots=True)
class UploadProgress:
    """How far an upload is: what was sent so far, of how much."""

    files_sent: int
    files: int
    bytes_sent: int
    total_bytes: int


@dataclass(frozen=True, slots=True)
class FileResult:
    """A succeeded file's metadata and the text of each of its pages.

    Attributes:
        metadata: What the file is: its information, warnings and structure.
        pages: Each page's text.
        page_details: Each page's size, rotation and character count, by page number
            (pages beyond the service's ``max_page_details`` have none).
    """

    metadata: pb.FileResultMetadata
    pages: list[str]
    page_details: dict[int, pb.PageDetails] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExportedResult:
    """One file of an exported batch: its status and, if it succeeded, its result.

    Attributes:
        status: The file's status (id, name, state, attempts, last error) when exported.
        result: The result's metadata and warnings; ``None`` unless the file succeeded.
        pages: The text of each page; empty unless the file succeeded.
    """

    status: pb.FileStatus
    result: pb.FileResultMetadata | None
    pages: list[str]


def _upload_requests(
    files: list[UploadFile],
    spec: pb.BatchSpec,
    chunk_bytes: int,
    bundle_files: int,
    progress: Callable[[UploadProgress], None] | None,
) -> Iterator[pb.SubmitBatchRequest]:
    """The upload's messages, read as gRPC asks for the next one: at most a message's
    worth of bytes is in memory, whatever the batch's size.

    A file of at most ``chunk_bytes`` travels whole in its header, and such files go
    together in a bundle of at most ``bundle_files`` files and ``chunk_bytes`` bytes;
    a bigger one is a header, then its chunks.
    """
    total = sum(f.path.stat().st_size for f in files)
    sent = 0
    bundle: list[pb.FileHeader] = []
    bundled = 0

    def report(done: int) -> None:
        if progress is not None:
            progress(UploadProgress(done, len(files), sent, total))

    def flush(done: int) -> Iterator[pb.SubmitBatchRequest]:
        nonlocal sent, bundled
        if not bundle:
            return
        if len(bundle) == 1:
            yield pb.SubmitBatchRequest(file=bundle[0])
        else:
            yield pb.SubmitBatchRequest(bundle=pb.FileBundle(files=bundle))
        sent += bundled
        bundle.clear()
        bundled = 0
        report(done)

    yield pb.SubmitBatchRequest(spec=spec)
    for done, file in enumerate(files, start=1):
        with file.path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            header = pb.FileHeader(name=file.name, size_bytes=size)
            if file.password is not None:
                header.password = file.password
            if size <= chunk_bytes:
                # Small enough to travel with its header, and with other small files.
                if bundled + size > chunk_bytes or len(bundle) >= bundle_files:
                    yield from flush(done - 1)
                header.content = handle.read()
                bundle.append(header)
                bundled += size
                continue
            yield from flush(done - 1)
            yield pb.SubmitBatchRequest(file=header)
            while chunk := handle.read(chunk_bytes):
                yield pb.SubmitBatchRequest(chunk=chunk)
                sent += len(chunk)
                report(done - 1)
        report(done)
    yield from flush(len(files))
    # Without it the service stores nothing: a cancel can look like a closed stream.
    yield pb.SubmitBatchRequest(end=pb.UploadEnd(file_count=len(files)))


def _exported(
    opened: tuple[pb.FileStatus, pb.FileResultMetadata | None], pieces: list[list[str]]
) -> ExportedResult:
    status, result = opened
    return ExportedResult(status, result, ["".join(page) for page in pieces])


def _backoff(attempt: int) -> float:
    """Full-jitter exponential backoff: up to 0.2 s, 0.4 s, ... at most 5 s.

    The client speaks the wire only, so it keeps this small rule of its own rather than
    import the service's retry policy; the exponent stops growing at the cap, so no
    attempt number overflows it.
    """
    return random.uniform(0, min(5.0, 0.2 * 2 ** min(attempt - 1, 5)))


class Client:
    """Talks to one pdfbatch server.

    Args:
        address: ``host:port`` of the server.
        timeout: Deadline of each unary call, in seconds. Default 30.
        channel: Use this channel instead of opening one (the client then does not
            close it).
        token: Bearer token sent with every call. Default none.
        credentials: Connect with TLS using these. Default plaintext.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 30.0,
        channel: grpc.Channel | None = None,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._own_channel = channel is None
        if channel is None:
            options = [("grpc.service_config", SERVICE_CONFIG)]
            channel = (
                grpc.insecure_channel(address, options=options)
                if credentials is None
                else grpc.secure_channel(address, credentials, options=options)
            )
        if token is not None:
            channel = grpc.intercept_channel(channel, BearerToken(token))
        self._channel = channel
        self._stub = batch_pb2_grpc.BatchServiceStub(self._channel)
        self._timeout = timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel, if this client opened it."""
        if self._own_channel:
            self._channel.close()

    def submit(
        self,
        files: Iterable[UploadFile | str | Path],
        *,
        name: str = "",
        labels: Mapping[str, str] | None = None,
        policy: pb.BatchPolicy | None = None,
        idempotency_key: str | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        bundle_files: int = BUNDLE_FILES,
        timeout: float | None = None,
        progress: Callable[[UploadProgress], None] | None = None,
    ) -> pb.Batch:
        """Upload files (paths of files or directories) as a new batch.

        Args:
            files: :class:`UploadFile` s, or paths as for :func:`collect_files`.
            name: Display name.
            labels: The batch's labels.
            policy: Overrides of the default policy.
            idempotency_key: Names this submit; default a new random key. ``""`` sends
                none, and then a failed upload is not retried.
            chunk_bytes: Bytes per message. Default 1 MiB.
            bundle_files: Files of at most ``chunk_bytes`` go whole, this many to a
                message at most (a ``FileBundle``). Default 256; 1 sends each in a
                message of its own, as services before December 2026 need.
            timeout: Deadline of the whole upload. Default none.
            progress: Called with the files and bytes sent so far as the upload goes
                (after each bundle, each big file, and each chunk of a big one).

        Returns:
            The batch with its counts and the first page of its files (the service's
            full view); page through the rest with :meth:`files`.

        Raises:
            grpc.RpcError: The server refused the batch, or could not be reached in
                5 attempts.
            FileNotFoundError: A path does not exist.
            ValueError: ``chunk_bytes`` or ``bundle_files`` is below 1.
        """
        if chunk_bytes < 1 or bundle_files < 1:
            raise ValueError("chunk_bytes and bundle_files must be at least 1")
        uploads: list[UploadFile] = []
        for item in files:
            uploads += [item] if isinstance(item, UploadFile) else collect_files([item])
        key = uuid.uuid4().hex if idempotency_key is None else idempotency_key
        spec = pb.BatchSpec(
            display_name=name, labels=dict(labels or {}), idempotency_key=key, policy=policy
        )
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                requests = _upload_requests(uploads, spec, chunk_bytes, bundle_files, progress)
                return self._stub.SubmitBatch(requests, timeout=timeout)
            except grpc.RpcError as error:
                transient = describe_error(error).code is grpc.StatusCode.UNAVAILABLE
                if not (key and transient) or attempt == MAX_ATTEMPTS:
                    raise
                time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    def get(self, batch_id: str, *, with_files: bool = True) -> pb.Batch:
        """The batch and its counts, with the first page of its files
        (``BATCH_VIEW_FULL``: at most the service's ``full_view_files``, and a
        ``next_page_token`` when it has more) unless ``with_files`` is false. Every file
        of a batch of any size: :meth:`files`."""
        view = pb.BATCH_VIEW_FULL if with_files else pb.BATCH_VIEW_BASIC
        request = pb.GetBatchRequest(batch_id=batch_id, view=view)
        return self._stub.GetBatch(request, timeout=self._timeout)

    def list(
        self, *, states: Iterable[pb.BatchState.ValueType] = (), page_size: int = 50
    ) -> Iterator[pb.Batch]:
        """Every batch (without files), newest first, fetching pages as needed."""
        token = ""
        while True:
            request = pb.ListBatchesRequest(page_size=page_size, page_token=token, states=states)
            page = self._stub.ListBatches(request, timeout=self._timeout)
            yield from page.batches
            token = page.next_page_token
            if not token:
                return

    def files(
        self,
        batch_id: str,
        *,
        states: Iterable[pb.FileState.ValueType] = (),
        page_size: int = 1_000,
    ) -> Iterator[pb.FileStatus]:
        """The batch's files in submission order, fetching pages as needed."""
        for page in self.file_pages(batch_id, states=states, page_size=page_size):
            yield from page.files

    def file_pages(
        self,
        batch_id: str,
        *,
        states: Iterable[pb.FileState.ValueType] = (),
        page_size: int = 1_000,
    ) -> Iterator[pb.ListFilesResponse]:
        """The pages of :meth:`files`, each with its ``total_size`` and ``sequence``."""
        states = list(states)
        token = ""
        while True:
            request = pb.ListFilesRequest(
                batch_id=batch_id, page_size=page_size, page_token=token, states=states
            )
            page = self._stub.ListFiles(request, timeout=self._timeout)
            yield page
            token = page.next_page_token
            if not token:
                return

    def watch(
        self,
        batch_id: str,
        *,
        after_sequence: int = 0,
        follow: bool = False,
        max_reconnects: int = 10,
    ) -> Iterator[pb.WatchBatchResponse]:
        """The batch's events, one at a time; see :meth:`watch_messages`.

        Each event is yielded alone (without ``earlier_events``), in sequence order.
        """
        for message in self.watch_messages(
            batch_id,
            after_sequence=after_sequence,
            follow=follow,
            max_reconnects=max_reconnects,
        ):
            yield from events_of(message)

    def watch_messages(
        self,
        batch_id: str,
        *,
        after_sequence: int = 0,
        follow: bool = False,
        max_reconnects: int = 10,
    ) -> Iterator[pb.WatchBatchResponse]:
        """The batch's events as they arrive; reconnects and resumes after a dropped connection.

        Starts with a snapshot when ``after_sequence`` is 0. If the server no longer has
        the events after the last one seen, the watch starts over with a new snapshot.
        Asks for several events per message: when the watch is behind, a message carries
        the events that were waiting, the older ones in its ``earlier_events``
        (:func:`events_of` lists them all). A display redrawn once per message keeps up
        with any rate of events.

        Args:
            batch_id: The batch.
            after_sequence: Resume after this event; 0 for a snapshot first.
            follow: Keep watching after the batch settles (to see retries).
            max_reconnects: Failed reconnects in a row before giving up.

        Raises:
            grpc.RpcError: The batch does not exist, or the server stayed unreachable.
        """
        last = after_sequence
        failures = 0
        while True:
            call = self._stub.WatchBatch(
                pb.WatchBatchRequest(
                    batch_id=batch_id,
                    after_sequence=last,
                    follow=follow,
                    max_events_per_message=WATCH_EVENTS_PER_MESSAGE,
                )
            )
            try:
                for message in call:
                    failures = 0
                    last = message.sequence
                    yield message
                return
            except grpc.RpcError as error:
                described = describe_error(error)
                if failures >= max_reconnects:
                    raise
                if described.reason == "WATCH_HISTORY_EXPIRED":
                    last = 0
                elif described.code is not grpc.StatusCode.UNAVAILABLE:
                    raise
                failures += 1
                time.sleep(_backoff(failures))
            finally:
                call.cancel()

    def retry(
        self,
        batch_id: str,
        file_ids: Iterable[str] = (),
        *,
        passwords: Mapping[str, str] | None = None,
    ) -> pb.Batch:
        """Retry the given files, or every failed and cancelled file: then no id is
        sent, and one call retries them however many they are."""
        request = pb.RetryFilesRequest(
            batch_id=batch_id, file_ids=list(file_ids), passwords=dict(passwords or {})
        )
        return self._stub.RetryFiles(request, timeout=self._timeout)

    def cancel(self, batch_id: str, *, with_files: bool = True) -> pb.Batch:
        """Cancel the batch; returns once nothing of it runs.

        Args:
            batch_id: The batch.
            with_files: Whether the reply carries the first page of files too; without,
                it has the end state and counts only.
        """
        view = pb.BATCH_VIEW_FULL if with_files else pb.BATCH_VIEW_BASIC
        request = pb.CancelBatchRequest(batch_id=batch_id, view=view)
        return self._stub.CancelBatch(request, timeout=self._timeout)

    def result_chunks(self, batch_id: str, file_id: str) -> Iterator[pb.GetFileResultResponse]:
        """The raw result stream: metadata, then pieces of page text."""
        request = pb.GetFileResultRequest(batch_id=batch_id, file_id=file_id)
        yield from self._stub.GetFileResult(request)

    def result(self, batch_id: str, file_id: str) -> FileResult:
        """A succeeded file's metadata and pages, reassembled."""
        metadata = pb.FileResultMetadata()
        pages: list[list[str]] = []
        details: dict[int, pb.PageDetails] = {}
        for chunk in self.result_chunks(batch_id, file_id):
            if chunk.HasField("metadata"):
                metadata = chunk.metadata
                pages = [[] for _ in range(metadata.page_count)]
            else:
                index = chunk.page.page_number - 1
                pages += [[] for _ in range(index + 1 - len(pages))]
                pages[index].append(chunk.page.text)
                if chunk.page.HasField("details"):
                    details[chunk.page.page_number] = chunk.page.details
        return FileResult(metadata, ["".join(pieces) for pieces in pages], details)

    def export_stream(
        self, batch_id: str, *, after: str = "", timeout: float | None = None
    ) -> Iterator[pb.ExportResultsResponse]:
        """The raw export stream: the batch, then each file and the pieces of its text.

        For a consumer that writes each piece as it comes, in constant memory; a file
        is whole once the next ``file`` message arrives or the stream ends. Not
        resumed here when it breaks off: call again with ``after`` the last whole file.

        Args:
            batch_id: The batch.
            after: Start after this file id; default the first file.
            timeout: Deadline of the whole export. Default none.
        """
        request = pb.ExportResultsRequest(batch_id=batch_id, after_file_id=after)
        call = self._stub.ExportResults(request, timeout=timeout)
        try:
            yield from call
        finally:
            call.cancel()

    def export(
        self, batch_id: str, *, after: str = "", max_reconnects: int = 10
    ) -> Iterator[ExportedResult]:
        """Every file of the batch after ``after``, in submission order, with its text.

        Each file is yielded whole (its text in memory: up to the service's result
        limit, 64 MiB by default); use :meth:`export_stream` to write texts piece by
        piece instead. An export that loses its connection resumes after the last file
        it yielded.

        Args:
            batch_id: The batch.
            after: Start after this file id; default the first file.
            max_reconnects: Failed reconnects in a row before giving up.

        Raises:
            grpc.RpcError: The batch or ``after`` does not exist, the service refused
                the export, or it stayed unreachable.
        """
        failures = 0
        while True:
            opened: tuple[pb.FileStatus, pb.FileResultMetadata | None] | None = None
            pieces: list[list[str]] = []
            try:
                for message in self.export_stream(batch_id, after=after):
                    if message.HasField("file"):
                        if opened is not None:
                            yield _exported(opened, pieces)
                            after = opened[0].file_id
                        exported = message.file
                        result = exported.result if exported.HasField("result") else None
                        opened, pieces = (exported.status, result), []
                        failures = 0
                    elif message.HasField("page"):
                        index = message.page.page_number - 1
                        pieces += [[] for _ in range(index + 1 - len(pieces))]
                        pieces[index].append(message.page.text)
                if opened is not None:
                    yield _exported(opened, pieces)
                return
            except grpc.RpcError as error:
                if describe_error(error).code is not grpc.StatusCode.UNAVAILABLE:
                    raise
                if failures >= max_reconnects:
                    raise
                failures += 1
                time.sleep(_backoff(failures))

    def history(
        self, batch_id: str, file_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> pb.GetFileHistoryResponse:
        """One page of the file's state changes and the requests about its batch, oldest
        first (the first page without ``page_token``; 0 asks for the service's 100)."""
        request = pb.GetFileHistoryRequest(
            batch_id=batch_id, file_id=file_id, page_size=page_size, page_token=page_token
        )
        return self._stub.GetFileHistory(request, timeout=self._timeout)

    def history_pages(
        self, batch_id: str, file_id: str, *, page_size: int = 0
    ) -> Iterator[pb.GetFileHistoryResponse]:
        """Every page of :meth:`history`, fetched as the previous one is consumed."""
        token = ""
        while True:
            page = self.history(batch_id, file_id, page_size=page_size, page_token=token)
            yield page
            token = page.next_page_token
            if not token:
                return

    def delete(self, batch_id: str) -> None:
        """Delete the batch, its results and its stored bytes (cancelling it first)."""
        self._stub.DeleteBatch(pb.DeleteBatchRequest(batch_id=batch_id), timeout=self._timeout)
