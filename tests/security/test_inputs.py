"""Inputs bounded and data kept private: names that print as other names, passwords of
megabytes, and a data directory other local users could list."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import pytest

from actors.storage.sqlite_store import SQLiteStore
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from tests.helpers.server_fixtures import (
    WAIT,
    RunningServer,
    ServerFactory,
    make_pdf,
    refused,
    upload,
)

# Each makes a name print as something it is not: a right-to-left override, a zero-width
# space, a line separator, a C1 control (CSI), a byte-order mark.
HIDING = ["\u202e", "\u200b", "\u2028", "\x9b", "\ufeff"]


@pytest.mark.parametrize("hidden", HIDING, ids=[f"U+{ord(c):04X}" for c in HIDING])
def test_a_name_with_a_hiding_character_is_refused_and_nothing_stored(
    server: RunningServer, hidden: str
) -> None:
    name = f"invoice{hidden}fdp.pdf"

    error = refused(lambda: server.submit((name, make_pdf("x"))))

    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FILE_NAME")
    assert "U+202E" in error.message
    assert list(server.client.list()) == []
    assert not [p for p in server.blob_files() if not p.name.startswith(".")]
    display = refused(lambda: server.submit(("a.pdf", make_pdf("x")), display_name=name))
    assert display.code == grpc.StatusCode.INVALID_ARGUMENT


def test_passwords_are_bounded_at_submit_and_at_retry(server: RunningServer) -> None:
    def submit_with(password: str) -> pb.Batch:
        header = pb.FileHeader(name="locked.pdf", size_bytes=3, password=password)
        messages = [
            pb.SubmitBatchRequest(spec=pb.BatchSpec()),
            pb.SubmitBatchRequest(file=header),
            pb.SubmitBatchRequest(chunk=b"%PD"),
            pb.SubmitBatchRequest(end=pb.UploadEnd(file_count=1)),
        ]
        return server.stub.SubmitBatch(iter(messages), timeout=WAIT)

    too_long = refused(lambda: submit_with("é" * 513))  # 1,026 bytes of UTF-8

    assert (too_long.code, too_long.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PASSWORD_TOO_LONG",
    )
    assert too_long.metadata["maxPasswordBytes"] == "1024"
    batch = submit_with("p" * 1024)  # at the limit
    server.settle(batch.batch_id)
    retry = pb.RetryFilesRequest(
        batch_id=batch.batch_id, file_ids=["f00001"], passwords={"f00001": "x" * 1025}
    )
    at_retry = refused(lambda: server.stub.RetryFiles(retry, timeout=WAIT))
    assert at_retry.reason == "PASSWORD_TOO_LONG"
    assert server.client.get(batch.batch_id).files[0].attempt_count == 1, "nothing retried"


def test_the_data_directory_is_private_even_if_it_was_not(
    serve: ServerFactory, tmp_path: Path
) -> None:
    data = tmp_path / "server-0"
    data.mkdir(mode=0o755)
    data.chmod(0o755)  # as an earlier version left it, whatever the umask
    server = serve()
    assert server.data_dir == data
    # A small file is a row of the blobs' database; a big one a file of its own.
    files = [("a.pdf", make_pdf("a")), ("big.pdf", make_pdf("big", padding=300 * 1024))]
    batch = server.stub.SubmitBatch(upload(pb.BatchSpec(), files), timeout=WAIT)
    server.settle(batch.batch_id)

    directories = [data, *(p for p in data.rglob("*") if p.is_dir())]

    assert {d.relative_to(data).as_posix() for d in directories} >= {".", "blobs", "work"}
    assert any(len(d.name) == 2 for d in directories), "a blob shard was made"
    modes = {d.relative_to(data).as_posix(): stat.S_IMODE(d.stat().st_mode) for d in directories}
    assert set(modes.values()) == {0o700}, modes
    inline = list((data / "blobs").glob("inline.sqlite*"))
    assert inline, "the small file went to the blobs' database"
    assert {stat.S_IMODE(p.stat().st_mode) for p in inline} == {0o600}


def test_deleted_results_are_overwritten_in_the_database(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    try:
        with store._db.write() as db:
            assert db.execute("PRAGMA secure_delete").fetchone() == (1,)
        with store._db.read() as db:
            assert db.execute("PRAGMA secure_delete").fetchone() == (1,)
    finally:
        store.close()
