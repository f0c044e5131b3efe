"""The demo: a real service, a batch with broken files, live progress, a retry, a summary.

Everything goes through the ``pdfbatch`` command line, as a user would run it::

    python -m bench.demo            # or: make demo

It starts ``pdfbatch serve`` on a free loopback port with a fresh data directory,
submits ten files (seven good, one truncated, one that is not a PDF, one encrypted and
sent without its password), watches the batch settle in partial success, retries the
encrypted file with its password, and prints the final state. The service is stopped
and its data directory removed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.samples import encrypted_pdf, not_a_pdf, text_pdf, truncated_pdf

PASSWORD = "open sesame"


def _cli(address: str, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``pdfbatch ARGS`` against the demo server, its output going to the terminal."""
    command = [sys.executable, "-m", "server.main", *args, "--address", address]
    print(f"\n$ pdfbatch {' '.join(args)}", flush=True)
    return subprocess.run(command, check=check, text=True)


def _cli_json(address: str, *args: str) -> dict[str, object]:
    command = [sys.executable, "-m", "server.main", *args, "--address", address, "--json"]
    # Exit codes 2 and 3 report a batch's outcome, not a failed command.
    done = subprocess.run(command, check=False, text=True, capture_output=True)
    if done.returncode == 1:
        raise SystemExit(f"pdfbatch {' '.join(args)} failed: {done.stderr.strip()}")
    parsed: dict[str, object] = json.loads(done.stdout)
    return parsed


def _write_inputs(folder: Path) -> None:
    folder.mkdir()
    for number in range(1, 8):
        pages = [f"Report {number}, page {page}" for page in range(1, number + 1)]
        (folder / f"report-{number}.pdf").write_bytes(text_pdf(*pages))
    (folder / "truncated.pdf").write_bytes(truncated_pdf())
    (folder / "notes.pdf").write_bytes(not_a_pdf())
    (folder / "secret.pdf").write_bytes(encrypted_pdf(PASSWORD))


def _start_server(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "server.main", "serve", "--address", "127.0.0.1:0"),
            *("--data-dir", str(data_dir), "--workers", "2"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line.startswith("listening on "):
        server.kill()
        raise SystemExit(f"the service did not start: {line!r}")
    return server, line.removeprefix("listening on ").strip()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; 0 when the batch ended as designed, in partial success."""
    del argv
    with tempfile.TemporaryDirectory(prefix="pdfbatch-demo-") as scratch:
        root = Path(scratch)
        _write_inputs(root / "input")
        (root / "password.txt").write_text(PASSWORD + "\n")
        os.chmod(root / "password.txt", 0o600)
        server, address = _start_server(root / "data")
        print(f"pdfbatch is serving on {address} (data in {root / 'data'})")
        try:
            _cli(address, "submit", str(root / "input"), "--name", "demo", "--watch")
            batch = _cli_json(address, "list", "--limit", "1")["batches"][0]  # type: ignore[index]
            batch_id = batch["batchId"]
            files = _cli_json(address, "status", batch_id)["files"]
            secret = next(f for f in files if f["name"] == "secret.pdf")  # type: ignore[union-attr]
            print(
                "\nsecret.pdf failed because it is password-protected; retrying it with its "
                "password (the other bytes are not uploaded again):",
                flush=True,
            )
            file_id = secret["fileId"]
            _cli(
                address,
                "retry",
                batch_id,
                file_id,
                "--password-file",
                f"{file_id}={root / 'password.txt'}",
                "--watch",
            )
            final = _cli(address, "status", batch_id)
            report = next(f for f in files if f["name"] == "report-2.pdf")  # type: ignore[union-attr]
            _cli(address, "results", batch_id, report["fileId"])
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(
        f"\nThe batch ended with exit code {final.returncode} "
        "(0 all succeeded, 2 partial success, 3 failed or cancelled)."
    )
    # Two files are broken beyond repair: partial success is the demo's happy ending.
    return 0 if final.returncode == 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
