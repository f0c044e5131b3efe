"""A batch's files over the wire a page at a time (``ListFiles``), its basic view read
without its files, and the command line's ``status`` on top of both."""

from __future__ import annotations

import grpc
import pytest

from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.main import main
from tests.helpers.server_fixtures import WAIT, RunningServer, make_pdf, refused

pytestmark = pytest.mark.usefixtures("server_logs_to_stderr")

# Submission order: the two that are not PDFs fail at once, the others succeed.
FILES = [
    ("a.pdf", make_pdf("a")),
    ("junk-1.pdf", b"junk"),
    ("b.pdf", make_pdf("b")),
    ("c.pdf", make_pdf("c")),
    ("junk-2.pdf", b"more junk"),
    ("d.pdf", make_pdf("d")),
    ("e.pdf", make_pdf("e")),
]


@pytest.fixture
def settled(server: RunningServer) -> pb.Batch:
    batch = server.submit(*FILES, display_name="pages")
    server.settle(batch.batch_id)
    return server.stub.GetBatch(
        pb.GetBatchRequest(batch_id=batch.batch_id, view=pb.BATCH_VIEW_FULL), timeout=WAIT
    )


def test_pages_list_every_file_once_in_submission_order(
    server: RunningServer, settled: pb.Batch
) -> None:
    pages = list(server.client.file_pages(settled.batch_id, page_size=3))

    assert [len(page.files) for page in pages] == [3, 3, 1]
    listed = [f for page in pages for f in page.files]
    assert [f.name for f in listed] == [name for name, _ in FILES]
    assert list(listed) == list(settled.files), "as GetBatch's full view has them"
    assert {page.total_size for page in pages} == {len(FILES)}
    assert {page.sequence for page in pages} == {settled.sequence}
    assert pages[-1].next_page_token == ""


def test_a_filter_lists_only_files_in_those_states_and_counts_them(
    server: RunningServer, settled: pb.Batch
) -> None:
    (page,) = server.client.file_pages(settled.batch_id, states=[pb.FILE_STATE_FAILED])

    assert [f.name for f in page.files] == ["junk-1.pdf", "junk-2.pdf"]
    assert page.total_size == settled.counts.failed == 2
    assert all(f.error.code == "NOT_A_PDF" for f in page.files)


def test_the_basic_view_has_the_counts_but_no_file(
    server: RunningServer, settled: pb.Batch
) -> None:
    request = pb.GetBatchRequest(batch_id=settled.batch_id, view=pb.BATCH_VIEW_BASIC)

    basic = server.stub.GetBatch(request, timeout=WAIT)

    assert not basic.files
    assert basic.counts == settled.counts
    assert basic.file_count == len(FILES)
    assert basic.sequence == settled.sequence
    listed = server.client.list()
    assert [(b.batch_id, b.counts, b.file_count) for b in listed] == [
        (settled.batch_id, settled.counts, len(FILES))
    ]


def test_bad_pages_are_refused_with_a_reason(server: RunningServer, settled: pb.Batch) -> None:
    def list_files(**fields: object) -> object:
        request = pb.ListFilesRequest(batch_id=settled.batch_id, **fields)  # type: ignore[arg-type]
        return server.stub.ListFiles(request, timeout=WAIT)

    first = list_files(page_size=2)
    cases = {
        "INVALID_PAGE_SIZE": {"page_size": -1},
        "INVALID_PAGE_TOKEN": {"page_token": "not-a-token"},
        "INVALID_STATE": {"states": [pb.FILE_STATE_UNSPECIFIED]},
    }
    for reason, fields in cases.items():
        error = refused(lambda fields=fields: list_files(**fields))
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    # A token fits the filter it was made for.
    token = first.next_page_token  # type: ignore[attr-defined]
    mismatched = refused(lambda: list_files(page_token=token, states=[pb.FILE_STATE_FAILED]))
    assert mismatched.reason == "INVALID_PAGE_TOKEN"
    missing = refused(
        lambda: server.stub.ListFiles(pb.ListFilesRequest(batch_id="nope"), timeout=WAIT)
    )
    assert missing.code == grpc.StatusCode.NOT_FOUND


def test_status_lists_the_first_files_and_says_how_many_more(
    server: RunningServer, settled: pb.Batch, capsys: pytest.CaptureFixture[str]
) -> None:
    address = ["--address", server.address]

    code = main(["status", settled.batch_id, "--limit", "2", *address])
    out = capsys.readouterr().out

    assert code == 2
    assert out.count(" attempt(s) ") == 2
    assert "... and 5 more" in out
    assert main(["status", settled.batch_id, "--state", "failed", *address]) == 2
    failed = capsys.readouterr().out
    assert failed.count(" attempt(s) ") == 2
    assert "junk-1.pdf" in failed
    assert "more" not in failed
