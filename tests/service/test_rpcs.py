"""Every BatchService RPC through a real server, real channels and real workers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest

from actors.orchestration.runtime import DELETE_PAGE_FILES
from actors.policy.model import BatchView
from actors.storage.sqlite_store import SQLiteStore
from server.cli.progress import BatchTracker
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from tests.helpers.crash_processors import SCREENED, script
from tests.helpers.server_fixtures import (
    SEEN_RUNNING_PAGES,
    WAIT,
    RunningServer,
    ServerFactory,
    make_pdf,
    many_pages,
    refused,
    upload,
    wait_until_running,
)


def test_submit_processes_every_file_and_get_reports_files_attempts_and_errors(
    server: RunningServer,
) -> None:
    good = make_pdf("hello", "world")
    batch = server.submit(
        ("good.pdf", good),
        ("broken.pdf", b"this is not a pdf"),
        display_name="mixed",
        labels={"team": "docs"},
    )
    assert batch.batch_id
    assert batch.display_name == "mixed"
    assert dict(batch.labels) == {"team": "docs"}
    assert [f.name for f in batch.files] == ["good.pdf", "broken.pdf"]
    assert batch.files[0].sha256 == hashlib.sha256(good).hexdigest()
    assert batch.files[0].size_bytes == len(good)

    server.settle(batch.batch_id)
    done = server.stub.GetBatch(
        pb.GetBatchRequest(batch_id=batch.batch_id, view=pb.BATCH_VIEW_FULL), timeout=WAIT
    )

    assert done.state == pb.BATCH_STATE_PARTIALLY_SUCCEEDED
    assert (done.counts.succeeded, done.counts.failed, done.file_count) == (1, 1, 2)
    assert done.create_time.ToNanoseconds() <= done.update_time.ToNanoseconds()
    assert done.sequence > 0
    ok, bad = done.files
    assert ok.state == pb.FILE_STATE_SUCCEEDED
    assert not ok.HasField("error")
    assert ok.attempt_count == 1
    attempt = ok.attempts[0]
    assert attempt.outcome == pb.ATTEMPT_OUTCOME_SUCCEEDED
    assert attempt.HasField("worker_pid")
    assert attempt.worker_pid > 0
    assert attempt.start_time.ToNanoseconds() <= attempt.end_time.ToNanoseconds()
    assert bad.state == pb.FILE_STATE_FAILED
    assert bad.error.code == "NOT_A_PDF"
    assert bad.error.message.startswith("This file is not a PDF.")
    assert not bad.error.retryable
    assert bad.error.HasField("time")
    assert bad.attempts[0].outcome == pb.ATTEMPT_OUTCOME_FAILED
    assert bad.attempts[0].code == "NOT_A_PDF"


def test_policy_overrides_are_applied_and_the_effective_policy_is_returned(
    server: RunningServer,
) -> None:
    policy = pb.BatchPolicy(max_concurrency=1, max_manual_retries=2)
    policy.retry.max_attempts = 1
    policy.file_timeout.FromSeconds(30)
    policy.tolerated_failures.max_failed_files = 5

    batch = server.submit(("a.pdf", make_pdf("a")), policy=policy)

    effective = batch.policy
    assert effective.retry.max_attempts == 1
    assert effective.max_concurrency == 1
    assert effective.max_manual_retries == 2
    assert effective.file_timeout.ToSeconds() == 30
    assert effective.tolerated_failures.max_failed_files == 5
    assert not effective.tolerated_failures.HasField("max_failed_percent")
    # Fields left unset keep the defaults, reported in full.
    assert effective.retry.initial_backoff.ToMilliseconds() == 1000
    assert effective.retry.max_backoff.ToSeconds() == 60
    assert effective.retry.jitter == pb.JITTER_FULL
    assert effective.restart_intensity.max_restarts == 50
    server.settle(batch.batch_id)


def test_list_batches_pages_newest_first_and_filters_by_state(server: RunningServer) -> None:
    ids = []
    for name in ("first", "second", "third"):
        batch = server.submit((f"{name}.pdf", make_pdf(name)), display_name=name)
        server.settle(batch.batch_id)
        ids.append(batch.batch_id)
    failed = server.submit(("x.pdf", b"garbage"), display_name="failed")
    server.settle(failed.batch_id)

    first = server.stub.ListBatches(pb.ListBatchesRequest(page_size=2), timeout=WAIT)
    assert [b.display_name for b in first.batches] == ["failed", "third"]
    assert all(len(b.files) == 0 and b.file_count == 1 for b in first.batches)
    second = server.stub.ListBatches(
        pb.ListBatchesRequest(page_size=2, page_token=first.next_page_token), timeout=WAIT
    )
    assert [b.display_name for b in second.batches] == ["second", "first"]
    assert second.next_page_token == ""

    only_failed = server.stub.ListBatches(
        pb.ListBatchesRequest(states=[pb.BATCH_STATE_FAILED]), timeout=WAIT
    )
    assert [b.batch_id for b in only_failed.batches] == [failed.batch_id]
    assert [b.batch_id for b in server.client.list(page_size=1)] == [
        failed.batch_id,
        *ids[::-1],
    ]

    mismatched = refused(
        lambda: server.stub.ListBatches(
            pb.ListBatchesRequest(
                page_size=2,
                page_token=first.next_page_token,
                states=[pb.BATCH_STATE_SUCCEEDED],
            ),
            timeout=WAIT,
        )
    )
    assert (mismatched.code, mismatched.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    garbage = refused(
        lambda: server.stub.ListBatches(pb.ListBatchesRequest(page_token="%%%"), timeout=WAIT)
    )
    assert garbage.reason == "INVALID_PAGE_TOKEN"
    unspecified = refused(
        lambda: server.stub.ListBatches(
            pb.ListBatchesRequest(states=[pb.BATCH_STATE_UNSPECIFIED]), timeout=WAIT
        )
    )
    assert unspecified.violations == [("states[0]", "Name a batch state.")]


def test_retry_with_the_password_recovers_an_encrypted_file(server: RunningServer) -> None:
    batch = server.submit(("secret.pdf", make_pdf("classified", password="pw")))
    server.settle(batch.batch_id)
    failed = server.client.get(batch.batch_id)
    assert failed.state == pb.BATCH_STATE_FAILED
    assert failed.files[0].error.code == "PDF_ENCRYPTED"
    file_id = failed.files[0].file_id

    retried = server.stub.RetryFiles(
        pb.RetryFilesRequest(batch_id=batch.batch_id, passwords={file_id: "pw"}), timeout=WAIT
    )
    # The batch and its counts after the retry, with its first page of files.
    assert retried.state == pb.BATCH_STATE_RUNNING
    assert retried.counts.failed == 0
    assert retried.counts.pending + retried.counts.running == 1
    assert [(f.file_id, f.manual_retries) for f in retried.files] == [(file_id, 1)]
    server.settle(batch.batch_id)

    done = server.client.get(batch.batch_id)
    assert done.state == pb.BATCH_STATE_SUCCEEDED
    assert done.files[0].manual_retries == 1
    assert done.files[0].password_supplied
    assert done.files[0].attempt_count == 2
    assert server.client.result(batch.batch_id, file_id).pages == ["classified"]


def test_retry_refusals_carry_their_codes_and_reasons(server: RunningServer) -> None:
    batch = server.submit(("ok.pdf", make_pdf("ok")))
    server.settle(batch.batch_id)
    file_id = batch.files[0].file_id

    def retry(*file_ids: str) -> None:
        server.stub.RetryFiles(
            pb.RetryFilesRequest(batch_id=batch.batch_id, file_ids=file_ids), timeout=WAIT
        )

    succeeded = refused(lambda: retry(file_id))
    assert (succeeded.code, succeeded.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "FILE_ALREADY_SUCCEEDED",
    )
    assert succeeded.metadata == {"fileId": file_id}
    nothing = refused(retry)
    assert (nothing.code, nothing.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOTHING_TO_RETRY",
    )
    unknown = refused(lambda: retry("f99999"))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "FILE_NOT_FOUND")


def test_cancel_returns_once_the_batch_is_cancelled_and_nothing_runs(
    server: RunningServer,
) -> None:
    pages = many_pages(SEEN_RUNNING_PAGES)
    policy = pb.BatchPolicy(max_concurrency=1)
    batch = server.submit(*((f"{n}.pdf", pages) for n in range(6)), policy=policy)
    wait_until_running(server.stub, batch.batch_id)

    cancelled = server.stub.CancelBatch(
        pb.CancelBatchRequest(batch_id=batch.batch_id), timeout=WAIT
    )

    assert cancelled.state == pb.BATCH_STATE_CANCELLED
    states = {f.state for f in cancelled.files}
    assert pb.FILE_STATE_CANCELLED in states
    assert states <= {pb.FILE_STATE_CANCELLED, pb.FILE_STATE_SUCCEEDED}
    assert cancelled.counts.running == cancelled.counts.pending == 0
    assert "Cancelled (client)" in cancelled.reason
    # Cancelling again changes nothing.
    again = server.client.cancel(batch.batch_id)
    assert again.sequence == cancelled.sequence

    # The files that waited were cancelled by one event, which a watcher can apply.
    replay = list(
        server.stub.WatchBatch(
            # Event 1 started the batch; the files' changes come after it.
            pb.WatchBatchRequest(batch_id=batch.batch_id, after_sequence=1),
            timeout=WAIT,
        )
    )
    (bulk,) = [e.files for e in replay if e.WhichOneof("change") == "files"]
    waiting = [f.file_id for f in cancelled.files if not f.attempts]
    assert list(bulk.file_ids) == waiting
    assert len(waiting) >= 4
    assert (bulk.state, bulk.error.code) == (pb.FILE_STATE_CANCELLED, "CANCELLED")
    # Every event carries the batch's counts: the last one's are the batch's.
    tracker = BatchTracker()
    for event in replay:
        tracker.apply(event)
    assert tracker.counts()[pb.FILE_STATE_CANCELLED] == cancelled.counts.cancelled
    assert tracker.counts()[pb.FILE_STATE_SUCCEEDED] == cancelled.counts.succeeded
    assert replay[-1].counts == cancelled.counts
    history = server.stub.GetFileHistory(
        pb.GetFileHistoryRequest(batch_id=batch.batch_id, file_id=waiting[-1]), timeout=WAIT
    )
    (transition,) = [e.transition for e in history.entries if e.HasField("transition")]
    assert (transition.from_state, transition.to_state) == (
        pb.FILE_STATE_PENDING,
        pb.FILE_STATE_CANCELLED,
    )


def test_a_basic_view_leaves_the_files_out_and_a_bad_view_changes_nothing(
    server: RunningServer,
) -> None:
    policy = pb.BatchPolicy(max_concurrency=1)
    pages = many_pages(SEEN_RUNNING_PAGES)
    batch = server.submit(*((f"{n}.pdf", pages) for n in range(3)), policy=policy)
    wait_until_running(server.stub, batch.batch_id)
    bad = refused(
        lambda: server.stub.CancelBatch(
            pb.CancelBatchRequest(batch_id=batch.batch_id, view=7),
            timeout=WAIT,  # type: ignore[arg-type]
        )
    )
    assert (bad.code, bad.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VIEW")
    assert server.client.get(batch.batch_id).state == pb.BATCH_STATE_RUNNING, "not cancelled"

    basic = server.client.cancel(batch.batch_id, with_files=False)
    assert basic.state == pb.BATCH_STATE_CANCELLED
    assert list(basic.files) == []
    assert basic.file_count == 3
    assert basic.counts.cancelled + basic.counts.succeeded == 3
    full = server.stub.GetBatch(
        pb.GetBatchRequest(batch_id=batch.batch_id, view=pb.BATCH_VIEW_FULL),
        timeout=WAIT,
    )
    assert [f.state for f in full.files].count(pb.FILE_STATE_CANCELLED) == basic.counts.cancelled
    summary = server.stub.GetBatch(
        pb.GetBatchRequest(batch_id=batch.batch_id, view=pb.BATCH_VIEW_BASIC),
        timeout=WAIT,
    )
    assert (list(summary.files), summary.counts) == ([], basic.counts)


def test_get_file_result_streams_metadata_then_every_page(server: RunningServer) -> None:
    data = many_pages(2000)
    batch = server.submit(("long.pdf", data))
    server.settle(batch.batch_id)
    file_id = batch.files[0].file_id

    chunks = list(
        server.stub.GetFileResult(
            pb.GetFileResultRequest(batch_id=batch.batch_id, file_id=file_id), timeout=WAIT
        )
    )

    assert chunks[0].WhichOneof("part") == "metadata"
    meta = chunks[0].metadata
    assert (meta.batch_id, meta.file_id, meta.name) == (batch.batch_id, file_id, "long.pdf")
    assert meta.page_count == 2000
    assert not meta.encrypted
    pages = [c.page for c in chunks[1:]]
    assert [p.page_number for p in pages] == list(range(1, 2001))
    assert pages[0].text == "page 1"
    assert pages[-1].text == "page 2000"
    assert max(c.ByteSize() for c in chunks) < 4096


def test_results_of_a_failed_file_are_not_available(server: RunningServer) -> None:
    batch = server.submit(("bad.pdf", b"%PDF-1.7 truncated"))
    server.settle(batch.batch_id)

    error = refused(
        lambda: list(
            server.stub.GetFileResult(
                pb.GetFileResultRequest(batch_id=batch.batch_id, file_id=batch.files[0].file_id),
                timeout=WAIT,
            )
        )
    )

    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESULT_NOT_AVAILABLE",
    )
    assert "only succeeded files have results" in error.message


def test_delete_removes_the_batch_its_results_and_its_bytes(server: RunningServer) -> None:
    shared = make_pdf("shared")
    kept = server.submit(("shared.pdf", shared))
    doomed = server.submit(("shared.pdf", shared), ("own.pdf", make_pdf("own")))
    server.settle(kept.batch_id)
    server.settle(doomed.batch_id)
    assert len(server.blob_files()) == 2

    server.stub.DeleteBatch(pb.DeleteBatchRequest(batch_id=doomed.batch_id), timeout=WAIT)

    gone = refused(lambda: server.client.get(doomed.batch_id))
    assert (gone.code, gone.reason) == (grpc.StatusCode.NOT_FOUND, "BATCH_NOT_FOUND")
    no_result = refused(lambda: server.client.result(doomed.batch_id, "f00001"))
    assert no_result.code == grpc.StatusCode.NOT_FOUND
    # The bytes only the deleted batch had are gone; those another batch shares stay.
    assert [p.name for p in server.blob_files()] == [hashlib.sha256(shared).hexdigest()]
    assert server.client.result(kept.batch_id, "f00001").pages == ["shared"]
    again = refused(lambda: server.client.delete(doomed.batch_id))
    assert again.code == grpc.StatusCode.NOT_FOUND


class _NoWholeBatches(SQLiteStore):
    """The service's store, refusing to read a batch whole (``load``)."""

    def load(self, batch_id: str) -> BatchView | None:
        raise AssertionError(f"batch {batch_id} read whole")


