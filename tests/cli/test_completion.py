"""Shell completion and help: every argument explained, scripts that really complete."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.cli.commands import build_parser
from server.main import main
from server.service.commands import add_service_commands


def _arguments(
    parser: argparse.ArgumentParser, path: str = "pdfbatch"
) -> Iterator[tuple[str, argparse.Action]]:
    """Every argument of ``parser`` and of its commands, with the command it belongs to."""
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"{path} {choice.dest}", choice
            for name, sub in action.choices.items():
                yield from _arguments(sub, f"{path} {name}")


def test_every_argument_of_every_command_says_what_it_is_for() -> None:
    arguments = list(_arguments(build_parser(add_service_commands)))
    commands = {path for path, _ in arguments}

    unexplained = [
        f"{path}: {'/'.join(action.option_strings) or action.dest}"
        for path, action in arguments
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS
    ]

    assert unexplained == []
    assert {"pdfbatch export", "pdfbatch completion", "pdfbatch serve"} <= commands
    assert len(arguments) > 100


def _complete(script: Path, words: list[str], cwd: Path) -> list[str]:
    """What bash offers for the last of ``words``, with the script sourced."""
    line = " ".join(words)
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE={line!r}\nCOMP_POINT=${{#COMP_LINE}}\n"
        "_shtab_pdfbatch\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile"],
        input=program,
        capture_output=True,
        text=True,
        cwd=cwd,
        check=True,
        timeout=30,
    )
    return sorted(done.stdout.split())


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_the_bash_script_completes_commands_options_choices_and_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "pdfbatch.bash"
    script.write_text(capsys.readouterr().out)
    (tmp_path / "results.jsonl").write_text("")

    assert _complete(script, ["pdfbatch", "ex"], tmp_path) == ["export"]
    assert _complete(script, ["pdfbatch", "export", "--af"], tmp_path) == ["--after"]
    assert _complete(script, ["pdfbatch", "export", "b", "-o", "res"], tmp_path) == [
        "results.jsonl"
    ]
    assert _complete(script, ["pdfbatch", "status", "b", "--state", "FA"], tmp_path) == ["FAILED"]
    assert _complete(script, ["pdfbatch", "completion", ""], tmp_path) == ["bash", "zsh"]


def test_the_zsh_script_is_a_completion_function_for_pdfbatch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out

    assert script.startswith("#compdef pdfbatch\n")
    assert "export" in script
    assert "--after" in script


def test_a_command_line_never_loads_the_completion_library() -> None:
    program = "import sys\nfrom server.main import main\nmain([])\nprint('shtab' in sys.modules)\n"
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )

    assert done.stdout.splitlines()[-1] == "False"
    assert "completion" in done.stdout
