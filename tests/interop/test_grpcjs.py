"""A stock grpc-js client (Node, default 4 MiB receive limit) reads a batch of 20,000
files: ``GetBatch`` in both views, the first ``WatchBatch`` message, and every file
through ``ListFiles`` pages (``grpcjs/check.js``).

Node is no dependency of pdfbatch: the test skips, saying why, where ``node`` or
``npm`` is missing, or where npm cannot install the two pinned packages
(``grpcjs/package-lock.json``) into ``grpcjs/node_modules`` (ignored by git).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.processors import OK, SCRIPTED
from server.gen.pdfbatch.v1 import batch_pb2 as pb
from tests.helpers.server_fixtures import WAIT, ServerFactory

# The in-process server logs a line per file: into the test's captured output.
pytestmark = pytest.mark.usefixtures("server_logs_to_stderr")

HERE = Path(__file__).resolve().parent / "grpcjs"
PROTOS = Path(__file__).resolve().parents[2] / "protos"
FILES = 20_000
INSTALL_SECONDS = 300
CHECK_SECONDS = 300


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` program, with the check's packages installed next to it."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the grpc-js check (apt-get install nodejs npm)")
    if not (HERE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        try:
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=HERE,
                check=True,
                capture_output=True,
                text=True,
                timeout=INSTALL_SECONDS,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            output = getattr(error, "stderr", "") or ""
            pytest.skip(f"npm could not install the grpc-js check's packages: {output[-500:]}")
    return node


def _upload(spec: pb.BatchSpec) -> Iterator[pb.SubmitBatchRequest]:
    """Each file's bytes in its header: one message a file."""
    yield pb.SubmitBatchRequest(spec=spec)
    for n in range(FILES):
        header = pb.FileHeader(name=f"{n}.pdf", size_bytes=len(OK), content=OK)
        yield pb.SubmitBatchRequest(file=header)
    yield pb.SubmitBatchRequest(end=pb.UploadEnd(file_count=FILES))


def test_a_stock_grpc_js_client_reads_a_20000_file_batch(node: str, serve: ServerFactory) -> None:
    server = serve(processor=SCRIPTED, limits={"max_files_per_batch": FILES})
    # One file at a time: the batch stays busy while it is read, and costs little CPU.
    spec = pb.BatchSpec(policy=pb.BatchPolicy(max_concurrency=1))
    batch = server.stub.SubmitBatch(_upload(spec), timeout=WAIT * 5)
    assert batch.file_count == FILES

    checked = subprocess.run(
        [node, "check.js", server.address, str(PROTOS), batch.batch_id],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=CHECK_SECONDS,
        check=False,
    )

    assert checked.returncode == 0, checked.stderr
    summary = json.loads(checked.stdout)
    assert summary["basic"] == {"files": 0, "file_count": FILES, "state": summary["basic"]["state"]}
    assert summary["full"] == {"files": 100, "next_page_token": True}
    assert summary["watch"] == {"change": "snapshot", "file_count": FILES}
    assert summary["list"] == {
        "pages": FILES // 1000,
        "files": FILES,
        "total": FILES,
        "largest_page": 1000,
    }
