"""What a blob store holds on disk, files and rows alike, read from outside it."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from actors.storage.inline_blobs import DATABASE_NAME

__all__ = ["incoming_blobs", "stored_blobs"]


def stored_blobs(root: Path) -> list[Path]:
    """Every blob file, temporary file and database row under ``root``.

    A row of the small blobs' database is listed as a path that names it: a stored blob
    as ``ROOT/rows/DIGEST``, a blob being received as ``ROOT/rows/.incoming-row-ID`` (the
    prefix of temporary files). The database's own files are not listed: an empty list
    means nothing uploaded is left.
    """
    found = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(DATABASE_NAME)]
    database = root / DATABASE_NAME
    if database.exists():
        rows = root / "rows"
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
            if tables < {"blobs", "incoming"}:
                return sorted(found)  # being created: nothing stored in it yet
            found += [rows / d for (d,) in db.execute("SELECT digest FROM blobs")]
            found += [rows / f".incoming-row-{i}" for (i,) in db.execute("SELECT id FROM incoming")]
    return sorted(found)


def incoming_blobs(root: Path) -> list[Path]:
    """The uploads being received under ``root``: temporary files and incoming rows."""
    return [p for p in stored_blobs(root) if p.name.startswith(".incoming-")]
