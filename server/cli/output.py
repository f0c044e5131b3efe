"""How the commands end: their exit codes, and protobuf messages printed as JSON."""

from __future__ import annotations

from google.protobuf import json_format
from google.protobuf.message import Message

__all__ = [
    "EXIT_CLOSED_PIPE",
    "EXIT_FAILED_COMMAND",
    "EXIT_INTERRUPTED",
    "print_json",
    "print_json_line",
]

EXIT_FAILED_COMMAND = 1
EXIT_INTERRUPTED = 130
# As a process killed by SIGPIPE would report it: the reader stopped reading.
EXIT_CLOSED_PIPE = 141


def print_json(message: Message) -> None:
    """``message`` as one indented JSON object, every field present."""
    print(json_format.MessageToJson(message, always_print_fields_with_no_presence=True))


def print_json_line(message: Message) -> None:
    """``message`` as one line of JSON Lines."""
    print(
        json_format.MessageToJson(message, always_print_fields_with_no_presence=True, indent=None)
    )
