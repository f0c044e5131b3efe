"""Poison results through the whole service: real server, real workers, SQLite, gRPC.

Two ways in. Real PDFs built to yield poison (tests/helpers/poison_pdfs.py) go through the real
extractor beside ordinary files: every ordinary file must succeed at its first attempt
and every poison file must end on its own, with its own code or warning. And any string
hypothesis can make goes through a scripted worker as extracted text and metadata, into
the SQLite file and back out over gRPC, checked against an oracle.
"""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.policy.results import TEXT_PIECE_CHARS
from server.cli.progress import terminal_safe
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.main import main
from tests.helpers.crash_processors import SCREENED, script
from tests.helpers.poison_pdfs import (
    POISON_CODE_POINTS,
    expected_text,
    mapped_glyph,
    poison_files,
    text_amplifier,
)
from tests.helpers.processors import FORGED
from tests.helpers.server_fixtures import RunningServer, ServerFactory, make_pdf

TEXT_LIMIT = 10_000_000
FIELD_LIMIT = 4_096


pytestmark = pytest.mark.usefixtures("server_logs_to_stderr")


def _files_by_name(server: RunningServer, batch_id: str) -> dict[str, pb.FileStatus]:
    server.settle(batch_id)
    return {
        f.name: f
        for f in server.stub.GetBatch(
            pb.GetBatchRequest(batch_id=batch_id, view=pb.BATCH_VIEW_FULL)
        ).files
    }


def test_poison_pdfs_end_on_their_own_and_ordinary_files_succeed_at_once(
    serve: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(max_result_text_bytes=TEXT_LIMIT, max_metadata_field_bytes=FIELD_LIMIT)
    ordinary = [(f"ordinary-{n}.pdf", make_pdf(f"ordinary text {n}")) for n in range(4)]
    under_limit = ("poison-long-text.pdf", text_amplifier(3 * TEXT_PIECE_CHARS, fan_out=128))
    files = [*ordinary, *poison_files(), under_limit]

    batch = server.submit(*files, display_name="poison")
    by_name = _files_by_name(server, batch.batch_id)

    final = server.stub.GetBatch(
        pb.GetBatchRequest(batch_id=batch.batch_id, view=pb.BATCH_VIEW_FULL)
    )
    assert final.state == pb.BATCH_STATE_PARTIALLY_SUCCEEDED
    for name, _ in ordinary:
        assert (by_name[name].state, by_name[name].attempt_count) == (pb.FILE_STATE_SUCCEEDED, 1)
    assert not [f.name for f in final.files if f.error.code == "INTERNAL"]
    # 60 million characters from 2 KB: over the limit, failed at once, the limit named.
    amplified = by_name["poison-text-amplifier.pdf"]
    assert (amplified.state, amplified.error.code) == (pb.FILE_STATE_FAILED, "PDF_LIMIT_EXCEEDED")
    assert amplified.attempt_count == 1
    assert f"{TEXT_LIMIT:,} bytes" in amplified.error.message
    succeeded = [f for f in final.files if f.state == pb.FILE_STATE_SUCCEEDED]
    assert len(succeeded) == len(files) - 1

    results = {f.name: server.client.result(batch.batch_id, f.file_id) for f in succeeded}
    for code_point in POISON_CODE_POINTS:
        result = results[f"poison-glyph-u{code_point:04x}.pdf"]
        text, replaced = expected_text(f"ok{chr(code_point)}ok")
        assert result.pages == [text], hex(code_point)
        assert [(w.code, w.place, w.count) for w in result.metadata.warnings] == (
            [("CHARACTERS_REPLACED", "text", replaced)] if replaced else []
        )
    title = results["poison-huge-title.pdf"].metadata
    assert title.info.title == "T" * FIELD_LIMIT
    assert [(w.code, w.place) for w in title.warnings] == [("METADATA_TRUNCATED", "title")]
    odd = results["poison-surrogate-title.pdf"].metadata
    assert "\x00" not in odd.info.title
    assert [(w.code, w.place) for w in odd.warnings] == [("CHARACTERS_REPLACED", "title")]
    long_text = results["poison-long-text.pdf"]
    assert long_text.pages == ["A" * (3 * TEXT_PIECE_CHARS)]

    # Read in pieces that each fit a message.
    chunks = list(server.client.result_chunks(batch.batch_id, by_name[under_limit[0]].file_id))
    assert len(chunks) == 1 + 3
    assert max(c.ByteSize() for c in chunks) < 4 * 1024 * 1024

    # Every result reads back with the CLI too.
    code = main(["results", batch.batch_id, "--address", server.address])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.count("==> ") == len(succeeded)
    assert "ok\u202eok" in out  # the document's content, as it is, into a pipe


def test_the_cli_escapes_what_a_terminal_would_obey(
    server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = server.submit(("bidi.pdf", mapped_glyph(0x202E)), display_name="bidi")
    (file,) = _files_by_name(server, batch.batch_id).values()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)

    code = main(["results", batch.batch_id, file.file_id, "--address", server.address])

    out, _ = capsys.readouterr()
    assert code == 0
    assert "\u202e" not in out
    assert "ok\\u202eok" in out
    assert terminal_safe("a\x1b[2Jb\rc\td\ne\u2066") == "a\\u001b[2Jb\\u000dc\td\ne\\u2066"


@pytest.fixture
def echo_server(serve: ServerFactory) -> RunningServer:
    """A server whose workers return whatever text and metadata the upload says."""
    return serve(
        processor=SCREENED,
        max_result_text_bytes=200,
        max_metadata_field_bytes=40,
    )


# Any code point, surrogates included, weighted toward the ones that break things.
_POISON = st.sampled_from(["\ud800", "\udfff", "\x00", "\x1b", "\x9b", "\uffff", "\u202e", "é"])
_TEXT = st.lists(st.one_of(st.characters(codec=None), _POISON), max_size=30).map("".join)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    results=st.lists(
        st.tuples(st.lists(_TEXT, max_size=3), _TEXT, st.one_of(st.none(), _TEXT)),
        min_size=1,
        max_size=3,
    )
)
def test_any_text_and_metadata_go_through_storage_and_the_wire(
    echo_server: RunningServer, results: list[tuple[list[str], str, str | None]]
) -> None:
    files = [("ordinary.pdf", script(b"ok"))]
    for n, (pages, title, author) in enumerate(results):
        wanted = {"pages": pages, "info": {"title": title, "author": author}}
        files.append((f"echo-{n}.pdf", script(b"echo:" + json.dumps(wanted).encode())))

    batch = echo_server.submit(*files, display_name="echo")
    by_name = _files_by_name(echo_server, batch.batch_id)

    assert by_name["ordinary.pdf"].state == pb.FILE_STATE_SUCCEEDED
    for n, (pages, title, author) in enumerate(results):
        file = by_name[f"echo-{n}.pdf"]
        assert file.attempt_count == 1
        expected_pages = [expected_text(page)[0] for page in pages]
        if sum(len(page.encode()) for page in expected_pages) > 200:
            assert (file.state, file.error.code) == (pb.FILE_STATE_FAILED, "PDF_LIMIT_EXCEEDED")
            continue
        assert file.state == pb.FILE_STATE_SUCCEEDED, file.error
        got = echo_server.client.result(batch.batch_id, file.file_id)
        assert got.pages == expected_pages
        assert got.metadata.info.title == _cut(expected_text(title)[0], 40)
        if author is None:
            assert not got.metadata.info.HasField("author")
        else:
            assert got.metadata.info.author == _cut(expected_text(author)[0], 40)
        replaced = sum(expected_text(page)[1] for page in pages)
        warned = {(w.code, w.place): w.count for w in got.metadata.warnings}
        assert warned.get(("CHARACTERS_REPLACED", "text"), 0) == replaced


