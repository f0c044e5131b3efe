"""Logging for engineers: configured once, at start, for structlog and the stdlib alike.

JSON lines when standard error is not a terminal, readable columns when it is. The
standard library's loggers (``grpc``, ``pypdf``, pykka's) go through the same
processors, so every line has the same shape and passes the same redaction.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

__all__ = [
    "REDACTED",
    "configure_logging",
    "redact_credentials_in_text",
    "redact_secret_fields",
    "reset_logging",
    "shared_processors",
    "wants_colors",
]

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|authorization|api[_-]?key|cookie", re.IGNORECASE
)
# Credentials inside free text: "Bearer abc...", "password=abc", "token: abc".
_IN_TEXT = re.compile(
    r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"
    r"|\b(pass(?:word|wd|phrase)?|secret|token|api[_-]?key)(\s*[=:]\s*)[^\s,;&'\"]+"
)
# pypdf warns once per odd object; one real file printed 1,412 such lines.
_QUIET_LOGGERS = {"pypdf": logging.ERROR, "grpc": logging.WARNING}


def redact_secret_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Replace the value of any field whose name says it holds a secret, at any depth."""
    return _redact_mapping(event_dict)


def _redact_mapping(mapping: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in mapping.items():
        # Flags and counts about secrets (``encrypted_with_password``) are not secrets.
        if _SECRET_KEY.search(str(key)) and value and not isinstance(value, bool | int | float):
            mapping[key] = REDACTED
        elif isinstance(value, Mapping):
            mapping[key] = _redact_mapping(dict(value))
    return mapping


def redact_credentials_in_text(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Cut credentials out of free text: messages, error details, rendered tracebacks."""
    for key, value in event_dict.items():
        if isinstance(value, str) and _IN_TEXT.search(value):
            event_dict[key] = _IN_TEXT.sub(_redact_match, value)
    return event_dict


def _redact_match(match: re.Match[str]) -> str:
    if match.group(1):
        return f"{match.group(1)} {REDACTED}"
    return f"{match.group(2)}{match.group(3)}{REDACTED}"


def shared_processors() -> list[Processor]:
    """What every line goes through, whether structlog's or the standard library's."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        redact_secret_fields,
        redact_credentials_in_text,
    ]


def wants_colors(stream: TextIO) -> bool:
    """Colours on a terminal, unless ``NO_COLOR`` is set; everywhere if ``FORCE_COLOR`` is.

    The https://no-color.org convention, as structlog follows it by default.
    """
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return stream.isatty()


def configure_logging(
    *, level: int = logging.INFO, stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Route structlog and the standard library to ``stream``. Call once, at start.

    Args:
        level: The least severe level written. Default ``INFO``.
        stream: Where lines go. Default standard error.
        json: JSON lines (``True``) or console columns (``False``). Default: JSON unless
            ``stream`` is a terminal.
    """
    stream = stream or sys.stderr
    as_json = not stream.isatty() if json is None else json
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=wants_colors(stream))
    )
    structlog.configure(
        processors=[
            *shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared_processors(),
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                # Again: a traceback is only text from here on, and may quote secrets.
                redact_credentials_in_text,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, quiet in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(level, quiet))


def reset_logging() -> None:
    """Undo :func:`configure_logging` (for tests)."""
    structlog.reset_defaults()
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.WARNING)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
