"""What the commands' arguments are: their types, the hints for completing them, and the
help they share.

A type raises :class:`argparse.ArgumentTypeError` with what it expected, which the
parser prints with the usage.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

__all__ = ["BATCH_ID_HELP", "AddCommand", "label", "non_negative", "password_file", "paths"]

# Makes one client command's parser: ``(name, handler(client, args) -> int, help,
# json_flag=True)``, with the flags every client command takes.
AddCommand = Callable[..., argparse.ArgumentParser]

BATCH_ID_HELP = "the batch, as `pdfbatch submit` or `pdfbatch list` prints it"
_COMPLETE_PATHS = {"bash": "_shtab_compgen_files", "zsh": "_files"}


def non_negative(text: str) -> int:
    """A whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def label(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as ``(key, value)``; the value may be empty or hold ``=``."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def password_file(text: str) -> tuple[str, str]:
    """``KEY=PATH``: the password is the file's first line, never a command-line word."""
    key, path = label(text)
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read password file {path!r}: {error}") from None
    return key, lines[0] if lines else ""


def paths(action: argparse.Action) -> None:
    """Let the shell complete file and directory names for ``action`` (shtab's hint,
    spelled out so that building the parser never imports shtab)."""
    action.complete = _COMPLETE_PATHS  # type: ignore[attr-defined]
