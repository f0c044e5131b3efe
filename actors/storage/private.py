"""Directories that only the service's user can use.

Below the data directory lie the documents' text (the database), their names and the
SHA-256 of every upload (blob names: listing them confirms that a known document was
uploaded), so no other local user may even list them.
"""

from __future__ import annotations

import stat
from pathlib import Path

__all__ = ["PRIVATE_MODE", "private_directory"]

PRIVATE_MODE = 0o700


def private_directory(path: Path) -> None:
    """Make ``path`` (and its missing parents) a directory only its owner can use.

    A directory made by an earlier version, readable by others, is closed too.
    """
    path.mkdir(mode=PRIVATE_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE_MODE:
        path.chmod(PRIVATE_MODE)
