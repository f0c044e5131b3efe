"""``pdfbatch export`` against a real server: JSON Lines, directories, standard output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors.policy.results import TEXT_PIECE_CHARS
from server.cli.export import (
    ExportTargetError,
    _JsonLines,
    _Progress,
    target_kind,
    text_file_name,
)
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from server.main import main
from tests.helpers.poison_pdfs import text_amplifier
from tests.helpers.server_fixtures import RunningServer, TcpProxy, make_pdf
from tests.service.test_export import image_only_pdf

pytestmark = pytest.mark.usefixtures("server_logs_to_stderr")

LONG_CHARS = 2 * TEXT_PIECE_CHARS + 1024  # three messages; a multiple of the fan-out
MIXED = (
    ("one.pdf", make_pdf("first of one", 'a "quoted" line')),
    ("scan.pdf", image_only_pdf()),
    ("broken.pdf", b"%PDF-1.7 truncated"),
    ("long.pdf", text_amplifier(LONG_CHARS, fan_out=128)),
    ("two.pdf", make_pdf("only page of two")),
)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


@pytest.fixture
def mixed(server: RunningServer) -> str:
    batch = server.submit(*MIXED, display_name="mixed")
    server.settle(batch.batch_id)
    return batch.batch_id


def test_export_writes_one_line_per_file_whose_text_matches_results(
    server: RunningServer, mixed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exports" / "out.jsonl"
    out.parent.mkdir()

    code, stdout, err = _run(capsys, "export", mixed, "-o", str(out), "--address", server.address)

    assert (code, stdout) == (0, "")
    assert f"Exported 5 files of batch {mixed} (1 failed, 4 succeeded) to {out}." in err
    assert "\r" not in err  # no progress line: standard error is no terminal here
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]
    lines = _lines(out)
    assert [(line["file_id"], line["name"], line["state"]) for line in lines] == [
        ("f00001", "one.pdf", "SUCCEEDED"),
        ("f00002", "scan.pdf", "SUCCEEDED"),
        ("f00003", "broken.pdf", "FAILED"),
        ("f00004", "long.pdf", "SUCCEEDED"),
        ("f00005", "two.pdf", "SUCCEEDED"),
    ]
    assert {line["batch_id"] for line in lines} == {mixed}
    broken = lines[2]
    assert broken["error"]["code"] == "PDF_MALFORMED"
    assert broken["error"]["message"]
    assert (broken["metadata"], broken["warnings"], broken["pages"]) == (None, [], [])
    for line in (lines[0], lines[1], lines[3], lines[4]):
        assert line["error"] is None
        code, printed, _ = _run(
            capsys, "results", mixed, line["file_id"], "--json", "--address", server.address
        )
        chunks = [json.loads(chunk) for chunk in printed.splitlines()]
        pages: dict[int, str] = {}
        for chunk in chunks[1:]:
            number = chunk["page"].get("pageNumber", 0)
            pages[number] = pages.get(number, "") + chunk["page"].get("text", "")
        assert [page["text"] for page in line["pages"]] == list(pages.values())
        assert [page["number"] for page in line["pages"]] == list(pages)
        assert line["metadata"]["page_count"] == chunks[0]["metadata"]["pageCount"]
    assert lines[0]["pages"][1]["text"] == 'a "quoted" line'
    assert lines[1]["pages"] == [{"number": 1, "text": ""}]
    assert lines[3]["pages"] == [{"number": 1, "text": "A" * LONG_CHARS}]


def test_an_interrupted_export_resumes_after_its_last_whole_line(
    server: RunningServer, mixed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = ("--address", server.address)
    whole = tmp_path / "whole.jsonl"
    assert _run(capsys, "export", mixed, "-o", str(whole), *address)[0] == 0
    expected = whole.read_bytes()
    # As an export cut off in the middle of the long file's line leaves it.
    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    cut = expected.index(b'{"file_id": "f00004"') + 1_000_000
    partial.write_bytes(expected[:cut])

    code, _, err = _run(capsys, "export", mixed, "-o", str(out), *address)

    assert code == 0
    assert f"Exported 2 files after f00003 of batch {mixed}" in err
    assert out.read_bytes() == expected
    assert not partial.exists()


def test_a_partial_file_of_another_batch_is_started_over_and_after_starts_anew(
    server: RunningServer, mixed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = ("--address", server.address)
    other = server.submit(("other.pdf", make_pdf("other")))
    server.settle(other.batch_id)
    out = tmp_path / "out.jsonl"
    assert _run(capsys, "export", other.batch_id, "-o", str(out), *address)[0] == 0
    (tmp_path / "out.jsonl.partial").write_bytes(out.read_bytes())

    code, _, err = _run(capsys, "export", mixed, "-o", str(out), *address)
    assert code == 0
    assert [line["file_id"] for line in _lines(out)] == [f"f0000{n}" for n in range(1, 6)]
    assert f"out.jsonl.partial is not an export of batch {mixed}: starting over." in err
    assert f"Exported 5 files of batch {mixed}" in err

    (tmp_path / "out.jsonl.partial").write_bytes(out.read_bytes())
    code, _, _ = _run(capsys, "export", mixed, "-o", str(out), "--after", "f00004", *address)
    assert code == 0
    assert [line["file_id"] for line in _lines(out)] == ["f00005"]


HOSTILE = {
    "..pdf": "file",
    ".hidden.pdf": "hidden",
    "-rf .pdf": "rf",
    'a:b*?"<>|.pdf': "a_b______",
    "CON.pdf": "_CON",
    "名前 ☃.PDF": "名前 ☃",
    " trailing dots... ": "trailing dots",
    "x" * 251 + ".pdf": "x" * 120,
}


def test_a_directory_export_names_each_text_safely_and_indexes_every_file(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [(name, make_pdf(f"text of {n}", "second")) for n, name in enumerate(HOSTILE)]
    files.insert(2, ("broken.pdf", b"junk"))
    batch = server.submit(*files)
    server.settle(batch.batch_id)
    target = tmp_path / "new" / "texts"

    code, _, err = _run(
        capsys, "export", batch.batch_id, "-o", f"{target}/", "--address", server.address
    )

    assert code == 0
    assert "(1 failed, 8 succeeded)" in err
    index = _lines(target / "index.jsonl")
    assert [line["name"] for line in index] == [name for name, _ in files]
    assert index[2]["text_file"] is None
    assert index[2]["error"]["code"] == "NOT_A_PDF"
    assert all("pages" not in line for line in index)
    written = {line["name"]: line["text_file"] for line in index if line["text_file"]}
    for n, (name, stem) in enumerate(HOSTILE.items()):
        file_id = next(line["file_id"] for line in index if line["name"] == name)
        assert written[name] == f"{stem}.{file_id}.txt"
        text = (target / written[name]).read_text(encoding="utf-8")
        assert text == f"text of {n}\fsecond"
    assert sorted(p.name for p in target.iterdir()) == sorted([*written.values(), "index.jsonl"])
    assert all(p.resolve().parent == target.resolve() for p in target.iterdir())


def test_text_file_names_never_leave_the_directory_or_hide_characters() -> None:
    assert text_file_name("../../etc/passwd", "f00001") == "_.._etc_passwd.f00001.txt"
    assert text_file_name("..\\..\\boot.ini", "f00002") == "_.._boot.ini.f00002.txt"
    assert text_file_name("\x1b[31mred\u202eevil\u2028.pdf", "f3") == "_[31mred_evil_.f3.txt"
    assert text_file_name(".pdf", "../f4") == "file.___f4.txt"
    assert text_file_name("é" * 200, "f5") == "é" * 60 + ".f5.txt"


def test_a_line_holds_any_text_and_only_its_own_line_break() -> None:
    written: list[str] = []
    lines = _JsonLines(written.append)
    status = pb.FileStatus(file_id="f1", name="n\u2028.pdf", state=pb.FILE_STATE_SUCCEEDED)
    result = pb.FileResultMetadata(
        page_count=2, warnings=[pb.ResultWarning(code="CHARACTERS_REPLACED", count=3)]
    )
    pieces = [(1, 'a "q" \\ \n\u2028'), (1, "\u2029\x85 é\U0001f600"), (2, ""), (2, "end")]

    lines.start("b", pb.ExportedFile(status=status, result=result))
    for number, piece in pieces:
        lines.text(number, piece)
    lines.end()

    text = "".join(written)
    assert text.endswith("}\n")
    # JSON Lines: a reader that splits on every kind of line break still finds one line.
    assert len(text.splitlines()) == 1
    line = json.loads(text)
    assert line["pages"] == [
        {"number": 1, "text": 'a "q" \\ \n\u2028\u2029\x85 é\U0001f600'},
        {"number": 2, "text": "end"},
    ]
    assert line["name"] == "n\u2028.pdf"
    assert line["warnings"] == [
        {"code": "CHARACTERS_REPLACED", "message": "", "place": "", "count": 3}
    ]
    assert line["metadata"] == {"page_count": 2, "encrypted": False}


def test_the_target_is_a_file_a_directory_or_standard_output(tmp_path: Path) -> None:
    (tmp_path / "existing").mkdir()
    (tmp_path / "plain").write_text("")

    assert target_kind("-") == "stdout"
    assert target_kind(str(tmp_path / "existing")) == "directory"
    assert target_kind(f"{tmp_path}/new/") == "directory"
    assert target_kind(str(tmp_path / "out.JSONL")) == "jsonl"
    assert target_kind(str(tmp_path / "plain")) == "jsonl"
    with pytest.raises(ExportTargetError, match=r"ending in \.jsonl, or a directory ending"):
        target_kind(str(tmp_path / "results"))


def test_export_to_standard_output_pipes_json_lines_and_resumes_with_after(
    server: RunningServer, mixed: str
) -> None:
    command = [sys.executable, "-m", "server.main", "export", mixed, "--address", server.address]

    whole = subprocess.run(command, capture_output=True, check=False, timeout=60)
    after = subprocess.run(
        [*command, "-o", "-", "--after", "f00003"], capture_output=True, check=False, timeout=60
    )
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as early:
        assert early.stdout is not None
        assert early.stderr is not None
        assert early.stdout.read(1) == b"{"
        early.stdout.close()
        error = early.stderr.read()
        code = early.wait(60)

    assert (whole.returncode, whole.stderr) == (0, b"")
    lines = [json.loads(line) for line in whole.stdout.decode().split("\n") if line]
    assert [line["file_id"] for line in lines] == [f"f0000{n}" for n in range(1, 6)]
    assert lines[3]["pages"][0]["text"] == "A" * LONG_CHARS
    assert after.returncode == 0
    assert after.stdout.splitlines() == whole.stdout.splitlines()[3:]
    assert (code, error) == (141, b"")


def test_an_export_cut_off_by_the_network_keeps_its_partial_file_and_goes_on_from_it(
    server: RunningServer,
    proxy_to: Callable[[str], TcpProxy],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chars = 16 * TEXT_PIECE_CHARS
    batch = server.submit(
        ("a.pdf", make_pdf("a")),
        ("long.pdf", text_amplifier(chars, fan_out=256)),
        ("b.pdf", make_pdf("b")),
    )
    server.settle(batch.batch_id)
    export = ("export", batch.batch_id, "-o")
    whole = tmp_path / "whole.jsonl"
    assert _run(capsys, *export, str(whole), "--address", server.address)[0] == 0
    proxy = proxy_to(server.address)
    write_text = _JsonLines.text

    def write_then_lose_the_connection(self: _JsonLines, number: int, piece: str) -> None:
        write_text(self, number, piece)
        if len(piece) == TEXT_PIECE_CHARS:  # the long file's first piece is written
            proxy.drop()

    monkeypatch.setattr(_JsonLines, "text", write_then_lose_the_connection)
    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"

    code, _, err = _run(capsys, *export, str(out), "--address", proxy.address)

    assert code == 1
    assert "UNAVAILABLE" in err
    assert f"stopped; the files exported so far are in {partial}" in err
    assert not out.exists()
    assert partial.read_bytes().startswith(whole.read_bytes().split(b"\n")[0] + b"\n")
    assert len(partial.read_bytes()) > TEXT_PIECE_CHARS

    monkeypatch.undo()
    code, _, err = _run(capsys, *export, str(out), "--address", proxy.address)

    assert code == 0
    assert f"Exported 2 files after f00001 of batch {batch.batch_id}" in err
    assert out.read_bytes() == whole.read_bytes()
    assert not partial.exists()


def test_the_progress_line_fits_the_terminal_and_tells_rate_and_time_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written: list[str] = []

    class Terminal:
        def write(self, text: str) -> int:
            written.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    now = [100.0]
    widths = iter([80, 30])
    monkeypatch.setattr("server.cli.export._terminal_width", lambda _: next(widths))
    progress = _Progress(Terminal(), total=10, done=2, clock=lambda: now[0])  # type: ignore[arg-type]

    now[0] = 102.0
    progress.advance(files=1, chars=3 * 2**20)
    now[0] = 102.05
    progress.advance(files=1)  # within a tenth of a second: not redrawn
    now[0] = 104.0
    progress.advance(files=2)
    progress.close()

    assert written == [
        "\rexport: 3/10 files, 3.1M characters, 0.5 files/s, 0:14 left\x1b[K",
        "\rexport: 6/10 files, 3.1M char\x1b[K",  # 29 characters: a 30-column line
        "\r\x1b[K",
    ]


def test_a_directory_export_goes_on_from_its_partial_index(
    server: RunningServer, mixed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = ("--address", server.address)
    whole, target = tmp_path / "whole", tmp_path / "target"
    assert _run(capsys, "export", mixed, "-o", f"{whole}/", *address)[0] == 0
    index = (whole / "index.jsonl").read_bytes()
    # As an export stopped while writing the long file's text leaves its directory.
    target.mkdir()
    for line in _lines(whole / "index.jsonl")[:3]:
        if line["text_file"]:
            (target / line["text_file"]).write_bytes((whole / line["text_file"]).read_bytes())
    (target / "long.f00004.txt.partial").write_text("A" * 1000)
    (target / "index.jsonl.partial").write_bytes(b"".join(index.splitlines(True)[:3]))

    code, _, err = _run(capsys, "export", mixed, "-o", str(target), *address)

    assert code == 0
    assert f"Exported 2 files after f00003 of batch {mixed}" in err
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in whole.iterdir())
    for path in whole.iterdir():
        assert (target / path.name).read_bytes() == path.read_bytes(), path.name
