"""Processors for the scenarios: a scripted one that measures the service, not pypdf,
and a gated extractor that waits for the scenario's word.

Workers import it when a server runs with ``PDFBATCH_PROCESSOR=bench.processors:scripted``
(or ``Service(processor=SCRIPTED)``). The file's bytes say what to do, after the
``%PDF-`` signature that gets them past the service's screening:

- ``%PDF-ok``: succeed at once with a one-page result (``%PDF-ok`` followed by a space
  and anything, so that many such files are different blobs).
- ``%PDF-hang``: leave a file named ``hang-<pid>`` in the worker's temporary directory,
  then wait forever, so that a cancel has a process to kill and a file to clean up.

A copy of the idea in ``tests/helpers/processors.py``, so that the bench does not import tests.

``bench.processors:gated`` is the real extractor behind a gate: an attempt waits until
the gate file (:func:`gate_path`) exists beside the workers' temporary directories, so
that a scenario can have its clients listening before the first file ends.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

from actors.execution.extract import PDF_SIGNATURE, extract_pdf
from actors.policy.document import ExtractionMode
from actors.policy.model import DocumentInfo, ExtractionResult

__all__ = ["GATED", "HANG", "OK", "SCRIPTED", "gate_path", "gated", "hang_marker", "scripted"]

SCRIPTED = "bench.processors:scripted"
GATED = "bench.processors:gated"
OK = PDF_SIGNATURE + b"ok"
HANG = PDF_SIGNATURE + b"hang"


def hang_marker(temp_dir: Path, pid: int) -> Path:
    """The file a hanging worker leaves in its temporary directory."""
    return temp_dir / f"hang-{pid}"


def scripted(data: bytes, password: str | None) -> ExtractionResult:
    """Do what ``data`` says (see the module's description).

    Raises:
        ValueError: ``data`` is no script of this module.
    """
    del password
    match data.removeprefix(PDF_SIGNATURE).split(b" ", 1)[0]:
        case b"ok":
            return ExtractionResult(
                page_count=1, encrypted=False, info=DocumentInfo(title="ok"), pages=("ok",)
            )
        case b"hang":
            hang_marker(Path(tempfile.gettempdir()), os.getpid()).write_bytes(b"")
            threading.Event().wait()
    raise ValueError(f"not a script: {data[:32]!r}")


def gate_path(work_dir: Path) -> Path:
    """The file that lets gated attempts run, for a service whose workers' temporary
    directories are in ``work_dir`` (a service's ``DATA_DIR/work``)."""
    return work_dir / "bench-gate"


def gated(data: bytes, password: str | None, *, mode: ExtractionMode) -> ExtractionResult:
    """Wait until the gate is open, then extract ``data`` as the service's default does."""
    # A worker's temporary directory is its own, inside the service's work directory.
    gate = gate_path(Path(tempfile.gettempdir()).parent)
    while not gate.exists():
        time.sleep(0.001)
    return extract_pdf(data, password, mode=mode)
