"""``SubmitBatch`` uploads: from a stream of messages to stored blobs and a new batch.

Each file is written to a temporary file in the blob store while it arrives (a file
declared no bigger than the store's ``inline_max_bytes``: to a row of its database),
hashed on the way, and checked against its header. The upload's batch is stored when its
spec arrives, hidden from every reader, and its files are added as they arrive, a group
at a time (:data:`GROUP_FILES`, :data:`GROUP_SECONDS`): the blobs of a group are placed
under their digests and its files stored in one transaction, after which the upload
holds nothing of them, so that its memory does not grow with the number of files.

The batch becomes visible only once the client has sent ``end`` and closed the stream;
a stream that breaks off (client gone, deadline, a limit) or ends without ``end`` leaves
no batch, no blob and no temporary file: the hidden batch is deleted with the blobs
nobody else refers to (after a crash, by the next start). ``end`` is what tells a
complete upload from a cancelled one: grpcio's sync server can hand a cancel to the
request iterator as a plain end of stream.

Limits, and the tenant's quotas, are enforced as early as they can be: a header that
declares too much is refused before any of its bytes are read, and the bytes it declares
stay reserved against the tenant's quota until the upload ends. A tenant may have only
so many uploads open at once, and everyone together only so many (each holds a thread);
an upload that pauses too long between messages, or takes too long in all, is ended
(:mod:`server.security.pacing`).

Blobs are content-addressed and shared between batches. Placing a group's blobs and
storing its files, and deleting blobs nobody refers to any more, happen under one lock,
so a blob is never deleted between an upload finding it stored and its batch referring
to it (an upload's hidden batch counts as referring to its blobs). The batch's files
are processed as they arrive, from the first group on, while the batch stays hidden
(:mod:`actors.orchestration.upload`): each group's blobs are made durable with one flush
of the file system before its files are stored, and so before any of them is processed.
"""

from __future__ import annotations

import contextlib
import errno
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import grpc
import structlog

from actors.orchestration.runtime import NewFile, Runtime, Upload, validate_file_name
from actors.policy.catalogue import StorageUnavailableError
from actors.policy.refusals import InvalidRequest
from actors.storage.blobs import BlobStore, BlobWriter, InlineBlobWriter
from actors.storage.store import Store
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.security.concurrency import TenantCaps
from server.security.pacing import paced
from server.security.quotas import Admission, TenantQuotas
from server.service.settings import UploadLimits
from server.wire import convert
from server.wire.errors import FieldViolation, WireError

__all__ = ["GROUP_BYTES", "GROUP_FILES", "GROUP_SECONDS", "Uploads"]

log = structlog.get_logger(__name__)

# An upload stores its files a group at a time, one transaction each: this many files,
# this many bytes, or those received within this many seconds, whichever comes first. A
# group is what the upload holds (small files' bytes in memory, until their group is
# stored); a transaction costs an fsync.
GROUP_FILES = 500
GROUP_BYTES = 8 * 1024 * 1024
GROUP_SECONDS = 0.05

_SHA256 = re.compile(r"[0-9a-f]{64}")
_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass(slots=True)
class _Received:
    """An upload as far as it arrived."""

    spec: convert.BatchSpec
    upload: Upload
    admission: Admission
    # Files whose header arrived, and the bytes their headers declare in all.
    count: int = 0
    declared: int = 0
    # When the files not stored yet began to gather, and the bytes they declare.
    group_began: float = field(default_factory=time.monotonic)
    group_bytes: int = 0

    def group_is_full(self, pending: list[_Staged]) -> bool:
        """Whether the files received and not stored yet are to be stored now."""
        return (
            len(pending) >= GROUP_FILES
            or self.group_bytes >= GROUP_BYTES
            or time.monotonic() - self.group_began >= GROUP_SECONDS
        )


@dataclass(slots=True)
class _Staged:
    """A file received, or being received, into a temporary file."""

    name: str
    password: str | None
    declared: int
    sha256: str
    # A row for a file of at most the blob store's inline_max_bytes, else a file.
    writer: BlobWriter | InlineBlobWriter
    # The header carried the bytes: no chunk may follow.
    inline: bool = False


def _bad(reason: str, message: str, field: str, code: grpc.StatusCode = _INVALID) -> WireError:
    return WireError(code, reason, message, violations=[FieldViolation(field, message)])


