"""The ``pdfbatch`` command line against a real server: output and exit codes."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from google.protobuf import json_format

from server.cli.output import EXIT_CLOSED_PIPE
from server.cli.progress import BatchTracker, ProgressDisplay
from server.client.api import events_of
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.main import main
from server.service.logs import wants_colors
from tests.helpers.server_fixtures import (
    RunningServer,
    audited,
    free_port,
    make_pdf,
    many_pages,
    write_files,
)

pytestmark = pytest.mark.usefixtures("server_logs_to_stderr")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _batch(json_text: str) -> pb.Batch:
    return json_format.Parse(json_text, pb.Batch())


def test_submit_watch_json_prints_the_final_batch_and_exits_2_on_partial_success(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_files(
        tmp_path / "in",
        {"a.pdf": make_pdf("alpha"), "b.pdf": make_pdf("beta"), "broken.pdf": b"%PDF-1.7 oops"},
    )

    code, out, err = _run(
        capsys, "submit", str(folder), "--watch", "--json", "--address", server.address
    )

    assert code == 2
    batch = _batch(out)
    assert batch.state == pb.BATCH_STATE_PARTIALLY_SUCCEEDED
    assert (batch.counts.succeeded, batch.counts.failed) == (2, 1)
    assert "FAILED    broken.pdf [f00003] PDF_MALFORMED: This PDF is damaged" in err
    # As the batch settled after the watch's snapshot, or in it (the files can all end
    # while the upload runs, before the watch starts).
    assert re.search(rf"^batch ({batch.batch_id} )?PARTIALLY_SUCCEEDED", err, re.MULTILINE)


def test_exit_code_is_0_when_every_file_succeeds_and_3_when_all_fail(
    server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PDFBATCH_ADDRESS", server.address)
    good = write_files(tmp_path / "good", {"a.pdf": make_pdf("a")})
    bad = write_files(tmp_path / "bad", {"x.pdf": b"nope", "y.pdf": b""})

    ok, out, _ = _run(capsys, "submit", str(good / "a.pdf"), "--watch")
    failed, failed_out, _ = _run(capsys, "submit", str(bad), "--watch", "--name", "bad")

    assert ok == 0
    assert "SUCCEEDED: 1 succeeded, 0 failed, 0 cancelled of 1 files." in out
    assert failed == 3
    assert "FAILED: 0 succeeded, 2 failed" in failed_out
    assert "NOT_A_PDF" in failed_out
    assert "PDF_EMPTY" in failed_out


def test_submit_without_watch_prints_the_batch_id_at_once(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_files(tmp_path / "in", {"a.pdf": make_pdf("a")})

    code, out, _ = _run(
        capsys,
        "submit",
        str(folder),
        "--label",
        "team=docs",
        "--max-attempts",
        "2",
        "--address",
        server.address,
    )

    assert code == 0
    batch_id = out.strip()
    batch = server.client.get(batch_id)
    assert dict(batch.labels) == {"team": "docs"}
    assert batch.policy.retry.max_attempts == 2
    server.settle(batch_id)


def test_status_list_retry_results_and_delete(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = server.submit(("a.pdf", make_pdf("first page", "second page")), ("b.pdf", b"junk"))
    server.settle(batch.batch_id)
    address = ("--address", server.address)

    code, out, _ = _run(capsys, "status", batch.batch_id, *address)
    assert code == 2
    assert f"Batch {batch.batch_id}: PARTIALLY_SUCCEEDED" in out
    assert "f00002  FAILED     1 attempt(s)  b.pdf  NOT_A_PDF: This file is not a PDF." in out

    code, out, _ = _run(capsys, "status", batch.batch_id, "--json", *address)
    assert (code, _batch(out).file_count) == (2, 2)

    code, out, _ = _run(capsys, "list", "--json", *address)
    listed = json_format.Parse(out, pb.ListBatchesResponse())
    assert [b.batch_id for b in listed.batches] == [batch.batch_id]
    code, out, _ = _run(capsys, "list", "--state", "succeeded", *address)
    assert (code, out) == (0, "")

    code, out, err = _run(capsys, "retry", batch.batch_id, "f00002", "--watch", *address)
    assert code == 2
    assert f"batch {batch.batch_id} " in err
    assert server.client.get(batch.batch_id).files[1].attempt_count == 2

    code, out, _ = _run(capsys, "results", batch.batch_id, *address)
    assert code == 0
    assert "==> a.pdf [f00001]: 2 pages <==" in out
    assert "--- page 2 ---\nsecond page" in out
    code, out, _ = _run(capsys, "results", batch.batch_id, "--out", str(tmp_path / "txt"), *address)
    assert (tmp_path / "txt" / "a.f00001.txt").read_text() == "first page\fsecond page"
    code, out, _ = _run(capsys, "results", batch.batch_id, "f00001", "--json", *address)
    chunks = [json.loads(line) for line in out.splitlines()]
    assert chunks[0]["metadata"]["pageCount"] == 2
    assert [c["page"]["text"] for c in chunks[1:]] == ["first page", "second page"]

    code, out, _ = _run(capsys, "delete", batch.batch_id, *address)
    assert code == 0
    code, _, err = _run(capsys, "status", batch.batch_id, *address)
    assert code == 1
    assert "NOT_FOUND (BATCH_NOT_FOUND): No batch with this id exists." in err


def test_cancel_exits_3_on_the_cancelled_batch(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    pages = many_pages(300)
    batch = server.submit(
        *((f"{n}.pdf", pages) for n in range(6)), policy=pb.BatchPolicy(max_concurrency=1)
    )

    code, out, _ = _run(capsys, "cancel", batch.batch_id, "--address", server.address)
    assert (code, out) == (0, f"Batch {batch.batch_id} CANCELLED.\n")

    code, out, _ = _run(capsys, "watch", batch.batch_id, "--address", server.address)
    assert code == 3
    assert "CANCELLED" in out


def test_command_failures_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = f"127.0.0.1:{free_port()}"

    code, _, err = _run(capsys, "status", "some-batch", "--address", unreachable)
    assert code == 1
    assert "UNAVAILABLE" in err

    code, _, err = _run(capsys, "submit", str(tmp_path / "missing.pdf"), "--address", unreachable)
    assert code == 1
    assert "no such file or directory" in err

    with pytest.raises(SystemExit) as usage:
        main(["frobnicate"])
    assert usage.value.code == 1
    with pytest.raises(SystemExit) as no_batch:
        main(["status"])
    assert no_batch.value.code == 1


def test_the_progress_line_redraws_in_place_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")

    class Terminal:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> int:
            self.text += text
            return len(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return True

    tracker = BatchTracker()
    terminal = Terminal()
    display = ProgressDisplay(terminal, columns=lambda: 120, clock=lambda: 0.0)  # type: ignore[arg-type]
    running = pb.FileCounts(running=1, pending=1)
    snapshot = pb.Batch(batch_id="b", state=pb.BATCH_STATE_RUNNING, counts=running, file_count=2)
    events = [
        pb.WatchBatchResponse(
            sequence=1,
            batch_id="b",
            batch_state=pb.BATCH_STATE_RUNNING,
            snapshot=snapshot,
            counts=running,
        ),
        pb.WatchBatchResponse(
            sequence=2,
            batch_id="b",
            batch_state=pb.BATCH_STATE_RUNNING,
            file=pb.FileStatus(
                file_id="f1",
                name="a.pdf",
                state=pb.FILE_STATE_FAILED,
                error=pb.FileError(code="NOT_A_PDF", message="Not a PDF."),
            ),
            counts=pb.FileCounts(failed=1, pending=1),
        ),
    ]
    for event in events:
        display.update(tracker, tracker.apply(event))
    display.close()

    assert terminal.text == (
        "batch b RUNNING: 2 files\n"
        "[------------------------] 0/2 files · 0 succeeded · 0 failed · 1 running · RUNNING"
        "\r\x1b[KFAILED    a.pdf [f1] NOT_A_PDF: Not a PDF.\n"
        "[############------------] 1/2 files · 0 succeeded · 1 failed · RUNNING\n"
    )


def test_passwords_come_from_files_for_submit_and_retry(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_files(tmp_path / "in", {"secret.pdf": make_pdf("hidden", password="pw")})
    (tmp_path / "pw").write_text("pw\n")
    (tmp_path / "wrong").write_text("nope\n")
    address = ("--address", server.address)

    code, out, _ = _run(
        capsys,
        "submit",
        str(folder),
        "--password-file",
        f"secret.pdf={tmp_path / 'wrong'}",
        "--watch",
        "--json",
        *address,
    )
    batch = _batch(out)
    assert (code, batch.files[0].error.code) == (3, "PDF_WRONG_PASSWORD")

    code, out, _ = _run(
        capsys,
        "retry",
        batch.batch_id,
        "f00001",
        "--password-file",
        f"f00001={tmp_path / 'pw'}",
        "--watch",
        *address,
    )
    assert code == 0
    assert server.client.result(batch.batch_id, "f00001").pages == ["hidden"]


def test_version_and_help_without_arguments_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0
    assert capsys.readouterr().out.startswith("pdfbatch ")

    assert main([]) == 0
    helped = capsys.readouterr().out
    assert helped.startswith("usage: pdfbatch")
    assert "submit" in helped


def test_a_client_command_loads_neither_the_service_nor_actors(server: RunningServer) -> None:
    # The program offers `serve` too; a client command must not pay for loading it.
    program = (
        "import sys\nfrom server.main import main\n"
        f"code = main(['list', '--address', {server.address!r}])\n"
        "prefixes = ('actors', 'server.service.', 'server.security', 'server.wire')\n"
        "print(code, sorted(m for m in sys.modules if m.startswith(prefixes)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )

    assert done.stdout.splitlines()[-1] == "0 ['server.service.commands']"


def test_list_says_what_its_columns_are_and_in_which_time_zone(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = server.submit(("a.pdf", make_pdf("a")), display_name="invoices")
    server.settle(batch.batch_id)

    code, out, _ = _run(capsys, "list", "--address", server.address)

    assert code == 0
    header, row = out.splitlines()
    zone = datetime.now().astimezone().strftime("%z")
    assert header.split() == ["BATCH", "CREATED", f"({zone})", "STATE", "OK/FILES", "NAME"]
    assert row.startswith(batch.batch_id)
    assert row.endswith("invoices")


def test_a_reader_that_stops_early_ends_the_command_quietly(server: RunningServer) -> None:
    # Enough output to fill a pipe: the write fails once the reader is gone.
    batch = server.submit(*((f"{n}.pdf", b"junk") for n in range(400)))
    server.settle(batch.batch_id)
    command = [
        sys.executable, "-m", "server.main", "status", batch.batch_id,
        "--json", "--limit", "0", "--address", server.address,
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.read(1) == b"{"
        process.stdout.close()
        error = process.stderr.read()
        code = process.wait(60)

    assert error == b""
    assert code == EXIT_CLOSED_PIPE


@pytest.mark.parametrize(
    ("environment", "tty", "colors"),
    [
        ({}, True, True),
        ({}, False, False),
        ({"NO_COLOR": "1"}, True, False),
        ({"FORCE_COLOR": "1"}, False, True),
        ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, True, False),
    ],
)
def test_service_logs_follow_no_color_and_force_color(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], tty: bool, colors: bool
) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    stream = io.StringIO()
    stream.isatty = lambda: tty  # type: ignore[method-assign]

    assert wants_colors(stream) is colors


def test_history_shows_each_state_change_and_who_asked_for_what(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = server.submit(("junk.pdf", b"junk"))
    server.settle(batch.batch_id)
    address = ("--address", server.address)
    assert _run(capsys, "retry", batch.batch_id, "f00001", "--watch", *address)[0] == 3

    code, out, _ = _run(capsys, "history", batch.batch_id, "f00001", *address)

    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "junk.pdf [f00001]: FAILED"
    moves = [line.split()[2:5] for line in lines[1:] if " -> " in line]
    # Screening refuses it before any worker has it: no attempt of it ever runs.
    assert moves == [
        ["PENDING", "->", "FAILED"],
        ["FAILED", "->", "PENDING"],
        ["PENDING", "->", "FAILED"],
    ]
    assert any("RetryFiles" in line and ": OK" in line for line in lines)
    # A page of two entries at a time: the same history, fetched in several calls.
    calls = len(audited(server.data_dir, "GetFileHistory"))
    code, paged, _ = _run(capsys, "history", batch.batch_id, "f00001", "--page-size", "2", *address)
    # The same lines, and the first listing's own request (audited after it answered);
    # not the requests of this listing, which come after its first page.
    assert code == 0
    assert paged.startswith(out)
    (added,) = paged.removeprefix(out).splitlines()
    assert "GetFileHistory" in added
    entries = len(paged.splitlines()) - 1
    paged_calls = len(audited(server.data_dir, "GetFileHistory")) - calls
    assert paged_calls == (entries + 1) // 2
    # JSON Lines: the file, then one entry per line.
    code, out, _ = _run(capsys, "history", batch.batch_id, "f00001", "--json", *address)
    first, *rest = out.splitlines()
    assert json_format.Parse(first, pb.FileStatus()).file_id == "f00001"
    parsed = [json_format.Parse(line, pb.HistoryEntry()) for line in rest]
    assert len(parsed) == entries + paged_calls, "and the paged listing's requests"
    assert sum(e.HasField("transition") for e in parsed) == len(moves)


def _failed(
    sequence: int, file_id: str, counts: pb.FileCounts | None = None
) -> pb.WatchBatchResponse:
    """The event of ``file_id`` (named ``<file_id>.pdf``) failing as not a PDF."""
    return pb.WatchBatchResponse(
        sequence=sequence,
        batch_id="b",
        batch_state=pb.BATCH_STATE_RUNNING,
        file=pb.FileStatus(
            file_id=file_id,
            name=f"{file_id}.pdf",
            state=pb.FILE_STATE_FAILED,
            error=pb.FileError(code="NOT_A_PDF", message="Not a PDF."),
        ),
        counts=counts,
    )


def test_a_message_of_several_events_is_tracked_as_each_of_them_in_turn() -> None:
    events = [
        _failed(2, "a", pb.FileCounts(failed=1, pending=2)),
        _failed(3, "b", pb.FileCounts(failed=2, pending=1)),
        pb.WatchBatchResponse(
            sequence=4,
            batch_id="b",
            batch_state=pb.BATCH_STATE_FAILED,
            batch_state_change=pb.BatchStateChange(state=pb.BATCH_STATE_FAILED, reason="all"),
            counts=pb.FileCounts(failed=2, cancelled=1),
        ),
    ]
    one_by_one = BatchTracker()
    notes = [note for event in events for note in one_by_one.apply(event)]
    message = pb.WatchBatchResponse()
    message.CopyFrom(events[-1])
    message.earlier_events.extend(events[:-1])
    together = BatchTracker()

    assert together.apply(message) == notes
    assert [n.split()[0] for n in notes] == ["FAILED", "FAILED", "batch"]
    assert together.counts() == one_by_one.counts()
    assert together.state == pb.BATCH_STATE_FAILED
    assert events_of(message) == events


def test_a_tracker_tells_no_event_a_listing_already_showed_but_a_later_one() -> None:
    tracker = BatchTracker()
    # A listing read at sequence 5 showed f1 failed.
    tracker.told(["f1"], 5)

    assert tracker.apply(_failed(5, "f1")) == []
    assert tracker.apply(_failed(5, "f2")) == ["FAILED    f2.pdf [f2] NOT_A_PDF: Not a PDF."]
    # Retried and failed again after the listing: news.
    assert tracker.apply(_failed(9, "f1")) == ["FAILED    f1.pdf [f1] NOT_A_PDF: Not a PDF."]
