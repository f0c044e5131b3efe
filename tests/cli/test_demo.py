"""The README's first command: the demo runs end to end against a real service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_ends_in_partial_success_after_retrying_the_encrypted_file() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "PDF_ENCRYPTED: This file is password-protected." in out
    assert "NOT_A_PDF" in out
    assert "PDF_MALFORMED" in out
    assert "10 files: 8 succeeded, 2 failed, 0 cancelled" in out
    assert "Report 2, page 2" in out
    assert "The batch ended with exit code 2" in out