class Uploads:
    """Receives uploads into the blob store and submits them to the runtime.

    Args:
        runtime: Takes the batches.
        store: Tells which blobs are still referred to.
        blobs: Where the bytes go.
        limits: What one upload may hold.
        quotas: What each tenant may hold. Default: no quotas.
        open_uploads: Uploads open at once, per tenant and in all. Default: no caps.
    """

    def __init__(
        self,
        runtime: Runtime,
        store: Store,
        blobs: BlobStore,
        limits: UploadLimits,
        *,
        quotas: TenantQuotas | None = None,
        open_uploads: TenantCaps | None = None,
    ) -> None:
        self._runtime = runtime
        self._store = store
        self._blobs = blobs
        self._limits = limits
        self._quotas = quotas
        self._open_uploads = open_uploads
        # Shared with retention, which deletes blobs nobody refers to.
        self._lock = blobs.reference_lock

    @property
    def limits(self) -> UploadLimits:
        """What one upload may hold (the password bound applies to retries too)."""
        return self._limits

    def submit(
        self,
        requests: Iterator[pb.SubmitBatchRequest],
        *,
        owner: str,
        still_wanted: Callable[[], bool] = lambda: True,
    ) -> str:
        """Receive the stream into a hidden batch, then make the batch visible.

        With an idempotency key ``owner`` used before for the same files, the existing
        batch is returned and nothing new is kept.

        Args:
            requests: The upload's messages.
            owner: The tenant the batch is for.
            still_wanted: Asked right before the batch is made visible: whether the
                client still waits for it (the call's ``is_active``). Default: always.

        Returns:
            The batch's id.

        Raises:
            WireError: The stream broke a rule or a limit, ended without ``end``, paused
                or ran too long, the tenant has too many uploads open, the disk failed,
                or the idempotency key was used before for other files.
            Refusal: The runtime refused the batch.
            grpc.RpcError: The stream broke off, or the client was gone by the end.
        """
        with contextlib.ExitStack() as stack:
            if self._open_uploads is not None:
                stack.enter_context(self._open_uploads.take(owner))
            # Read on a thread of its own, so that a stalled client cannot hold this one.
            messages = stack.enter_context(
                contextlib.closing(paced(requests, self._limits.pace, size=_payload_bytes))
            )
            try:
                received = self._receive(messages, stack, owner)
                return self._end_upload(received, owner, still_wanted)
            except OSError as exc:
                raise _storage_error(exc) from exc

    def release(self, pages: Iterable[Iterable[str]]) -> None:
        """Delete those of the digests that no batch keeping its bytes refers to, a page
        at a time: uploads wait for one page only, and what the deleted rows left in
        the blob database's log is overwritten once, at the end."""
        deleted = False
        for digests in pages:
            with self._lock:
                deleted = self._delete_unused(digests) or deleted
        if deleted:
            self._blobs.scrub()

    # Receiving ---------------------------------------------------------------------

    def _admit(self, owner: str, idempotency_key: str) -> Admission:
        if self._quotas is None:
            return Admission.unlimited()
        return self._quotas.admit(owner, idempotency_key)

    def _receive(
        self, requests: Iterator[pb.SubmitBatchRequest], stack: contextlib.ExitStack, owner: str
    ) -> _Received:
        received: _Received | None = None
        # The files received but not stored yet: one callback drops them all, so that
        # storing a group only has to empty the list.
        pending: list[_Staged] = []
        stack.callback(_abort_all, pending)
        ended = False
        for request in requests:
            kind = request.WhichOneof("item")
            if ended:
                raise _bad(
                    "MESSAGE_AFTER_END",
                    "`end` must be the last message of an upload: close the stream after it.",
                    kind or "item",
                )
            if received is None:
                if kind != "spec":
                    raise _bad(
                        "SPEC_REQUIRED", "The first message of an upload must be its spec.", "spec"
                    )
                received = self._begin(convert.spec_from_proto(request.spec), stack, owner)
            elif kind == "file":
                self._take_header(received, pending, request.file)
            elif kind == "bundle":
                if not request.bundle.files:
                    raise _bad("EMPTY_BUNDLE", "A bundle needs at least one file.", "bundle.files")
                for header in request.bundle.files:
                    self._take_header(received, pending, header, whole=True)
            elif kind == "chunk":
                if not pending:
                    raise _bad(
                        "CHUNK_BEFORE_HEADER",
                        "File bytes must follow a file header.",
                        "chunk",
                    )
                if pending[-1].inline:
                    raise _bad(
                        "CHUNK_AFTER_CONTENT",
                        "A file whose header carries its content takes no chunks.",
                        f"file[{received.count - 1}].content",
                    )
                self._write(pending[-1], received.count - 1, request.chunk)
            elif kind == "end":
                self._end(request.end, received, pending)
                ended = True
            else:
                raise _bad(
                    "UNEXPECTED_MESSAGE",
                    "After the spec, send a file header, then its bytes in chunks (or files "
                    "whole in their headers or bundles); then `end`.",
                    kind or "item",
                )
        if received is None:
            raise _bad("SPEC_REQUIRED", "The upload sent no spec.", "spec")
        if not ended:
            raise _bad(
                "UPLOAD_INCOMPLETE",
                "The upload ended before its `end` message, so nothing was stored. Send `end` "
                "with the number of files as the last message, then close the stream.",
                "end",
            )
        return received

    def _take_header(
        self,
        received: _Received,
        pending: list[_Staged],
        header: pb.FileHeader,
        *,
        whole: bool = False,
    ) -> None:
        """A file's header: the file before it is complete; this one opens.

        ``whole``: the header came in a bundle, so no chunk may follow it, whatever its
        ``content`` holds (a shortfall is a size mismatch, found with the next header).
        """
        if pending:
            self._finish(pending[-1], received.count - 1)
            if received.group_is_full(pending):
                self._store_group(received, pending)
        total = received.declared + header.size_bytes
        # The file's own limits first: they are what such a header breaks, and they keep
        # the total within reach of any quota.
        self._check_header(header, received.count, total)
        received.admission.reserve(total)
        received.declared = total
        received.group_bytes += header.size_bytes
        pending.append(self._open(header))
        received.count += 1
        if header.content:
            self._write(pending[-1], received.count - 1, header.content)
        pending[-1].inline = whole or bool(header.content)

    def _begin(self, spec: convert.BatchSpec, stack: contextlib.ExitStack, owner: str) -> _Received:
        """Admit the upload and store its (hidden) batch, dropped unless it ends well."""
        admission = self._admit(owner, spec.idempotency_key)
        stack.callback(admission.release)
        upload = self._runtime.open_upload(
            name=spec.name,
            policy=spec.policy,
            labels=spec.labels,
            owner=owner,
            idempotency_key=spec.idempotency_key,
        )
        stack.callback(_abort_upload, upload)
        return _Received(spec, upload, admission)

    def _end(self, end: pb.UploadEnd, received: _Received, pending: list[_Staged]) -> None:
        """The client says it sent everything: check that it did, and store the rest."""
        if not received.count:
            raise _bad("NO_FILES", "A batch needs at least one file.", "file")
        self._finish(pending[-1], received.count - 1)
        if end.file_count != received.count:
            raise _bad(
                "FILE_COUNT_MISMATCH",
                f"The upload's `end` counts {_files(end.file_count)}, but "
                f"{_files(received.count)} arrived.",
                "end.file_count",
            )
        self._store_group(received, pending)

    def _check_header(self, header: pb.FileHeader, index: int, total: int) -> None:
        limits = self._limits
        where = f"file[{index}]"
        if index >= limits.max_files_per_batch:
            raise _bad(
                "TOO_MANY_FILES",
                f"A batch may hold at most {limits.max_files_per_batch:,} files "
                "(max_files_per_batch): split the files into several batches, or ask an "
                "operator to raise PDFBATCH_MAX_FILES_PER_BATCH.",
                where,
                _EXHAUSTED,
            )
        if len(header.name) > limits.max_name_chars:
            raise _bad(
                "INVALID_FILE_NAME",
                f"A file name must have 1 to {limits.max_name_chars} characters.",
                f"{where}.name",
            )
        try:
            validate_file_name(header.name)
        except InvalidRequest as refusal:
            raise _bad("INVALID_FILE_NAME", refusal.message, f"{where}.name") from None
        if header.HasField("password"):
            limits.check_password(header.password, f"{where}.password")
        if header.size_bytes < 0:
            raise _bad("INVALID_FILE_SIZE", "A size cannot be negative.", f"{where}.size_bytes")
        if header.size_bytes > limits.max_file_bytes:
            raise _bad(
                "FILE_TOO_LARGE",
                f"A file may have at most {limits.max_file_bytes} bytes.",
                f"{where}.size_bytes",
                _EXHAUSTED,
            )
        if total > limits.max_batch_bytes:
            raise _bad(
                "BATCH_TOO_LARGE",
                f"A batch may have at most {limits.max_batch_bytes} bytes in all.",
                f"{where}.size_bytes",
                _EXHAUSTED,
            )
        if header.sha256 and not _SHA256.fullmatch(header.sha256):
            raise _bad(
                "INVALID_CHECKSUM", "Give sha256 as 64 lowercase hex digits.", f"{where}.sha256"
            )

    def _open(self, header: pb.FileHeader) -> _Staged:
        password = header.password if header.HasField("password") else None
        # The declared size picks where the bytes go; more than it is refused anyway.
        writer = self._blobs.writer(max(header.size_bytes, 0))
        return _Staged(header.name, password, header.size_bytes, header.sha256, writer)

    def _write(self, file: _Staged, index: int, chunk: bytes) -> None:
        if file.writer.size + len(chunk) > file.declared:
            raise _bad(
                "SIZE_MISMATCH",
                f"File {file.name!r} sent more bytes than the {file.declared} its header declared.",
                f"file[{index}].size_bytes",
            )
        file.writer.write(chunk)

    def _finish(self, file: _Staged, index: int) -> None:
        if file.writer.size != file.declared:
            raise _bad(
                "SIZE_MISMATCH",
                f"File {file.name!r} sent {file.writer.size} bytes; its header declared "
                f"{file.declared}.",
                f"file[{index}].size_bytes",
            )
        # Made durable with its group, before its file is stored (see _store_group).
        digest = file.writer.finish(durable=False)
        if file.sha256 and digest != file.sha256:
            raise _bad(
                "CHECKSUM_MISMATCH",
                f"The bytes of file {file.name!r} do not match its sha256.",
                f"file[{index}].sha256",
            )

    # Storing -----------------------------------------------------------------------

    def _store_group(self, received: _Received, pending: list[_Staged]) -> None:
        """Place the blobs of ``pending`` and add their files to the upload's batch, in
        one transaction; then nothing of them is held here any more."""
        with self._lock:
            created: list[str] = []
            try:
                placed = self._blobs.commit_all([file.writer for file in pending])
                created += [
                    f.writer.finish() for f, made in zip(pending, placed, strict=True) if made
                ]
                files = [
                    NewFile(file.name, file.writer.finish(), file.declared, file.password)
                    for file in pending
                ]
                # The group's files are processed as soon as they are stored: their
                # bytes are durable first, with one flush of the file system a group.
                self._blobs.sync()
                received.upload.add(files, announce=False)
            except BaseException:
                self._release_unused(created)
                raise
        pending.clear()
        received.group_began = time.monotonic()
        received.group_bytes = 0
        # Outside the lock, and without waiting for the supervisor, busy with reports:
        # the end waits until every file is counted.
        received.upload.announce(wait=False)

    def _end_upload(self, received: _Received, owner: str, still_wanted: Callable[[], bool]) -> str:
        upload = received.upload
        with self._lock:
            if not still_wanted():
                # Cancelled after `end`: the client will never see the batch. (A cancel
                # that arrives after this check is too late, as for any complete call.)
                raise grpc.RpcError()
            # Again, now that no other upload can end meanwhile; the bytes this one
            # reserved are its own, not another's.
            self._admit(owner, received.spec.idempotency_key).check(
                received.declared, besides=received.admission
            )
            # Every blob is durable already: each group was flushed before it was stored.
            ended = upload.finish()
        if ended.created:
            return ended.batch_id
        # The key went to another batch first: keep nothing of this upload.
        _abort_upload(upload)
        if not ended.same_files:
            raise WireError(
                grpc.StatusCode.ALREADY_EXISTS,
                "IDEMPOTENCY_KEY_REUSED",
                "This idempotency key was already used for a batch of other files. Use a "
                "new key for a new batch.",
                metadata={"batchId": ended.batch_id},
            )
        return ended.batch_id

    def _release_unused(self, digests: Iterable[str]) -> None:
        if self._delete_unused(digests):
            self._blobs.scrub()

    def _delete_unused(self, digests: Iterable[str]) -> bool:
        """Delete those of ``digests`` no stored batch refers to; whether any was."""
        deleted = False
        for digest in set(digests):
            if not self._store.blob_in_use(digest):
                self._blobs.delete(digest)
                deleted = True
        return deleted


