"""Replies that never grow with a batch: ``GetBatch`` basic by default, the full view a
first page with a token for ``ListFiles``, the same first page from ``SubmitBatch``,
``RetryFiles`` and ``CancelBatch``, ``GetFileHistory`` in pages, and page tokens that fit
one batch, file and caller only. A real server, real SQLite, a page smaller than the
batch."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.service.app import PAGE_TOKEN_KEY_NAME, _page_token_key
from tests.helpers.security_fixtures import SecureFactory, submit
from tests.helpers.server_fixtures import (
    WAIT,
    RunningServer,
    ServerFactory,
    audited,
    make_pdf,
    refused,
)

# The full view's first page, smaller than the batch.
FIRST_PAGE = 3
FILES = [(f"{n}.pdf", make_pdf(f"text {n}")) for n in range(5)] + [
    ("junk-1.pdf", b"junk"),
    ("junk-2.pdf", b"more junk"),
]


@pytest.fixture
def server(serve: ServerFactory) -> RunningServer:
    return serve(full_view_files=FIRST_PAGE)


def _get(server: RunningServer, batch_id: str, view: int = 0) -> pb.Batch:
    request = pb.GetBatchRequest(batch_id=batch_id, view=view)  # type: ignore[arg-type]
    return server.stub.GetBatch(request, timeout=WAIT)


def _every_file(server: RunningServer, batch_id: str) -> list[pb.FileStatus]:
    request = pb.ListFilesRequest(batch_id=batch_id, page_size=1000)
    return list(server.stub.ListFiles(request, timeout=WAIT).files)


def test_get_batch_is_basic_by_default_and_full_is_a_first_page_that_list_files_continues(
    server: RunningServer,
) -> None:
    batch = server.submit(*FILES)
    server.settle(batch.batch_id)

    basic = _get(server, batch.batch_id)
    full = _get(server, batch.batch_id, pb.BATCH_VIEW_FULL)
    listed = list(full.files)
    token = full.next_page_token
    pages = 0
    while token:
        request = pb.ListFilesRequest(batch_id=batch.batch_id, page_size=2, page_token=token)
        page = server.stub.ListFiles(request, timeout=WAIT)
        listed += page.files
        token = page.next_page_token
        pages += 1

    assert (list(basic.files), basic.next_page_token) == ([], "")
    assert basic.file_count == len(FILES)
    assert (basic.counts.succeeded, basic.counts.failed) == (5, 2)
    assert len(full.files) == FIRST_PAGE
    assert full.counts == basic.counts
    assert pages == 2
    assert listed == _every_file(server, batch.batch_id), "each file once, in order"
    # The token is ListFiles' without a filter: with one it is another listing's.
    wrong = refused(
        lambda: server.stub.ListFiles(
            pb.ListFilesRequest(
                batch_id=batch.batch_id,
                page_token=full.next_page_token,
                states=[pb.FILE_STATE_FAILED],
            ),
            timeout=WAIT,
        )
    )
    assert (wrong.code, wrong.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


def test_submit_retry_and_cancel_reply_with_a_first_page_at_most(server: RunningServer) -> None:
    batch = server.submit(*FILES)
    server.settle(batch.batch_id)

    retried = server.stub.RetryFiles(pb.RetryFilesRequest(batch_id=batch.batch_id), timeout=WAIT)
    cancelled = server.stub.CancelBatch(
        pb.CancelBatchRequest(batch_id=batch.batch_id), timeout=WAIT
    )
    basic = server.stub.CancelBatch(
        pb.CancelBatchRequest(batch_id=batch.batch_id, view=pb.BATCH_VIEW_BASIC), timeout=WAIT
    )

    assert (batch.file_count, len(batch.files)) == (len(FILES), FIRST_PAGE)
    assert [f.name for f in batch.files] == [name for name, _ in FILES[:FIRST_PAGE]]
    assert batch.next_page_token
    for reply in (retried, cancelled):
        assert len(reply.files) == FIRST_PAGE
        assert reply.next_page_token
        assert reply.file_count == len(FILES)
    # Both failed files were moved back by the one call (the reply is read after it, when
    # they may have failed again already).
    for file_id in ("f00006", "f00007"):
        transitions = [
            (e.transition.from_state, e.transition.to_state)
            for e in _history(server, batch.batch_id, file_id, page_size=1000).entries
            if e.HasField("transition")
        ]
        assert (pb.FILE_STATE_FAILED, pb.FILE_STATE_PENDING) in transitions, file_id
    assert (list(basic.files), basic.next_page_token) == ([], "")
    # A retry of every failed file sends no id: one call, whatever their number.
    assert audited(server.data_dir, "RetryFiles") == ["OK"]


def _history(
    server: RunningServer, batch_id: str, file_id: str, **page: object
) -> pb.GetFileHistoryResponse:
    request = pb.GetFileHistoryRequest(batch_id=batch_id, file_id=file_id, **page)  # type: ignore[arg-type]
    return server.stub.GetFileHistory(request, timeout=WAIT)


def _reads_left_out(entries: list[pb.HistoryEntry]) -> list[pb.HistoryEntry]:
    return [e for e in entries if e.request.action != "GetFileHistory"]


def test_a_file_history_comes_in_pages_that_join_into_the_whole(server: RunningServer) -> None:
    batch = server.submit(("junk.pdf", b"junk"), ("a.pdf", make_pdf("a")))
    server.settle(batch.batch_id)
    for _ in range(2):
        server.stub.RetryFiles(
            pb.RetryFilesRequest(batch_id=batch.batch_id, file_ids=["f00001"]), timeout=WAIT
        )
        server.settle(batch.batch_id)

    whole = _history(server, batch.batch_id, "f00001", page_size=1000)
    pages = [_history(server, batch.batch_id, "f00001", page_size=2)]
    while pages[-1].next_page_token:
        token = pages[-1].next_page_token
        pages.append(_history(server, batch.batch_id, "f00001", page_size=2, page_token=token))

    assert whole.next_page_token == ""
    transitions = [e.transition for e in whole.entries if e.HasField("transition")]
    # Screening refuses it before any worker has it: each attempt ends where it began.
    assert len(transitions) == 5, "failed; then twice: pending, failed"
    assert [(t.from_state, t.to_state) for t in transitions[:3]] == [
        (pb.FILE_STATE_PENDING, pb.FILE_STATE_FAILED),
        (pb.FILE_STATE_FAILED, pb.FILE_STATE_PENDING),
        (pb.FILE_STATE_PENDING, pb.FILE_STATE_FAILED),
    ]
    assert all(len(page.entries) <= 2 for page in pages)
    assert len(pages) > len(whole.entries) // 2
    assert {page.file.file_id for page in pages} == {"f00001"}
    joined = [entry for page in pages for entry in page.entries]
    # The same history, but for the first listing's own request, audited after it.
    assert _reads_left_out(joined) == _reads_left_out(list(whole.entries))
    assert [e.request.action for e in joined if e.request.action == "GetFileHistory"] == [
        "GetFileHistory"
    ]


def test_bad_history_pages_are_refused_with_a_reason(server: RunningServer) -> None:
    batch = server.submit(("junk.pdf", b"junk"), ("junk-2.pdf", b"junk"))
    other = server.submit(("junk.pdf", b"junk"))
    for each in (batch, other):
        server.settle(each.batch_id)
    token = _history(server, batch.batch_id, "f00001", page_size=1).next_page_token
    list_token = server.stub.ListFiles(
        pb.ListFilesRequest(batch_id=batch.batch_id, page_size=1), timeout=WAIT
    ).next_page_token
    assert token

    cases = {
        "not a token": ("f00001", batch.batch_id, {"page_token": "not-a-token"}),
        "another file's": ("f00002", batch.batch_id, {"page_token": token}),
        "another batch's": ("f00001", other.batch_id, {"page_token": token}),
        "another listing's": ("f00001", batch.batch_id, {"page_token": list_token}),
        "edited": ("f00001", batch.batch_id, {"page_token": "A" + token[1:]}),
    }
    for what, (file_id, batch_id, page) in cases.items():
        error = refused(lambda f=file_id, b=batch_id, p=page: _history(server, b, f, **p))
        assert (error.code, error.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_TOKEN",
        ), what
        assert error.violations[0][0] == "page_token"
    negative = refused(lambda: _history(server, batch.batch_id, "f00001", page_size=-1))
    assert (negative.code, negative.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_SIZE",
    )
    missing = refused(lambda: _history(server, batch.batch_id, "f09999"))
    assert missing.code == grpc.StatusCode.NOT_FOUND
    # The good token still works after all that.
    assert _history(server, batch.batch_id, "f00001", page_size=1, page_token=token).entries


def test_a_page_token_fits_only_the_caller_it_was_made_for(
    secure_serve: SecureFactory,
) -> None:
    server = secure_serve()
    acme, globex = server.stub("acme"), server.stub("globex")
    for name in ("a", "b"):
        submit(acme, (f"{name}.pdf", make_pdf(name)))
        submit(globex, (f"{name}.pdf", make_pdf(name)))
    token = acme.ListBatches(pb.ListBatchesRequest(page_size=1), timeout=WAIT).next_page_token

    stolen = refused(
        lambda: globex.ListBatches(pb.ListBatchesRequest(page_token=token), timeout=WAIT)
    )

    assert (stolen.code, stolen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    assert len(acme.ListBatches(pb.ListBatchesRequest(page_token=token)).batches) == 1


def test_the_page_token_key_is_kept_private_and_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / PAGE_TOKEN_KEY_NAME

    made = _page_token_key(path)
    again = _page_token_key(path)
    path.write_bytes(b"short")
    replaced = _page_token_key(path)

    assert made == again
    assert len(made) == 32
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert replaced != made
    assert len(replaced) == 32
