"""Text-layer warnings, the document's structure and layout text, through a real server,
real worker processes and the CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from actors.storage.sqlite_store import SQLiteStore
from server.client.api import Client
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.main import main
from server.service.app import DATABASE_NAME
from tests.helpers import document_pdfs
from tests.helpers.crash_processors import SCREENED, script
from tests.helpers.processes import eventually
from tests.helpers.server_fixtures import (
    RunningServer,
    ServerFactory,
    make_pdf,
    refused,
    write_files,
)
from tests.helpers.writer_pdfs import make_pdf as columns_pdf

pytestmark = pytest.mark.usefixtures("server_logs_to_stderr")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_an_image_only_file_succeeds_with_no_text_layer_in_status_watch_and_counts(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_files(
        tmp_path / "in",
        {
            "a.pdf": make_pdf("alpha"),
            "b.pdf": make_pdf("beta", "gamma"),
            "headerless.pdf": document_pdfs.headerless(make_pdf("no header")),
            "scan.pdf": document_pdfs.image_only(pages=2),
            "broken.pdf": b"%PDF-1.7 oops",
        },
    )
    address = ("--address", server.address)

    code, settled, watched = _run(capsys, "submit", str(folder), "--watch", *address)
    batch_id = settled.split()[1]
    status_code, out, _ = _run(capsys, "status", batch_id, "--json", *address)
    _, text, _ = _run(capsys, "status", batch_id, *address)

    assert code == status_code == 2
    batch = json_format.Parse(out, pb.Batch())
    files = {f.name: f for f in batch.files}
    scan = files["scan.pdf"]
    assert scan.state == pb.FILE_STATE_SUCCEEDED
    assert [(w.code, w.place, w.count, w.total) for w in scan.warnings] == [
        ("NO_TEXT_LAYER", "text", 2, 2)
    ]
    assert "OCR" in scan.warnings[0].message
    for name in ("a.pdf", "b.pdf", "headerless.pdf"):
        assert (files[name].state, list(files[name].warnings)) == (pb.FILE_STATE_SUCCEEDED, [])
    assert files["broken.pdf"].error.code == "PDF_MALFORMED"
    assert (batch.counts.succeeded, batch.counts.failed, batch.files_with_warnings) == (4, 1, 1)
    assert f"WARNING   scan.pdf [{scan.file_id}] NO_TEXT_LAYER: No page has text" in watched
    assert "PARTIALLY_SUCCEEDED: 4 succeeded (1 with warnings), 1 failed" in settled
    assert "4 succeeded (1 with warnings), 1 failed" in text
    assert f"{scan.file_id}  SUCCEEDED  1 attempt(s)  scan.pdf  warnings: NO_TEXT_LAYER" in text
    assert server.client.result(batch_id, files["headerless.pdf"].file_id).pages == ["no header"]
    # The count is stored with the batch, read without its files.
    store = SQLiteStore(server.data_dir / DATABASE_NAME)
    try:
        summary = store.batch_summary(batch_id)
    finally:
        store.close()
    assert summary is not None
    assert summary.files_with_warnings == 1


def test_a_watch_shows_the_warnings_of_files_that_succeeded_before_it_started(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = server.submit(
        ("plain.pdf", make_pdf("plain")),
        ("scan.pdf", document_pdfs.image_only(pages=1)),
        ("mixed.pdf", document_pdfs.mixed_text_and_images()),
    )
    server.settle(batch.batch_id)
    ids = {f.name: f.file_id for f in batch.files}

    code, _, watched = _run(capsys, "watch", batch.batch_id, "--address", server.address)

    assert code == 0
    warned = [line.split()[1:4] for line in watched.splitlines() if line.startswith("WARNING")]
    assert warned == [
        ["scan.pdf", f"[{ids['scan.pdf']}]", "NO_TEXT_LAYER:"],
        ["mixed.pdf", f"[{ids['mixed.pdf']}]", "PARTIAL_TEXT_LAYER:"],
    ]


def test_a_result_carries_the_documents_structure_and_each_page_its_details(
    server: RunningServer,
) -> None:
    batch = server.submit(
        ("structured.pdf", document_pdfs.structured()),
        ("mixed.pdf", document_pdfs.mixed_text_and_images()),
        ("outline.pdf", document_pdfs.deep_outline()),
    )
    server.settle(batch.batch_id)
    ids = {f.name: f.file_id for f in batch.files}

    structured = server.client.result(batch.batch_id, ids["structured.pdf"])
    mixed = server.client.result(batch.batch_id, ids["mixed.pdf"])
    damaged = server.client.result(batch.batch_id, ids["outline.pdf"])

    details = structured.metadata.details
    assert details.pdf_version == "1.3"
    assert [(e.title, e.page_number, e.depth) for e in details.outline] == [
        ("Chapter 1", 1, 0),
        ("Section 1.1", 2, 1),
        ("Chapter 2", 3, 0),
    ]
    assert [(a.name, a.size_bytes) for a in details.attachments] == [("data.csv", 8)]
    assert details.has_xmp
    pages = structured.page_details
    assert [(p.width, p.height, p.rotation, p.characters) for p in pages.values()] == [
        (300.0, 200.0, 0, 6),
        (300.0, 200.0, 90, 6),
        (595.0, 842.0, 0, 6),
    ]
    assert [w.code for w in mixed.metadata.warnings] == ["PARTIAL_TEXT_LAYER"]
    assert mixed.metadata.warnings[0].message.startswith("2 of 4 pages have no text")
    assert [mixed.page_details[n].characters for n in (1, 2, 3, 4)] == [
        len(text) for text in mixed.pages
    ]
    assert damaged.pages == [document_pdfs.TEXT]
    assert [(w.code, w.place) for w in damaged.metadata.warnings] == [
        ("PART_UNREADABLE", "outline")
    ]
    status = server.client.get(batch.batch_id)
    warned = {f.name: [w.code for w in f.warnings] for f in status.files}
    assert warned == {
        "structured.pdf": [],
        "mixed.pdf": ["PARTIAL_TEXT_LAYER"],
        "outline.pdf": ["PART_UNREADABLE"],
    }
    assert status.files_with_warnings == 2


def test_layout_mode_is_asked_at_submit_stored_with_the_batch_and_used(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    columns = ("columns.pdf", columns_pdf("left) Tj 200 0 Td (right"))
    layout = server.submit(
        columns, policy=pb.BatchPolicy(extraction_mode=pb.EXTRACTION_MODE_LAYOUT)
    )
    plain = server.submit(columns)
    server.settle(layout.batch_id)
    server.settle(plain.batch_id)
    folder = write_files(tmp_path / "in", {"a.pdf": make_pdf("a")})

    code, out, _ = _run(capsys, "submit", str(folder), "--layout", "--address", server.address)

    assert layout.policy.extraction_mode == pb.EXTRACTION_MODE_LAYOUT
    assert plain.policy.extraction_mode == pb.EXTRACTION_MODE_PLAIN
    fetched = server.client.get(layout.batch_id, with_files=False)
    assert fetched.policy.extraction_mode == pb.EXTRACTION_MODE_LAYOUT
    laid_out = server.client.result(layout.batch_id, layout.files[0].file_id).pages[0]
    read = server.client.result(plain.batch_id, plain.files[0].file_id).pages[0]
    assert "left" + " " * 10 in laid_out
    assert " " * 10 not in read
    assert code == 0
    cli_batch = server.client.get(out.strip(), with_files=False)
    assert cli_batch.policy.extraction_mode == pb.EXTRACTION_MODE_LAYOUT
    server.settle(cli_batch.batch_id)


def test_an_unknown_extraction_mode_is_refused_with_its_field(server: RunningServer) -> None:
    policy = pb.BatchPolicy()
    policy.extraction_mode = 7  # type: ignore[assignment]

    error = refused(lambda: server.submit(("a.pdf", make_pdf("a")), policy=policy))

    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.violations == [
        ("spec.policy.extraction_mode", "Use EXTRACTION_MODE_PLAIN or EXTRACTION_MODE_LAYOUT.")
    ]


def test_a_watch_tells_once_of_a_file_that_failed_between_its_snapshot_and_its_listing(
    serve: ServerFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = serve(processor=SCREENED)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    # One at a time: the first fails, the gate holds the slot, the last waits behind it.
    batch = server.submit(
        ("early.pdf", script(b"pdf-error")),
        ("gate.pdf", script(b"gate:" + str(gate).encode())),
        ("late.pdf", script(b"pdf-error")),
        policy=pb.BatchPolicy(max_concurrency=1),
    )
    ids = {f.name: f.file_id for f in batch.files}
    eventually(lambda: server.client.get(batch.batch_id).counts.failed == 1)
    listing = Client.file_pages
    opened: list[bool] = []

    def late_failure_first(client: Client, *args: Any, **kwargs: Any) -> Any:
        # The watch has its snapshot (one failure); the late file fails before the
        # listing of failures is read, so both the listing and an event show it.
        if kwargs.get("states") == [pb.FILE_STATE_FAILED] and not opened:
            opened.append(True)
            gate.write_text("ok")
            eventually(lambda: client.get(batch.batch_id).counts.failed == 2)
        return listing(client, *args, **kwargs)

    monkeypatch.setattr(Client, "file_pages", late_failure_first)

    code, _, watched = _run(capsys, "watch", batch.batch_id, "--address", server.address)

    assert code == 2
    failed = [line.split()[1:3] for line in watched.splitlines() if line.startswith("FAILED")]
    assert failed == [
        ["early.pdf", f"[{ids['early.pdf']}]"],
        ["late.pdf", f"[{ids['late.pdf']}]"],
    ]
