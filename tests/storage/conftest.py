"""The store every contract test of ``tests/storage`` runs against: the memory store and
the SQLite store, each fresh. A module that needs another store defines its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.storage.sqlite_store import SQLiteStore
from actors.storage.store import MemoryStore, Store


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    opened = SQLiteStore(tmp_path / "db.sqlite3")
    yield opened
    opened.close()
