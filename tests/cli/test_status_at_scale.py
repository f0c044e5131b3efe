"""The command line on a batch bigger than a screen and than a page: ``status`` shows the
failed files first and a screenful at most, ``--all`` streams every file a page at a
time, ``--json`` is bounded or JSON Lines, ``retry`` of every failed file is one call,
and ``submit`` says what it uploaded. A real server (workers run the scripted no-op
processor, so that hundreds of files settle in moments) on real SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from bench.processors import OK, SCRIPTED
from server.cli import files as file_commands
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.main import main
from tests.helpers.server_fixtures import (
    RunningServer,
    ServerFactory,
    audited,
    write_files,
)

pytestmark = pytest.mark.usefixtures("server_logs_to_stderr")

SUCCEEDING = 230
FAILING = 20
# The failing files come last in submission order; status shows them first.
FILES = [(f"ok-{n:03d}.pdf", OK) for n in range(SUCCEEDING)] + [
    (f"junk-{n:02d}.pdf", b"junk") for n in range(FAILING)
]


@pytest.fixture
def server(serve: ServerFactory) -> RunningServer:
    return serve(processor=SCRIPTED)


@pytest.fixture
def batch(server: RunningServer) -> pb.Batch:
    submitted = server.submit(*FILES)
    server.settle(submitted.batch_id)
    return submitted


def _run(capsys: pytest.CaptureFixture[str], server: RunningServer, *argv: str) -> tuple[int, str]:
    code = main([*argv, "--address", server.address])
    return code, capsys.readouterr().out


def test_status_shows_the_failed_files_first_and_a_screenful_when_not_a_terminal(
    server: RunningServer, batch: pb.Batch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(capsys, server, "status", batch.batch_id)
    lines = out.splitlines()

    assert code == 2
    assert len(lines) == file_commands.STATUS_MAX_LINES
    assert f"{len(FILES)} files: {SUCCEEDING} succeeded, {FAILING} failed" in lines[1]
    files = lines[2:-1]
    assert all("junk-" in line for line in files[:FAILING])
    assert all("ok-" in line for line in files[FAILING:])
    assert lines[-1] == (
        f"  ... and {len(FILES) - len(files)} more: --all lists every file, "
        "--state FAILED only the failed ones."
    )


def test_status_all_streams_every_file_a_page_at_a_time(
    server: RunningServer,
    batch: pb.Batch,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(file_commands, "FILES_PER_CALL", 50)
    calls = len(audited(server.data_dir, "ListFiles"))

    code, out = _run(capsys, server, "status", batch.batch_id, "--all")
    listed = [line for line in out.splitlines() if " attempt(s) " in line]

    assert code == 2
    assert len(listed) == len(FILES)
    assert len({line.split()[0] for line in listed}) == len(FILES), "each file once"
    assert "more" not in out
    # Failed first (one listing, 1 page), then the rest (230 files, 5 pages).
    assert len(audited(server.data_dir, "ListFiles")) - calls == 1 + 5


def test_status_fetches_no_page_past_the_files_it_prints(
    server: RunningServer, batch: pb.Batch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = len(audited(server.data_dir, "ListFiles"))

    code, out = _run(
        capsys, server, "status", batch.batch_id, "--state", "SUCCEEDED", "--limit", "50"
    )
    listed = [line for line in out.splitlines() if " attempt(s) " in line]

    assert code == 2
    assert len(listed) == 50
    assert out.splitlines()[-1].startswith(f"  ... and {SUCCEEDING - 50} more")
    # One page of 50: the 51st file, which would take another page, is not read.
    assert len(audited(server.data_dir, "ListFiles")) - calls == 1


def test_status_json_is_one_bounded_object_or_json_lines_with_all(
    server: RunningServer, batch: pb.Batch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(capsys, server, "status", batch.batch_id, "--json")
    bounded = json_format.Parse(out, pb.Batch())
    code_all, lines = _run(capsys, server, "status", batch.batch_id, "--json", "--all")
    head, *files = lines.splitlines()

    assert code == code_all == 2
    assert bounded.file_count == len(FILES)
    assert len(bounded.files) == file_commands.STATUS_JSON_FILES
    assert [f.state for f in bounded.files[:FAILING]] == [pb.FILE_STATE_FAILED] * FAILING
    assert json_format.Parse(head, pb.Batch()).counts.failed == FAILING
    assert len(files) == len(FILES)
    assert {json.loads(line)["fileId"] for line in files} == {
        f"f{n:05d}" for n in range(1, len(FILES) + 1)
    }


def test_retry_without_ids_retries_every_failed_file_in_one_call(
    server: RunningServer, batch: pb.Batch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(capsys, server, "retry", batch.batch_id)
    server.settle(batch.batch_id)
    failed = list(server.client.files(batch.batch_id, states=[pb.FILE_STATE_FAILED]))

    assert code == 0
    assert out == f"Retrying every failed and cancelled file(s) of batch {batch.batch_id}.\n"
    assert audited(server.data_dir, "RetryFiles") == ["OK"]
    assert len(failed) == FAILING
    assert {f.attempt_count for f in failed} == {2}


def test_submit_says_how_much_it_uploaded_before_following_the_batch(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_files(tmp_path / "in", {f"{n}.pdf": OK for n in range(12)})

    code = main(["submit", str(folder), "--watch", "--address", server.address])
    captured = capsys.readouterr()

    assert code == 0
    size = 12 * len(OK)
    assert f"(12 files, {size} B)." in captured.err
    assert "12 succeeded, 0 failed" in captured.out
