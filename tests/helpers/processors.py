"""Scripted processors that worker processes import in the pool tests.

The blob's bytes choose the behaviour: ``b"<command>"`` or ``b"<command>:<argument>"``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pypdf
from pypdf.errors import PdfReadError

from actors.policy.document import DocumentDetails, PageInfo
from actors.policy.model import DocumentInfo, ExtractionResult

SCRIPTED = "tests.helpers.processors:scripted"
PLAIN = "tests.helpers.processors:plain"


def result(*pages: str) -> ExtractionResult:
    """A fixed result carrying ``pages``, as a worker stores it: each page's character
    count in its details."""
    return ExtractionResult(
        page_count=len(pages),
        encrypted=False,
        info=DocumentInfo(title="scripted"),
        pages=pages,
        details=DocumentDetails(pages=tuple(PageInfo(characters=len(page)) for page in pages)),
    )


def scripted(data: bytes, password: str | None, attempt: int) -> ExtractionResult:
    """Behave as the blob says.

    Commands: ``ok``; ``pid`` (returns the worker's pid); ``fail-until:N`` (a pypdf
    error before attempt N); ``crash-until:N`` (the worker dies before attempt N);
    ``pdf-error``; ``bug`` (a ValueError of ours); ``hang``; ``sleep:SECONDS``;
    ``exit:N``; ``sigkill``; ``segv``; ``alloc:BYTES``;
    ``gate:FIFO`` (waits until the test writes to the FIFO); ``tempfile`` (leaves a
    file in the temporary directory); ``environment`` (reports the worker's limits);
    ``modules`` (what the worker loaded);
    ``password``; ``not-a-result``; ``echo:JSON`` (returns what the JSON says).
    """
    command, _, argument = data.decode().partition(":")
    match command:
        case "ok":
            return result("ok")
        case "pid":
            return result(str(os.getpid()))
        case "fail-until":
            if attempt < int(argument):
                raise PdfReadError(f"scripted failure on attempt {attempt}")
            return result(f"attempt {attempt}")
        case "crash-until":
            if attempt < int(argument):
                os._exit(70)
            return result(f"attempt {attempt}")
        case "pdf-error":
            raise PdfReadError("scripted permanent failure")
        case "bug":
            raise ValueError("a bug in our own code")
        case "raise":
            # ``raise:Type:text``: an exception of a chosen type carrying ``text``.
            kind, _, text = argument.partition(":")
            raise {"PdfReadError": PdfReadError, "ValueError": ValueError, "OSError": OSError}[
                kind
            ](text)
        case "hang":
            threading.Event().wait()
        case "sleep":
            time.sleep(float(argument))
            return result("slept")
        case "exit":
            os._exit(int(argument))
        case "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        case "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        case "alloc":
            return result(str(len(bytearray(int(argument)))))
        case "gate":
            return result(Path(argument).read_text())
        case "tempfile":
            handle, path = tempfile.mkstemp()
            os.close(handle)
            return result(path, os.environ["TMPDIR"])
        case "environment":
            return result(json.dumps(_environment()))
        case "modules":
            return result(json.dumps(sorted(sys.modules)))
        case "password":
            return result(repr(password))
        case "not-a-result":
            return "a string"  # type: ignore[return-value]
        case "echo":
            # ``echo:JSON``: the pages and information fields the JSON holds, as they are
            # (JSON escapes carry any code point, lone surrogates included).
            given = json.loads(argument)
            return ExtractionResult(
                len(given["pages"]), False, DocumentInfo(**given["info"]), tuple(given["pages"])
            )
    raise ValueError(f"unknown script {command!r}")


def plain(data: bytes, password: str | None) -> ExtractionResult:
    """A processor without an ``attempt`` parameter."""
    return result(data.decode(), repr(password))


def _environment() -> dict[str, object]:
    configuration = pypdf.get_configuration()
    return {
        "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
        "pypdf_log_level": logging.getLogger("pypdf").level,
        "tempdir": tempfile.gettempdir(),
        "zlib_maximum_output_length": configuration.zlib_maximum_output_length,
        "jbig2dec_binary": configuration.jbig2dec_binary,
    }