def test_delete_reads_a_big_batch_a_page_at_a_time(serve: ServerFactory, tmp_path: Path) -> None:
    store = _NoWholeBatches(tmp_path / "pdfbatch.sqlite3")
    try:
        server = serve(store=store, processor=SCREENED, limits={"max_files_per_batch": 2_500})
        try:
            shared = script(b"ok:shared")
            kept = server.submit(("shared.pdf", shared))
            # More files than a page of the deletion, each a blob of its own, one shared.
            own = [(f"{n}.pdf", script(b"ok:%d" % n)) for n in range(DELETE_PAGE_FILES + 500)]
            doomed = server.submit(("shared.pdf", shared), *own)
            server.settle(kept.batch_id)
            server.settle(doomed.batch_id)
            assert len(server.blob_files()) == len(own) + 1

            server.client.delete(doomed.batch_id)

            assert store.batch_summary(doomed.batch_id) is None
            assert [p.name for p in server.blob_files()] == [hashlib.sha256(shared).hexdigest()]
            assert server.client.get(kept.batch_id).counts.succeeded == 1
        finally:
            # Before the store it was given closes.
            server.service.stop(grace=0)
    finally:
        store.close()


def test_delete_cancels_a_running_batch_first(server: RunningServer) -> None:
    pages = many_pages(SEEN_RUNNING_PAGES)
    batch = server.submit(
        *((f"{n}.pdf", pages) for n in range(4)), policy=pb.BatchPolicy(max_concurrency=1)
    )

    server.client.delete(batch.batch_id)

    assert server.store.load(batch.batch_id) is None
    assert server.blob_files() == []


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.GetBatch(pb.GetBatchRequest()), id="get"),
        pytest.param(lambda s: s.CancelBatch(pb.CancelBatchRequest()), id="cancel"),
        pytest.param(lambda s: s.RetryFiles(pb.RetryFilesRequest()), id="retry"),
        pytest.param(lambda s: s.DeleteBatch(pb.DeleteBatchRequest()), id="delete"),
        pytest.param(lambda s: list(s.WatchBatch(pb.WatchBatchRequest())), id="watch"),
        pytest.param(
            lambda s: list(s.GetFileResult(pb.GetFileResultRequest(batch_id="b"))), id="result"
        ),
        pytest.param(
            lambda s: list(s.ExportResults(pb.ExportResultsRequest(after_file_id="f1"))),
            id="export",
        ),
    ],
)
def test_missing_ids_are_invalid_arguments(server: RunningServer, call: object) -> None:
    error = refused(lambda: call(server.stub))  # type: ignore[operator]

    assert (error.code, error.reason, error.domain) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MISSING_FIELD",
        "pdfbatch.dev",
    )
    assert len(error.violations) == 1
    assert error.localized == error.message