def _cut(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")


def test_a_forged_sealed_result_fails_its_file_only(echo_server: RunningServer) -> None:
    # Workers seal their results and the service stores them without decoding them; what
    # a broken or hostile worker sends instead fails its own file, with the right code.
    unstorable = [kind for kind in FORGED if kind not in ("valid", "over-the-limit")]
    files = [
        ("ordinary.pdf", script(b"ok")),
        ("valid.pdf", script(b"forge:valid")),
        ("over-the-limit.pdf", script(b"forge:over-the-limit")),
        *((f"{kind}.pdf", script(b"forge:" + kind.encode())) for kind in unstorable),
        ("after.pdf", script(b"ok")),
    ]

    batch = echo_server.submit(*files, display_name="forged")
    by_name = _files_by_name(echo_server, batch.batch_id)

    final = echo_server.stub.GetBatch(pb.GetBatchRequest(batch_id=batch.batch_id))
    assert final.state == pb.BATCH_STATE_PARTIALLY_SUCCEEDED
    for kind in unstorable:
        file = by_name[f"{kind}.pdf"]
        assert (file.state, file.error.code, file.attempt_count) == (
            pb.FILE_STATE_FAILED,
            "RESULT_UNSTORABLE",
            1,
        ), kind
    over = by_name["over-the-limit.pdf"]
    assert (over.state, over.error.code) == (pb.FILE_STATE_FAILED, "PDF_LIMIT_EXCEEDED")
    assert "200 bytes" in over.error.message
    for name in ("ordinary.pdf", "valid.pdf", "after.pdf"):
        assert (by_name[name].state, by_name[name].attempt_count) == (pb.FILE_STATE_SUCCEEDED, 1)
    valid = echo_server.client.result(batch.batch_id, by_name["valid.pdf"].file_id)
    assert valid.pages == ["smile \U0001f600"]
    assert valid.metadata.info.title == "forged"
    assert valid.metadata.page_count == 1
    ordinary = echo_server.client.result(batch.batch_id, by_name["ordinary.pdf"].file_id)
    assert ordinary.pages == ["ok"]

    # A batch whose forged results are all fit to store succeeds whole.
    again = echo_server.submit(
        ("valid.pdf", script(b"forge:valid")), ("ok.pdf", script(b"ok")), display_name="valid"
    )
    _files_by_name(echo_server, again.batch_id)
    state = echo_server.stub.GetBatch(pb.GetBatchRequest(batch_id=again.batch_id)).state
    assert state == pb.BATCH_STATE_SUCCEEDED
