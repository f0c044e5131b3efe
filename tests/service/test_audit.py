"""The audit trail: every request, who made it, about which batch, and how it ended."""

from __future__ import annotations

import grpc
import pytest
import structlog
from structlog.testing import capture_logs

from bench.samples import not_a_pdf, text_pdf
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from tests.helpers.server_fixtures import RunningServer


def test_submit_fail_retry_cancel_is_audited_in_order(server: RunningServer) -> None:
    batch = server.submit(("good.pdf", text_pdf("fine")), ("bad.pdf", not_a_pdf()))
    server.settle(batch.batch_id)
    bad = next(f.file_id for f in batch.files if f.name == "bad.pdf")
    good = next(f.file_id for f in batch.files if f.name == "good.pdf")
    metadata = (("x-request-id", "retry-42"),)
    with capture_logs() as actor_logs:
        _, call = server.stub.RetryFiles.with_call(
            pb.RetryFilesRequest(batch_id=batch.batch_id, file_ids=[bad]),
            metadata=metadata,
            timeout=60,
        )
    # The id crosses into the supervisor's thread inside the message.
    (retried,) = [entry for entry in actor_logs if entry["event"] == "files_retried"]
    assert retried["request_id"] == "retry-42"
    assert ("x-request-id", "retry-42") in call.initial_metadata()
    server.settle(batch.batch_id)
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.RetryFiles(
            pb.RetryFilesRequest(batch_id=batch.batch_id, file_ids=[good]), timeout=60
        )
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        server.stub.CancelBatch(pb.CancelBatchRequest(batch_id=batch.batch_id), timeout=60)

    trail = server.store.audit_entries(batch.batch_id)
    assert [(e.action, e.outcome) for e in trail] == [
        ("SubmitBatch", "OK"),
        ("WatchBatch", "OK"),
        ("RetryFiles", "OK"),
        ("WatchBatch", "OK"),
        ("RetryFiles", "FAILED_PRECONDITION FILE_ALREADY_SUCCEEDED"),
        ("CancelBatch", "OK"),
    ]
    assert trail[2].request_id == "retry-42"
    assert trail[2].detail == bad
    assert len({e.request_id for e in trail}) == len(trail)
    assert all(e.caller == "" for e in trail), "single-tenant: the anonymous tenant"
    assert [e.at for e in trail] == sorted(e.at for e in trail)
    (line,) = [entry for entry in logs if entry["event"] == "rpc"]
    assert line["rpc"] == "CancelBatch"
    assert line["request_id"] == trail[-1].request_id
    assert line["batch_id"] == batch.batch_id
    history = server.stub.GetFileHistory(
        pb.GetFileHistoryRequest(batch_id=batch.batch_id, file_id=bad), timeout=60
    )
    lines = [
        (e.request.action, e.request.outcome)
        if e.HasField("request")
        else (pb.FileState.Name(e.transition.to_state), e.transition.reason)
        for e in history.entries
    ]
    assert ("SubmitBatch", "OK") in lines  # audited when the upload's call ended
    failed = (
        "FILE_STATE_FAILED",
        "attempt 1 failed with NOT_A_PDF, which another attempt cannot fix",
    )
    assert failed in lines
    assert ("RetryFiles", "OK") in lines
    assert ("FILE_STATE_PENDING", "retried by a client") in lines
    assert ("RetryFiles", "FAILED_PRECONDITION FILE_ALREADY_SUCCEEDED") not in lines, (
        "a retry of another file is not this file's history"
    )
    assert lines[-1] == ("CancelBatch", "OK")
    assert history.file.file_id == bad
    # The trail survives the batch it describes.
    server.stub.DeleteBatch(pb.DeleteBatchRequest(batch_id=batch.batch_id), timeout=60)
    assert [e.action for e in server.store.audit_entries(batch.batch_id)][-1] == "DeleteBatch"
