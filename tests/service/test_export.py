"""``ExportResults`` through a real server: real workers, SQLite and gRPC on loopback."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from actors.policy.results import TEXT_PIECE_CHARS
from server.client.api import Client, ExportedResult
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from tests.helpers.poison_pdfs import text_amplifier
from tests.helpers.processes import eventually
from tests.helpers.server_fixtures import (
    WAIT,
    RunningServer,
    ServerFactory,
    TcpProxy,
    audited,
    make_pdf,
    refused,
)

pytestmark = pytest.mark.usefixtures("server_logs_to_stderr")


def image_only_pdf() -> bytes:
    """A one-page PDF whose page is an image and nothing else: no text to extract."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] "
        b"/Resources << /XObject << /Im1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /XObject /Subtype /Image /Width 2 /Height 2 /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Length 4 >>\nstream\n\x00\xff\xff\x00\nendstream",
        b"<< /Length 31 >>\nstream\nq 200 0 0 200 0 0 cm /Im1 Do Q\nendstream",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


MIXED = (
    ("one.pdf", make_pdf("first of one", "second of one")),
    ("scan.pdf", image_only_pdf()),
    ("broken.pdf", b"%PDF-1.7 truncated"),
    ("two.pdf", make_pdf("only page of two")),
)


def _export(
    server: RunningServer, batch_id: str, after: str = ""
) -> list[pb.ExportResultsResponse]:
    request = pb.ExportResultsRequest(batch_id=batch_id, after_file_id=after)
    return list(server.stub.ExportResults(request, timeout=WAIT))


def _files(messages: list[pb.ExportResultsResponse]) -> list[tuple[pb.ExportedFile, list[str]]]:
    """Each exported file with its pages' text, pieces joined."""
    files: list[tuple[pb.ExportedFile, list[str]]] = []
    for message in messages[1:]:
        if message.HasField("file"):
            files.append((message.file, []))
        else:
            pages = files[-1][1]
            if message.page.page_number > len(pages):
                assert message.page.page_number == len(pages) + 1, "a page was skipped"
                pages.append("")
            pages[-1] += message.page.text
    return files


def test_export_sends_the_batch_then_every_file_in_order_with_its_result(
    server: RunningServer,
) -> None:
    batch = server.submit(*MIXED, display_name="mixed")
    server.settle(batch.batch_id)

    messages = _export(server, batch.batch_id)

    assert messages[0].WhichOneof("part") == "batch"
    head = messages[0].batch
    assert (head.batch_id, head.display_name, head.file_count) == (batch.batch_id, "mixed", 4)
    assert head.state == pb.BATCH_STATE_PARTIALLY_SUCCEEDED
    assert list(head.files) == []
    assert not any(m.HasField("batch") for m in messages[1:])
    files = _files(messages)
    assert [(f.status.file_id, f.status.name) for f, _ in files] == [
        ("f00001", "one.pdf"),
        ("f00002", "scan.pdf"),
        ("f00003", "broken.pdf"),
        ("f00004", "two.pdf"),
    ]
    by_name = {f.status.name: (f, pages) for f, pages in files}
    broken, broken_pages = by_name["broken.pdf"]
    assert broken.status.state == pb.FILE_STATE_FAILED
    assert broken.status.error.code == "PDF_MALFORMED"
    assert broken.status.error.message
    assert not broken.HasField("result")
    assert broken_pages == []
    for name in ("one.pdf", "scan.pdf", "two.pdf"):
        exported, pages = by_name[name]
        assert exported.status.state == pb.FILE_STATE_SUCCEEDED
        # Exactly what GetFileResult says of the file.
        alone = server.client.result(batch.batch_id, exported.status.file_id)
        assert exported.result == alone.metadata
        assert pages == alone.pages
    assert by_name["one.pdf"][1] == ["first of one", "second of one"]
    assert by_name["scan.pdf"][1] == [""]
    assert audited(server.data_dir, "ExportResults") == ["OK"]