def _files(count: int) -> str:
    return "1 file" if count == 1 else f"{count} files"


def _abort_upload(upload: Upload) -> None:
    """Delete what was stored of an upload that does not end as a batch of its own."""
    try:
        upload.abort()
    except (StorageUnavailableError, OSError):
        # Whatever is left stays hidden: the next start deletes the batch, retention
        # the blobs. The call's own outcome (an error, or the earlier batch) stands.
        log.exception("upload_not_discarded", batch_id=upload.batch_id)


def _abort_all(staged: list[_Staged]) -> None:
    """Drop the bytes of every file in ``staged`` (nothing for one already stored)."""
    for file in staged:
        # A row or file left behind is swept at the next start; the others still go.
        with contextlib.suppress(OSError):
            file.writer.abort()


def _storage_error(exc: OSError) -> WireError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return WireError(
            _EXHAUSTED,
            "STORAGE_FULL",
            "The service has no room left for uploads. Try again later or upload less.",
            retry_after=60.0,
        )
    return WireError(
        grpc.StatusCode.UNAVAILABLE,
        "STORAGE_UNAVAILABLE",
        "The service could not store the upload. Try again shortly.",
        retry_after=5.0,
    )


def _payload_bytes(message: pb.SubmitBatchRequest) -> int:
    """What a message holds of file bytes: its measure for reading ahead (the rest of
    a message is small, and bounded by the header checks)."""
    if message.HasField("bundle"):
        return sum(len(header.content) + 64 for header in message.bundle.files)
    return len(message.chunk) + len(message.file.content) + 64
