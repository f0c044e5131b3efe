"""Scripted processors that worker processes import in the pool tests.

The blob's bytes choose the behaviour: ``b"<command>"`` or ``b"<command>:<argument>"``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import pypdf
from pypdf.errors import PdfReadError

from actors.execution import attempt
from actors.policy.document import DocumentDetails, PageInfo
from actors.policy.model import DocumentInfo, ExtractionResult
from actors.policy.sealed import details_to_json, info_to_json

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
    ``password``; ``not-a-result``; ``echo:JSON`` (returns what the JSON says);
    ``forge:KIND`` (the worker replies with the forged result :data:`FORGED` names).
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
        case "forge":
            _forge_next_reply(FORGED[argument])
            return result("forged")
    raise ValueError(f"unknown script {command!r}")


def _sealed_reply(*text: bytes, **changes: object) -> bytes:
    """A worker's reply of a sealed result "forged", one piece a page of ``text`` (the
    bytes as they are), with ``changes`` to its head's fields.

    Framed as :func:`~actors.execution.attempt.encode_reply` frames a reply: the size of
    the head (4 bytes, little-endian), the head (JSON), then the text.
    """
    pieces = text or (b"forged",)
    fields: dict[str, object] = {
        "page_count": len(pieces),
        "encrypted": False,
        "warnings": [],
        "info": info_to_json(DocumentInfo(title="forged")),
        "details": details_to_json(DocumentDetails(pages=(PageInfo(characters=6),))),
        "pages": [[len(piece)] for piece in pieces],
        "stored_bytes": 2 * sum(len(piece) for piece in pieces),
    }
    fields.update(changes)
    # ASCII escapes in the head: a lone surrogate is written as one, which is what a
    # hostile worker would send, since UTF-8 cannot carry it.
    head = json.dumps({"ok": fields}).encode()
    return struct.pack("<I", len(head)) + head + b"".join(pieces)


# What a broken or hostile worker could send instead of a sealed result, by name.
FORGED = {
    # Fit to store: a character outside the BMP, as its four bytes of UTF-8.
    "valid": _sealed_reply("smile \U0001f600".encode(), stored_bytes=20),
    # A lone surrogate as the three bytes UTF-8 would give it, were it allowed.
    "surrogate-text": _sealed_reply(b"a\xed\xa0\x80b"),
    "surrogate-info": _sealed_reply(
        info=info_to_json(DocumentInfo(title="forged")).replace("forged", "\\udfff")
    ),
    "bad-utf8": _sealed_reply(b"forg\xffd"),
    "wrong-types": _sealed_reply(page_count="1"),
    "page-not-pieces": _sealed_reply(pages=[6]),
    "piece-past-the-text": _sealed_reply(pages=[[7]]),
    "text-after-the-pieces": _sealed_reply(b"forged", pages=[[5]]),
    "details-not-numbers": _sealed_reply(
        details='{"pdf_version":null,"pages":[["wide",null,0,6]],"outline":[],'
        '"attachments":[],"has_xmp":false}'
    ),
    "size-understated": _sealed_reply(stored_bytes=1),
    "over-the-limit": _sealed_reply(b"x" * 5_000, stored_bytes=5_012),
}


def _forge_next_reply(payload: bytes) -> None:
    """Make this worker send ``payload`` as the reply of the attempt running: the worker
    encodes its reply once the processor has returned, by this module-level name."""
    original = attempt.encode_reply

    def forged(reply: attempt.WorkerReply) -> bytes:
        del reply
        attempt.encode_reply = original
        return payload

    attempt.encode_reply = forged


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
