"""What each RPC may answer to a request, and the checks every answer must pass.

:data:`ALLOWED` writes down, per RPC, every status code it may legitimately end with
on this test's servers (rate limits and quotas set out of reach). :func:`expect_unary`
and :class:`UploadOracle` narrow that to the exact code (and reason) for a given
request, from the rules of ``batch.proto`` and the state of the batch it names;
:func:`check_answer` checks the code, the details and the rich error model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.wire.errors import DOMAIN
from tests.helpers.reliability import REPORT
from tests.helpers.wire_strategies import PageToken, name_is_valid, sha256_of

C = grpc.StatusCode
OK, INVALID, NOT_FOUND = C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND
PRECONDITION, EXHAUSTED = C.FAILED_PRECONDITION, C.RESOURCE_EXHAUSTED

ALLOWED: Mapping[str, frozenset[grpc.StatusCode]] = {
    "SubmitBatch": frozenset({OK, INVALID, EXHAUSTED, C.ALREADY_EXISTS, C.CANCELLED}),
    "GetBatch": frozenset({OK, INVALID, NOT_FOUND}),
    "ListBatches": frozenset({OK, INVALID}),
    "ListFiles": frozenset({OK, INVALID, NOT_FOUND}),
    # DEADLINE_EXCEEDED: the client's own deadline on a watch that rightly waits.
    "WatchBatch": frozenset(
        {OK, INVALID, NOT_FOUND, C.OUT_OF_RANGE, PRECONDITION, C.DEADLINE_EXCEEDED}
    ),
    "RetryFiles": frozenset({OK, INVALID, NOT_FOUND, PRECONDITION}),
    "CancelBatch": frozenset({OK, INVALID, NOT_FOUND}),
    "GetFileResult": frozenset({OK, INVALID, NOT_FOUND, PRECONDITION}),
    "GetFileHistory": frozenset({OK, INVALID, NOT_FOUND}),
    "DeleteBatch": frozenset({OK, INVALID, NOT_FOUND}),
    "Health/Check": frozenset({OK, INVALID, NOT_FOUND}),
}

_REASON = re.compile(r"[A-Z][A-Z0-9_]*")
_TRACE_MARKERS = ("Traceback (most recent call last)", "site-packages", "<module>")
# A traceback's frame line, and an exception's "ValueError: ..." line. (A plain 'File "'
# is no sign: refusals quote file names, and a name may be a single quote.)
_TRACE_PATTERNS = (
    re.compile(r'File "[^"]*", line \d+'),
    re.compile(r"\b[A-Z][A-Za-z]*(?:Error|Exception): "),
)
_REPO = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class Expected:
    """The codes (and, when known, reasons) an answer may have."""

    codes: frozenset[grpc.StatusCode]
    reasons: frozenset[str] = frozenset()

    @classmethod
    def exactly(cls, code: grpc.StatusCode, *reasons: str) -> Expected:
        return cls(frozenset({code}), frozenset(reasons))

    def __or__(self, other: Expected) -> Expected:
        reasons = self.reasons | other.reasons if self.reasons and other.reasons else frozenset()
        return Expected(self.codes | other.codes, reasons)


@dataclass
class Answer:
    """How a call ended: its code, details, rich status and response (when OK)."""

    code: grpc.StatusCode
    details: str = ""
    status: Any = None
    response: Any = None
    items: list[Any] = field(default_factory=list)


def answer_of(call: Callable[[], Any]) -> Answer:
    """Run ``call``; its response, or how it failed."""
    try:
        return Answer(OK, response=call())
    except grpc.RpcError as error:
        return failed(error)


def failed(error: grpc.RpcError) -> Answer:
    assert isinstance(error, grpc.Call)
    return Answer(error.code(), error.details() or "", rpc_status.from_call(error))


def _rich(status: Any) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.LocalizedMessage]:
    info = error_details_pb2.ErrorInfo()
    localized = error_details_pb2.LocalizedMessage()
    for detail in status.details:
        for message in (info, localized):
            if detail.Is(message.DESCRIPTOR):
                detail.Unpack(message)
    return info, localized


def check_answer(
    rpc: str,
    answer: Answer,
    expected: Expected,
    *,
    secrets: Iterable[str] = (),
    rich_required: bool = True,
) -> None:
    """Fail unless the answer is one ``expected`` allows, told cleanly.

    Args:
        rpc: The RPC's name, a key of :data:`ALLOWED`.
        answer: How the call ended.
        expected: What this request may get; must lie within ``ALLOWED[rpc]``.
        secrets: Strings that must not appear in the details (server paths).
        rich_required: Whether a refusal must carry ``google.rpc.Status`` details
            (gRPC's own health service sends none for an unknown service name).
    """
    assert expected.codes <= ALLOWED[rpc], f"test bug: {rpc} cannot answer {expected.codes}"
    assert answer.code not in (C.UNKNOWN, C.INTERNAL), f"{rpc}: {answer.code}: {answer.details}"
    assert answer.code in expected.codes, (
        f"{rpc}: got {answer.code.name} ({answer.details!r}), expected one of "
        f"{sorted(c.name for c in expected.codes)}"
    )
    REPORT.invariant("wire: status code precise")
    for marker in _TRACE_MARKERS:
        assert marker not in answer.details, f"{rpc}: trace in details: {answer.details!r}"
    for pattern in _TRACE_PATTERNS:
        assert not pattern.search(answer.details), f"{rpc}: trace in details: {answer.details!r}"
    for secret in (_REPO, *secrets):
        assert secret not in answer.details, f"{rpc}: server path in details"
    REPORT.invariant("wire: no trace or path in details")
    if answer.code in (OK, C.CANCELLED, C.DEADLINE_EXCEEDED):
        return  # no refusal: the client ended the call, or it succeeded
    status = answer.status
    if status is None and not rich_required:
        return
    assert isinstance(status, status_pb2.Status), f"{rpc}: {answer.code.name} without rich status"
    info, localized = _rich(status)
    assert status.code == answer.code.value[0]
    assert info.domain == DOMAIN, f"{rpc}: {info}"
    assert _REASON.fullmatch(info.reason), f"{rpc}: {info}"
    assert localized.message == status.message == answer.details
    if expected.reasons:
        assert info.reason in expected.reasons, f"{rpc}: {info.reason} not in {expected.reasons}"
    REPORT.invariant("wire: rich error details decode")


# Unary and server-streaming RPCs ---------------------------------------------------------

_RETRYABLE = (pb.FILE_STATE_FAILED, pb.FILE_STATE_CANCELLED)
_VIEWS = (pb.BATCH_VIEW_UNSPECIFIED, pb.BATCH_VIEW_BASIC, pb.BATCH_VIEW_FULL)


def _missing() -> Expected:
    return Expected.exactly(INVALID, "MISSING_FIELD")


def _no_batch() -> Expected:
    return Expected.exactly(NOT_FOUND, "BATCH_NOT_FOUND")


def _batch(batch_id: str, batches: Mapping[str, pb.Batch]) -> Expected | pb.Batch:
    if not batch_id:
        return _missing()
    return batches.get(batch_id) or _no_batch()


def _file(batch: pb.Batch, file_id: str) -> pb.FileStatus | None:
    return next((f for f in batch.files if f.file_id == file_id), None)


def watch_waits(request: pb.WatchBatchRequest, batches: Mapping[str, pb.Batch]) -> bool:
    """Whether a watch of a settled batch rightly waits for events that may never come."""
    batch = batches.get(request.batch_id) if request.batch_id else None
    after = request.after_sequence
    return batch is not None and request.follow and 0 < after == batch.sequence


def _expect_watch(request: pb.WatchBatchRequest, batch: pb.Batch) -> Expected:
    after = request.after_sequence
    if after < 0:
        return Expected.exactly(INVALID, "INVALID_SEQUENCE")
    if after > batch.sequence:
        return Expected.exactly(C.OUT_OF_RANGE, "WATCH_SEQUENCE_AHEAD")
    waits = request.follow and 0 < after == batch.sequence
    return Expected.exactly(C.DEADLINE_EXCEEDED if waits else OK)


def _expect_retry(request: pb.RetryFilesRequest, batch: pb.Batch) -> Expected:
    cap = batch.policy.max_manual_retries
    if not request.file_ids:
        if any(f.state in _RETRYABLE and f.manual_retries < cap for f in batch.files):
            return Expected.exactly(OK)
        return Expected.exactly(PRECONDITION, "NOTHING_TO_RETRY")
    for file_id in dict.fromkeys(request.file_ids):
        record = _file(batch, file_id)
        if record is None:
            return Expected.exactly(NOT_FOUND, "FILE_NOT_FOUND")
        if record.state == pb.FILE_STATE_SUCCEEDED:
            return Expected.exactly(PRECONDITION, "FILE_ALREADY_SUCCEEDED")
        if record.manual_retries >= cap:
            return Expected.exactly(PRECONDITION, "MANUAL_RETRY_LIMIT")
    return Expected.exactly(OK)


def expect_unary(
    rpc: str, request: Any, batches: Mapping[str, pb.Batch], tokens: Sequence[PageToken]
) -> Expected:
    """The exact answer to ``request`` when every batch in ``batches`` is settled.

    Args:
        rpc: Any but ``SubmitBatch`` (see :class:`UploadOracle`).
        request: Its request.
        batches: The caller's batches, as ``GetBatch`` returns them.
        tokens: The page tokens listings gave out so far.
    """
    if rpc == "ListBatches":
        if any(not 1 <= s <= 7 for s in request.states) or request.page_size < 0:
            return Expected.exactly(INVALID)
        given = request.page_token
        if given and not any(
            t.token == given and set(t.states) == set(request.states) for t in tokens
        ):
            return Expected.exactly(INVALID, "INVALID_PAGE_TOKEN")
        return Expected.exactly(OK)
    if rpc in ("GetFileResult", "GetFileHistory") and not request.file_id:
        return _missing()
    found = _batch(request.batch_id, batches)
    if isinstance(found, Expected):
        return found
    match rpc:
        case "GetBatch" | "CancelBatch" if request.view not in _VIEWS:
            # Checked before anything is done: an unknown view cancels nothing.
            return Expected.exactly(INVALID, "INVALID_VIEW")
        case "WatchBatch":
            return _expect_watch(request, found)
        case "RetryFiles":
            if any(_too_long(password) for password in request.passwords.values()):
                return Expected.exactly(INVALID, "PASSWORD_TOO_LONG")
            return _expect_retry(request, found)
        case "ListFiles":
            if any(not 1 <= s <= 6 for s in request.states) or request.page_size < 0:
                return Expected.exactly(INVALID)
            if request.page_token:
                # Tokens of file pages are never drawn: any given one was not made here.
                return Expected.exactly(INVALID, "INVALID_PAGE_TOKEN")
        case "GetFileResult" | "GetFileHistory":
            record = _file(found, request.file_id)
            if record is None:
                return Expected.exactly(NOT_FOUND, "FILE_NOT_FOUND")
            if rpc == "GetFileResult" and record.state != pb.FILE_STATE_SUCCEEDED:
                return Expected.exactly(PRECONDITION, "RESULT_NOT_AVAILABLE")
    return Expected.exactly(OK)


# Uploads ----------------------------------------------------------------------------------

# The service's default bound on a password (UploadLimits.max_password_bytes).
MAX_PASSWORD_BYTES = 1024


def _too_long(password: str) -> bool:
    return len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES


@dataclass(frozen=True)
class Limits:
    """The server's ``UploadLimits`` and the tenant's byte quota."""

    max_file_bytes: int
    max_batch_bytes: int
    max_files_per_batch: int
    max_name_chars: int
    max_stored_bytes: int


_HEADER_RULES = {
    "INVALID_FILE_NAME": INVALID,
    "INVALID_FILE_SIZE": INVALID,
    "PASSWORD_TOO_LONG": INVALID,
    "INVALID_CHECKSUM": INVALID,
    "TOO_MANY_FILES": EXHAUSTED,
    "FILE_TOO_LARGE": EXHAUSTED,
    "BATCH_TOO_LARGE": EXHAUSTED,
    "TENANT_STORAGE_FULL": EXHAUSTED,
}


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.expected = Expected.exactly(code, reason)


@dataclass
class _File:
    header: pb.FileHeader
    data: bytearray = field(default_factory=bytearray)

    @classmethod
    def opened(cls, header: pb.FileHeader) -> _File:
        return cls(header, bytearray(header.content))

    @property
    def inline(self) -> bool:
        """Its header carried its bytes (an empty ``content`` is no content)."""
        return bool(self.header.content)


@dataclass
class Accepted:
    """A batch the service accepted: its id and contents (name, sha256, size)."""

    batch_id: str
    contents: list[tuple[str, str, int]]


class UploadOracle:
    """Follows an upload as ``batch.proto`` describes it; says how it must end.

    Args:
        limits: The server's limits.
        by_key: Batches accepted so far under an idempotency key.
        stored_bytes: Bytes the tenant's accepted batches hold.
    """

    def __init__(self, limits: Limits, by_key: Mapping[str, Accepted], stored_bytes: int) -> None:
        self._limits = limits
        self._by_key = by_key
        self._stored = stored_bytes

    def outcome(
        self, messages: Iterable[pb.SubmitBatchRequest], spec_valid: bool | None, *, closed: bool
    ) -> Expected | None:
        """The answer to the stream, or ``None`` if an unclosed stream broke no rule yet.

        Args:
            messages: What the client sent.
            spec_valid: Whether the stream's spec is certainly valid (``None``: unknown).
            closed: Whether the client closed the stream after them (else it cancels:
                then ``None`` means the client gets CANCELLED).
        """
        messages = list(messages)
        result: Expected | None
        try:
            result = self._follow(messages, spec_valid, closed=closed)
        except _Refused as refused:
            result = refused.expected
        starts_with_spec = bool(messages) and messages[0].WhichOneof("item") == "spec"
        if spec_valid is None and starts_with_spec:
            # The spec may be refused before anything else is looked at.
            bad_spec = Expected.exactly(INVALID, "INVALID_BATCH_SPEC")
            return bad_spec if result is None else result | bad_spec
        return result

    def complete(self, messages: Iterable[pb.SubmitBatchRequest], spec_valid: bool | None) -> bool:
        """Whether the service may accept ``messages`` once the stream ends.

        True only for a whole upload ending with a right ``end``: a cancel after it may
        reach the service too late to stop the batch, as for any call whose request was
        complete. A cancel before ``end`` never leaves a batch.
        """
        result = self.outcome(messages, spec_valid, closed=True)
        return result is not None and OK in result.codes

    def contents(self, messages: Iterable[pb.SubmitBatchRequest]) -> list[tuple[str, str, int]]:
        """(name, sha256, size) of each file of an upload that was accepted."""
        files = self._files(messages)
        return [(f.header.name, sha256_of(bytes(f.data)), len(f.data)) for f in files]

    @staticmethod
    def _files(messages: Iterable[pb.SubmitBatchRequest]) -> list[_File]:
        files: list[_File] = []
        for message in messages:
            if message.WhichOneof("item") == "file":
                files.append(_File.opened(message.file))
            elif message.WhichOneof("item") == "chunk" and files:
                files[-1].data += message.chunk
        return files

    def _follow(
        self, messages: list[pb.SubmitBatchRequest], spec_valid: bool | None, *, closed: bool
    ) -> Expected | None:
        spec: pb.BatchSpec | None = None
        files: list[_File] = []
        total = 0
        ended = False
        for message in messages:
            kind = message.WhichOneof("item")
            if ended:
                raise _Refused(INVALID, "MESSAGE_AFTER_END")
            if spec is None:
                if kind != "spec":
                    raise _Refused(INVALID, "SPEC_REQUIRED")
                if spec_valid is False:
                    raise _Refused(INVALID, "INVALID_BATCH_SPEC")
                spec = message.spec
            elif kind == "file":
                if files:
                    self._finish(files[-1])
                total += message.file.size_bytes
                self._admit(message.file, len(files), total, spec.idempotency_key)
                files.append(_File.opened(message.file))
                self._check_received(files[-1])
            elif kind == "chunk":
                if not files:
                    raise _Refused(INVALID, "CHUNK_BEFORE_HEADER")
                if files[-1].inline:
                    raise _Refused(INVALID, "CHUNK_AFTER_CONTENT")
                files[-1].data += message.chunk
                self._check_received(files[-1])
            elif kind == "end":
                if not files:
                    raise _Refused(INVALID, "NO_FILES")
                self._finish(files[-1])
                if message.end.file_count != len(files):
                    raise _Refused(INVALID, "FILE_COUNT_MISMATCH")
                ended = True
            else:
                raise _Refused(INVALID, "UNEXPECTED_MESSAGE")
        if not closed:
            return None
        if spec is None:
            raise _Refused(INVALID, "SPEC_REQUIRED")
        if not ended:
            # Whatever the last file lacks: a stream without `end` may be a cancel.
            raise _Refused(INVALID, "UPLOAD_INCOMPLETE")
        earlier = self._by_key.get(spec.idempotency_key) if spec.idempotency_key else None
        contents = self.contents(messages)
        if earlier is not None and earlier.contents != contents:
            raise _Refused(C.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
        return Expected.exactly(OK)

    def _admit(self, header: pb.FileHeader, index: int, total: int, key: str) -> None:
        limits = self._limits
        checks = [
            (index >= limits.max_files_per_batch, "TOO_MANY_FILES"),
            (not name_is_valid(header.name, limits.max_name_chars), "INVALID_FILE_NAME"),
            (
                header.HasField("password") and _too_long(header.password),
                "PASSWORD_TOO_LONG",
            ),
            (header.size_bytes < 0, "INVALID_FILE_SIZE"),
            (header.size_bytes > limits.max_file_bytes, "FILE_TOO_LARGE"),
            (total > limits.max_batch_bytes, "BATCH_TOO_LARGE"),
            (
                bool(header.sha256) and not re.fullmatch("[0-9a-f]{64}", header.sha256),
                "INVALID_CHECKSUM",
            ),
        ]
        for broken, reason in checks:
            if broken:
                raise _Refused(_HEADER_RULES[reason], reason)
        if key not in self._by_key and self._stored + total > limits.max_stored_bytes:
            raise _Refused(EXHAUSTED, "TENANT_STORAGE_FULL")

    @staticmethod
    def _check_received(file: _File) -> None:
        if len(file.data) > file.header.size_bytes:
            raise _Refused(INVALID, "SIZE_MISMATCH")

    @staticmethod
    def _finish(file: _File) -> None:
        if len(file.data) != file.header.size_bytes:
            raise _Refused(INVALID, "SIZE_MISMATCH")
        if file.header.sha256 and sha256_of(bytes(file.data)) != file.header.sha256:
            raise _Refused(INVALID, "CHECKSUM_MISMATCH")