def test_export_resumes_after_a_file_and_refuses_a_file_the_batch_lacks(
    server: RunningServer,
) -> None:
    batch = server.submit(*MIXED)
    server.settle(batch.batch_id)

    resumed = _files(_export(server, batch.batch_id, after="f00002"))
    last = _files(_export(server, batch.batch_id, after="f00004"))
    error = refused(lambda: _export(server, batch.batch_id, after="f00009"))

    assert [f.status.file_id for f, _ in resumed] == ["f00003", "f00004"]
    assert resumed[1][1] == ["only page of two"]
    assert last == []
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "FILE_NOT_FOUND")
    assert "after_file_id" in error.message
    missing = refused(lambda: _export(server, "0" * 32))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "BATCH_NOT_FOUND")


def test_a_long_text_comes_in_bounded_pieces_that_join_to_the_whole(
    server: RunningServer,
) -> None:
    chars = 2 * TEXT_PIECE_CHARS + 1024  # a multiple of fan_out
    batch = server.submit(
        ("long.pdf", text_amplifier(chars, fan_out=128)), ("a.pdf", make_pdf("a"))
    )
    server.settle(batch.batch_id)

    messages = _export(server, batch.batch_id)

    pieces = [m.page for m in messages if m.HasField("page")]
    long_pieces = pieces[:-1]
    assert len(long_pieces) == 3
    assert {p.page_number for p in long_pieces} == {1}
    assert max(len(p.text) for p in long_pieces) == TEXT_PIECE_CHARS
    assert max(m.ByteSize() for m in messages) < 4 * 1024 * 1024
    files = _files(messages)
    assert files[0][1] == ["A" * chars]
    assert files[1][1] == ["a"]


def test_exports_beyond_max_exports_are_refused_until_one_ends(serve: ServerFactory) -> None:
    server = serve(max_exports=1)
    # A text far beyond what the transport buffers: the first export waits on its reader.
    batch = server.submit(("long.pdf", text_amplifier(16 * TEXT_PIECE_CHARS, fan_out=256)))
    server.settle(batch.batch_id)
    request = pb.ExportResultsRequest(batch_id=batch.batch_id)
    first = server.stub.ExportResults(request, timeout=WAIT)
    assert next(first).HasField("batch")

    error = refused(lambda: list(server.stub.ExportResults(request, timeout=WAIT)))

    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_EXPORTS")
    assert "max_exports" in error.message
    assert error.metadata == {"maxExports": "1"}
    assert error.retry_delay is not None
    first.cancel()
    # The refused call is audited at once; the first once the server let its stream go.
    eventually(lambda: len(audited(server.data_dir, "ExportResults")) == 2)
    assert len(_files(list(server.stub.ExportResults(request, timeout=WAIT)))) == 1


def test_the_client_yields_whole_files_and_resumes_after_a_dropped_connection(
    server: RunningServer, proxy_to: Callable[[str], TcpProxy]
) -> None:
    chars = 16 * TEXT_PIECE_CHARS
    batch = server.submit(
        ("a.pdf", make_pdf("a")),
        ("long.pdf", text_amplifier(chars, fan_out=256)),
        ("broken.pdf", b"junk"),
        ("c.pdf", make_pdf("c1", "c2")),
    )
    server.settle(batch.batch_id)
    proxy = proxy_to(server.address)
    seen: list[ExportedResult] = []

    with Client(proxy.address) as client:
        for exported in client.export(batch.batch_id):
            seen.append(exported)
            if len(seen) == 1:
                # The long text is on its way, held back by the transport's flow control.
                proxy.drop()
        after = list(client.export(batch.batch_id, after="f00002"))

    assert proxy.accepted >= 2
    assert [e.status.file_id for e in seen] == ["f00001", "f00002", "f00003", "f00004"]
    assert [e.pages for e in seen] == [["a"], ["A" * chars], [], ["c1", "c2"]]
    assert seen[1].result is not None
    assert seen[1].result.page_count == 1
    assert seen[2].result is None
    assert seen[2].status.error.code == "NOT_A_PDF"
    assert [e.status.file_id for e in after] == ["f00003", "f00004"]
