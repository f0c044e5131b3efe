"""Scenario: what a small upload's bytes cost, as rows of SQLite against a file each.

Two measures of 1 KB files, each side by side in the same run, interleaved:

- **Blob store**: the upload's own path through :class:`~actors.storage.blobs.BlobStore`
  (open a writer, write, finish, commit, then one flush for the upload), per file, with
  ``inline_max_bytes`` 0 (every blob a file) and the default (rows).
- **Through gRPC**: ``SubmitBatch`` of as many 1 KB files to two in-process services,
  one storing every upload as a file, one with the default; milliseconds per file from
  the first message to the reply. The files are not PDFs, so screening fails them at
  once and the batch costs no worker.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from actors.storage.blobs import DEFAULT_INLINE_MAX_BYTES, BlobStore
from bench.options import Options
from bench.report import Figure, median
from server.client.api import Client, UploadFile
from server.service.app import Service
from server.service.settings import ServerSettings, UploadLimits

__all__ = ["small_blobs"]

FILES = 1_000
FILE_BYTES = 1_000
MODES = {"files": 0, "rows": DEFAULT_INLINE_MAX_BYTES}


def small_blobs(options: Options) -> list[Figure]:
    """Per-file cost of 1 KB uploads stored as files against rows."""
    count = options.files or FILES
    repeat = options.repeat or 3
    contents = [os.urandom(FILE_BYTES) for _ in range(count)]
    store_ms: dict[str, list[float]] = {mode: [] for mode in MODES}
    wire_ms: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-blobs-") as scratch:
        root = Path(scratch)
        services = {
            mode: Service(
                ServerSettings(
                    address="127.0.0.1:0",
                    data_dir=root / f"service-{mode}",
                    workers=1,
                    limits=UploadLimits(max_files_per_batch=max(count, 1_000)),
                    inline_blob_max_bytes=inline,
                    shutdown_grace=0,
                )
            )
            for mode, inline in MODES.items()
        }
        try:
            for service in services.values():
                service.start()
            for run in range(repeat):
                for mode, inline in MODES.items():
                    store_ms[mode].append(_store_run(root / f"{mode}-{run}", inline, contents))
                    wire_ms[mode].append(
                        _wire_run(services[mode].address, root / f"up-{mode}-{run}", contents, run)
                    )
        finally:
            for service in services.values():
                service.stop(grace=0)
    return [
        _figure("blob store", count, store_ms),
        _figure("SubmitBatch", count, wire_ms),
    ]


def _figure(what: str, count: int, runs: dict[str, list[float]]) -> Figure:
    files, rows = median(runs["files"]), median(runs["rows"])
    return Figure(
        "small-blobs",
        f"{what}: ms per 1 KB file, rows against files ({count} files)",
        rows,
        "ms",
        note=f"files {files:.3f} ms, rows {rows:.3f} ms per file ({files / rows:.1f}x)",
        detail={"files": count, "ms_per_file": runs},
    )


def _store_run(directory: Path, inline: int, contents: list[bytes]) -> float:
    blobs = BlobStore(directory, inline_max_bytes=inline)
    try:
        started = time.perf_counter()
        writers = []
        for data in contents:
            writer = blobs.writer(len(data))
            writer.write(data)
            writer.finish(durable=False)
            writers.append(writer)
        for writer in writers:
            writer.commit(durable=False)
        blobs.sync()
        return 1000 * (time.perf_counter() - started) / len(contents)
    finally:
        blobs.close()


def _wire_run(address: str, directory: Path, contents: list[bytes], run: int) -> float:
    # Distinct bytes per run: a repeated upload would find every blob stored already.
    directory.mkdir(parents=True)
    files = []
    for n, data in enumerate(contents):
        path = directory / f"{n:05d}.pdf"
        path.write_bytes(data + run.to_bytes(4, "big"))
        files.append(UploadFile(path, path.name))
    with Client(address) as client:
        started = time.perf_counter()
        client.submit(files, timeout=600)
        return 1000 * (time.perf_counter() - started) / len(contents)
