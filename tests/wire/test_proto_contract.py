"""The contract's checks catch what they are for: buf (``make proto-lint``) on changed copies.

``make test`` installs buf before pytest runs; run ``make proto-lint`` once before
running this module alone.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
PROTO = Path("protos/pdfbatch/v1/batch.proto")
RELEASED = "protos/released/pdfbatch-v1.json"

pytestmark = pytest.mark.skipif(not BUF.exists(), reason="buf is not installed: make proto-lint")


def _copy(tmp_path: Path, old: str = "", new: str = "") -> Path:
    """The repository's buf workspace in ``tmp_path``, with ``old`` replaced in the .proto."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos", ignore=shutil.ignore_patterns("*.py"))
    proto = tmp_path / PROTO
    text = proto.read_text()
    if old:
        assert text.count(old) == 1, old
        proto.write_text(text.replace(old, new))
    return tmp_path


def _buf(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), *args], cwd=workspace, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_committed_contract_passes_lint_and_breaking(tmp_path: Path) -> None:
    workspace = _copy(tmp_path)
    assert _buf(workspace, "lint").returncode == 0
    # FileTransition.sequence went from uint64 to int64 since the release: same wire.
    assert _buf(workspace, "breaking", "--against", RELEASED).returncode == 0


def test_renumbering_or_removing_a_field_breaks_the_released_contract(tmp_path: Path) -> None:
    renumbered = _copy(tmp_path / "renumbered", "bool follow = 3;", "bool follow = 9;")
    found = _buf(renumbered, "breaking", "--against", RELEASED)
    assert found.returncode != 0
    assert '"follow" on message "WatchBatchRequest" was deleted' in found.stdout

    removed = _copy(tmp_path / "removed", "  string reason = 10;\n", "")
    found = _buf(removed, "breaking", "--against", RELEASED)
    assert found.returncode != 0
    assert 'field "10" with name "reason" on message "Batch"' in found.stdout

    # What the JSON mapping sees is part of the contract too.
    renamed = _copy(tmp_path / "renamed", "bool follow = 3;", "bool follow_retries = 3;")
    assert _buf(renamed, "breaking", "--against", RELEASED).returncode != 0


def test_an_undocumented_field_or_a_new_batch_returning_rpc_fails_lint(tmp_path: Path) -> None:
    undocumented = _copy(
        tmp_path / "undocumented",
        "  // Keep streaming after the batch reaches a terminal state (to follow retries).\n",
        "",
    )
    found = _buf(undocumented, "lint")
    assert found.returncode != 0
    assert 'Field "follow" should have a non-empty comment' in found.stdout

    # The exceptions hold for the four rpcs that carry them, not for a new one.
    extra = _copy(
        tmp_path / "extra",
        "  rpc ListBatches(",
        "  // Pauses the batch.\n  rpc PauseBatch(GetBatchRequest) returns (Batch);\n\n"
        "  // Lists the caller's batches.\n  rpc ListBatches(",
    )
    found = _buf(extra, "lint")
    assert found.returncode != 0
    assert 'RPC response type "Batch" should be named "PauseBatchResponse"' in found.stdout