def test_unknown_batch_is_not_found_with_a_localized_message(server: RunningServer) -> None:
    error = refused(lambda: server.client.get("no-such-batch"))

    assert (error.code, error.reason, error.domain) == (
        grpc.StatusCode.NOT_FOUND,
        "BATCH_NOT_FOUND",
        "pdfbatch.dev",
    )
    assert error.localized == "No batch with this id exists."


def test_an_unexpected_failure_is_internal_without_details(serve: ServerFactory) -> None:
    from actors.storage.store import MemoryStore

    class BrokenStore(MemoryStore):
        def batch_summaries(self, **_: object) -> list:  # type: ignore[override,type-arg]
            raise RuntimeError("disk /var/secret/store.db exploded")

    server = serve(store=BrokenStore())

    error = refused(lambda: server.stub.ListBatches(pb.ListBatchesRequest(), timeout=WAIT))

    assert (error.code, error.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL_ERROR")
    assert "secret" not in error.message
    assert "Traceback" not in error.message


def test_a_request_that_does_not_decode_is_refused_as_invalid_not_internal(
    server: RunningServer,
) -> None:
    # Field 1 of every request below is a string: these bytes give it invalid UTF-8.
    not_utf8 = b"\x0a\x02\xc3\x28"
    truncated = b"\x0a\x05ab"
    get = server.channel.unary_unary(
        "/pdfbatch.v1.BatchService/GetBatch", request_serializer=lambda b: b
    )
    watch = server.channel.unary_stream(
        "/pdfbatch.v1.BatchService/WatchBatch", request_serializer=lambda b: b
    )
    submit = server.channel.stream_unary(
        "/pdfbatch.v1.BatchService/SubmitBatch", request_serializer=lambda b: b
    )
    health_check = server.channel.unary_unary(
        "/grpc.health.v1.Health/Check", request_serializer=lambda b: b
    )
    spec = pb.SubmitBatchRequest(spec=pb.BatchSpec()).SerializeToString()
    header = pb.SubmitBatchRequest(file=pb.FileHeader(name="a.pdf", size_bytes=4))

    refusals = {
        "GetBatch": refused(lambda: get(not_utf8, timeout=WAIT)),
        "WatchBatch": refused(lambda: list(watch(truncated, timeout=WAIT))),
        "SubmitBatch": refused(
            lambda: submit(iter([spec, header.SerializeToString(), b"\x1a\x02ab", b"\xff"]))
        ),
        "Health/Check": refused(lambda: health_check(not_utf8, timeout=WAIT)),
    }

    for method, refusal in refusals.items():
        assert (refusal.code, refusal.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_REQUEST",
        ), method
        assert refusal.message.startswith("The request is not a valid "), method
    assert "pdfbatch.v1.SubmitBatchRequest" in refusals["SubmitBatch"].message
    # The upload was refused midway: nothing of it is kept, not even a temporary file.
    assert server.blob_files() == []
    assert server.stub.ListBatches(pb.ListBatchesRequest(), timeout=WAIT).batches == []


def test_a_refusal_that_quotes_a_huge_caller_id_still_arrives_as_that_refusal(
    server: RunningServer,
) -> None:
    # Quoted whole, these ids made the refusal's metadata larger than a gRPC client
    # accepts (8 KiB): the caller got RESOURCE_EXHAUSTED from its own library instead.
    batch = server.submit(("a.pdf", make_pdf("a")))
    server.settle(batch.batch_id)
    huge = "\U0001f4a5" * 100_000

    history = refused(
        lambda: server.stub.GetFileHistory(
            pb.GetFileHistoryRequest(batch_id=batch.batch_id, file_id=huge), timeout=WAIT
        )
    )
    retry = refused(
        lambda: server.stub.RetryFiles(
            pb.RetryFilesRequest(batch_id=batch.batch_id, file_ids=[huge]), timeout=WAIT
        )
    )
    labels = {"\U0001f511" * 200 + str(n): "\n" for n in range(80)}
    spec = refused(
        lambda: server.stub.SubmitBatch(
            upload(pb.BatchSpec(labels=labels), [("a.pdf", b"%PDF-")]), timeout=WAIT
        )
    )

    for refusal in (history, retry):
        assert (refusal.code, refusal.reason) == (grpc.StatusCode.NOT_FOUND, "FILE_NOT_FOUND")
        assert refusal.metadata["fileId"].startswith("\U0001f4a5")
        assert len(refusal.metadata["fileId"].encode()) <= 128
    assert (spec.code, spec.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_BATCH_SPEC")
    assert spec.violations[0] == ("spec.labels", "At most 64 labels.")
    assert 1 < len(spec.violations) < 80
    # Nor is the id written out whole into the log and the audit trail of every call.
    (audited,) = [e for e in server.store.audit_entries(batch.batch_id) if e.action == "RetryFiles"]
    assert audited.detail.startswith("\U0001f4a5")
    assert len(audited.detail) <= 64
