"""``pdfbatch``: run the service, or use it from the command line.

The client commands (:mod:`server.cli`) and the service's own (``serve``,
``hash-token``: :mod:`server.service.commands`) under one program. The client never
imports the service; this module, the program's entry point, is where the two meet.

Exit codes: 0 every file succeeded (or the command did what it was asked), 2 the batch
partially succeeded, 3 the batch failed or was cancelled, 1 the command itself failed
(bad usage, server unreachable, request refused), 130 interrupted, 141 the reader of its
output stopped reading (``pdfbatch list | head``), which ends it quietly.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from server.cli.commands import main as client_main
from server.service.commands import add_service_commands

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pdfbatch`` with ``argv`` (default: the process's); returns the exit code."""
    return client_main(argv, service_commands=add_service_commands)


if __name__ == "__main__":
    sys.exit(main())
