"""The wire layer's pieces on their own: conversions, pages, settings, and the storage
additions it relies on (streamed blob writes, bounded event history, blob references)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from actors.policy.catalogue import ErrorCode
from actors.policy.model import (
    Attempt,
    AttemptOutcome,
    BatchRecord,
    BatchState,
    BatchView,
    DocumentInfo,
    FileError,
    FileRecord,
    FileState,
    ResultSummary,
    ResultWarning,
    WarningCode,
)
from actors.policy.refusals import BatchNotFound, InvalidRequest, RetryRefused
from actors.policy.results import TEXT_PIECE_CHARS
from actors.policy.rules import BatchPolicy
from actors.storage.blobs import BlobStore, BlobWriter
from actors.storage.store import MemoryStore
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.service.settings import ServerSettings
from server.wire import convert
from server.wire.errors import WireError, status_of
from server.wire.paging import PageTokens, file_page, list_page

# Streamed blobs ---------------------------------------------------------------------


def test_a_streamed_blob_is_invisible_until_committed(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=0)
    with blobs.writer() as writer:
        writer.write(b"%PDF-")
        writer.write(b"1.7")
        digest = writer.finish()
        assert digest == hashlib.sha256(b"%PDF-1.7").hexdigest()
        assert writer.size == 8
        assert not blobs.exists(digest)
        assert writer.commit() is True
    assert blobs.path(digest).read_bytes() == b"%PDF-1.7"
    assert [p.name for p in tmp_path.rglob(".incoming-*")] == []


def test_committing_bytes_already_stored_creates_nothing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=0)
    digest = blobs.put(b"same")
    with blobs.writer() as writer:
        writer.write(b"same")
        assert writer.commit() is False
    assert blobs.exists(digest)
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1


def test_an_abandoned_writer_leaves_no_file(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=0)

    def broken_upload() -> None:
        with blobs.writer() as writer:
            writer.write(b"half")
            written.append(writer)
            raise RuntimeError("stream broke off")

    written: list[BlobWriter] = []
    with pytest.raises(RuntimeError):
        broken_upload()
    writer = written[0]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"more")


def test_a_crash_mid_write_is_swept_at_start(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, inline_max_bytes=0)
    writer = blobs.writer()
    writer.write(b"left behind by a crash")
    assert BlobStore(tmp_path, inline_max_bytes=0).sweep_temp() == 1
    writer.abort()


# Store additions --------------------------------------------------------------------


def _view(batch_id: str, blob: str) -> BatchView:
    return BatchView(
        BatchRecord(batch_id, "", BatchPolicy(), BatchState.PENDING, 0.0, 0.0),
        (FileRecord("f1", "a.pdf", blob, 1),),
    )


def test_bounded_history_reports_its_oldest_sequence() -> None:
    from actors.policy.book import BatchBook

    store = MemoryStore(max_events_per_batch=2)
    view = _view("b", "0" * 64)
    store.create_batch(view)
    assert store.oldest_sequence("b") == 1
    assert store.oldest_sequence("nope") is None
    book = BatchBook(view)
    book.set_batch(BatchState.RUNNING, 1.0)
    book.set_file("f1", FileState.RUNNING, 1.0)
    book.set_file("f1", FileState.SUCCEEDED, 2.0)
    store.commit(book.take_changes(), {})

    assert store.oldest_sequence("b") == 2
    assert [e.sequence for e in store.events_after("b", 1)] == [2, 3]


def test_blob_in_use_follows_the_batches_that_refer_to_it() -> None:
    store = MemoryStore()
    store.create_batch(_view("b1", "a" * 64))
    assert store.blob_in_use("a" * 64)
    assert not store.blob_in_use("b" * 64)
    store.delete_batch("b1")
    assert not store.blob_in_use("a" * 64)


# Conversions ------------------------------------------------------------------------


def test_a_file_record_converts_with_attempts_and_error() -> None:
    record = FileRecord(
        "f1",
        "a.pdf",
        "c" * 64,
        42,
        state=FileState.BACKOFF,
        attempts=(
            Attempt(
                1,
                10.0,
                ended_at=11.5,
                outcome=AttemptOutcome.FAILED,
                code=ErrorCode.WORKER_CRASHED,
                worker_pid=77,
                retry_delay=0.25,
            ),
        ),
        next_attempt_at=11.75,
        error=FileError.of(ErrorCode.WORKER_CRASHED, 11.5),
    )

    message = convert.file_to_proto(record)

    assert message.state == pb.FILE_STATE_BACKOFF
    assert message.attempt_count == 1
    attempt = message.attempts[0]
    assert (attempt.number, attempt.worker_pid, attempt.code) == (1, 77, "WORKER_CRASHED")
    assert attempt.outcome == pb.ATTEMPT_OUTCOME_FAILED
    assert attempt.end_time.ToMilliseconds() - attempt.start_time.ToMilliseconds() == 1500
    assert attempt.retry_delay.ToMilliseconds() == 250
    assert message.next_attempt_time.ToMilliseconds() == 11750
    assert (message.error.code, message.error.retryable) == ("WORKER_CRASHED", True)


def test_a_policy_survives_the_round_trip() -> None:
    policy = BatchPolicy.model_validate(
        {
            "retry": {"max_attempts": 7, "jitter": "none", "non_retryable_codes": ["INTERNAL"]},
            "tolerated_failures": {"max_failed_percent": 12.5},
            "restart_intensity": {"within_seconds": 30},
        }
    )

    assert convert.policy_from_proto(convert.policy_to_proto(policy)) == policy
    assert convert.policy_from_proto(pb.BatchPolicy()) == BatchPolicy()


def test_policy_violations_name_proto_fields() -> None:
    message = pb.BatchPolicy()
    message.restart_intensity.within.FromSeconds(0)
    message.retry.jitter = 9  # type: ignore[assignment]

    with pytest.raises(WireError) as raised:
        convert.policy_from_proto(message, "spec.policy")

    assert raised.value.violations[0].field == "spec.policy.retry.jitter"
    message.ClearField("retry")
    with pytest.raises(WireError) as raised:
        convert.policy_from_proto(message, "spec.policy")
    assert [(v.field, v.description) for v in raised.value.violations] == [
        ("spec.policy.restart_intensity.within", "Input should be greater than 0")
    ]


def test_a_long_page_is_sent_in_pieces_that_fit_a_message() -> None:
    text = "é" * (TEXT_PIECE_CHARS * 2 + 5)
    warning = ResultWarning(WarningCode.METADATA_TRUNCATED, "title", 7)
    summary = ResultSummary(2, False, DocumentInfo(title="T"), (warning,), 0)
    record = FileRecord("f1", "a.pdf", "c" * 64, 1)

    # A page stored whole (before results were kept in pieces) is cut here.
    chunks = list(convert.result_chunks("b", record, summary, [(1, text), (2, "")]))

    assert chunks[0].metadata.info.title == "T"
    assert not chunks[0].metadata.info.HasField("author")
    (sent,) = chunks[0].metadata.warnings
    assert (sent.code, sent.place, sent.count) == ("METADATA_TRUNCATED", "title", 7)
    assert sent.message == warning.message
    pages = [c.page for c in chunks[1:]]
    assert [p.page_number for p in pages] == [1, 1, 1, 2]
    assert "".join(p.text for p in pages[:3]) == text
    assert pages[3].text == ""
    assert max(c.ByteSize() for c in chunks) < 4 * 1024 * 1024


# Errors -----------------------------------------------------------------------------


def test_refusals_map_to_codes_with_rich_details() -> None:
    invalid = status_of(InvalidRequest("Bad name.", field="name"))
    assert invalid.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [d.type_url.rsplit(".", 1)[1] for d in invalid.details] == [
        "ErrorInfo",
        "LocalizedMessage",
        "BadRequest",
    ]
    cancelling = status_of(RetryRefused("Wait.", reason="BATCH_CANCELLING"))
    assert cancelling.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert cancelling.details[-1].type_url.endswith("RetryInfo")
    internal = status_of(KeyError("/srv/secret"))
    assert internal.code == grpc.StatusCode.INTERNAL.value[0]
    assert "secret" not in internal.message


def test_error_info_metadata_keys_are_lower_camel_case() -> None:
    refused = RetryRefused("No.", reason="MANUAL_RETRY_LIMIT", file_id="f00003")
    status = status_of(refused)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert dict(info.metadata) == {"fileId": "f00003"}
    for key in ("file_id", "FileId", "max-bytes", ""):
        with pytest.raises(ValueError, match="lowerCamelCase"):
            WireError(grpc.StatusCode.INTERNAL, "X", "x", metadata={key: "1"})


# Pages and settings -----------------------------------------------------------------

KEY = bytes(range(32))
TOKENS = PageTokens(KEY)


def _signed(listing: str, binding: list[object], payload: bytes) -> str:
    """``payload`` as a token signed with ``KEY``, as the service signs its own."""
    body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    signed = json.dumps([listing, binding, body]).encode()
    mac = hmac.new(KEY, signed, hashlib.sha256).digest()[:16]
    return f"{body}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def test_pages_never_repeat_or_skip_when_batches_arrive_between_pages() -> None:
    store = MemoryStore()
    for n in range(5):
        view = _view(f"b{n}", "a" * 64)
        store.create_batch(
            BatchView(
                BatchRecord(f"b{n}", "", BatchPolicy(), BatchState.PENDING, float(n), 0.0),
                view.files,
            )
        )
    first, token = list_page(store, 2, "", set(), tokens=TOKENS)
    store.create_batch(
        BatchView(
            BatchRecord("new", "", BatchPolicy(), BatchState.PENDING, 99.0, 0.0),
            _view("new", "a" * 64).files,
        )
    )
    second, token = list_page(store, 2, token, set(), tokens=TOKENS)
    third, token = list_page(store, 2, token, set(), tokens=TOKENS)

    listed = [v.batch.batch_id for v in (*first, *second, *third)]
    assert listed == ["b4", "b3", "b2", "b1", "b0"]
    assert token == ""
    with pytest.raises(WireError, match="page token"):
        list_page(store, 2, "eyJ0IjogMX0=", set(), tokens=TOKENS)


def test_file_pages_follow_submission_order_and_their_tokens_fit_one_listing() -> None:
    store = MemoryStore()
    record = BatchRecord("b1", "", BatchPolicy(), BatchState.PENDING, 0.0, 0.0)
    files = tuple(FileRecord(f"f{n}", f"{n}.pdf", "a" * 64, 1) for n in (3, 1, 2))
    store.create_batch(BatchView(record, files))
    store.create_batch(_view("b2", "a" * 64))

    first, token = file_page(store, "b1", 2, "", set(), caller="ann", tokens=TOKENS)
    second, end = file_page(store, "b1", 2, token, set(), caller="ann", tokens=TOKENS)

    assert [r.file_id for _, r in (*first.files, *second.files)] == ["f3", "f1", "f2"]
    assert (first.total, second.total, end) == (3, 3, "")
    body, _, mac = token.partition(".")

    def page(token: str, **given: Any) -> object:
        asked: dict[str, Any] = {"batch": "b1", "states": set(), "caller": "ann", "size": 2}
        asked.update(given)
        return file_page(
            store,
            asked["batch"],
            asked["size"],
            token,
            asked["states"],
            caller=asked["caller"],
            tokens=given.get("tokens", TOKENS),
        )

    for wrong in (
        lambda: page(token, batch="b2"),
        lambda: page(token, states={FileState.FAILED}),
        lambda: page(token, caller="bob"),
        lambda: page(token, tokens=PageTokens.generate()),
        # Edited: the position of another page, with the signature of this one.
        lambda: page(_token(b'{"p":0}').rstrip("=") + "." + mac),
        lambda: page(body),  # unsigned
        # Signed here, but no position this listing makes.
        lambda: page(_signed("files", ["ann", "b1", []], b'{"p":-5}')),
        lambda: page(_signed("files", ["ann", "b1", []], b'{"p":1.5}')),
        lambda: page(_token(b"[1]")),
        lambda: page("", size=-1),
    ):
        with pytest.raises(WireError) as raised:
            wrong()
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(BatchNotFound):
        file_page(store, "missing", 1, "", set(), tokens=TOKENS)


def _token(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).decode()


@pytest.mark.parametrize(
    "payload",
    [
        # Each of these was an INTERNAL error (OverflowError, RecursionError) or was taken
        # for a token (NaN, true) before tokens were checked for what this service makes.
        b'{"t": 1' + b"0" * 400 + b', "id": "b1"}',
        b"[" * 5000,
        b'{"t": NaN, "id": "b1"}',
        b'{"t": Infinity, "id": "b1"}',
        b'{"t": true, "id": "b1"}',
        b"A" * 1025,
    ],
    ids=["huge-number", "deep-nesting", "nan", "infinity", "bool", "over-long"],
)
def test_a_page_token_not_made_here_is_refused_as_invalid(payload: bytes) -> None:
    # Unsigned, and even signed with the service's key: neither is read as a position.
    for token in (_token(payload), _signed("batches", [None, []], payload)):
        with pytest.raises(WireError) as raised:
            list_page(MemoryStore(), 2, token, set(), tokens=TOKENS)
        assert (raised.value.code, raised.value.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_TOKEN",
        )


def test_a_signed_token_reads_back_and_a_page_key_must_be_long_enough() -> None:
    token = _signed("history", ["ann", "b1", "f1"], b'{"e":3,"a":1,"s":null}')

    assert TOKENS.read("history", ["ann", "b1", "f1"], token) == {"e": 3, "a": 1, "s": None}
    with pytest.raises(WireError):
        TOKENS.read("history", ["ann", "b1", "f2"], token)
    with pytest.raises(ValueError, match="32 bytes"):
        PageTokens(b"short")


def test_a_spec_refusal_summary_ends_in_one_full_stop() -> None:
    with pytest.raises(WireError) as raised:
        convert.spec_from_proto(pb.BatchSpec(display_name="x" * 201))
    assert (
        raised.value.message == "The request is invalid: spec.display_name: At most 200 characters."
    )


def test_settings_come_from_the_environment_and_flags_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PDFBATCH_ADDRESS", "0.0.0.0:6000")
    monkeypatch.setenv("PDFBATCH_MAX_FILE_BYTES", "1234")
    monkeypatch.setenv("PDFBATCH_WORKERS", "3")

    settings = ServerSettings()
    assert (settings.address, settings.workers, settings.limits.max_file_bytes) == (
        "0.0.0.0:6000",
        3,
        1234,
    )
    assert ServerSettings(address="127.0.0.1:1").address == "127.0.0.1:1"
    long_calls = settings.max_uploads + settings.max_exports + 8
    assert settings.threads == long_calls + 32
    assert settings.concurrent_rpcs == 2 * settings.threads + settings.max_watchers
    with pytest.raises(ValueError, match="rpc_threads must be more than max_uploads"):
        ServerSettings(rpc_threads=8, max_uploads=8)
