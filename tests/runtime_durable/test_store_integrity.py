"""The durable store refuses a damaged history file at open, naming it and what to do (instead of
starting and failing later, or serving garbage)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from local_runtime.durable.store import Store


def test_a_damaged_history_file_is_refused_at_open(tmp_path: Path) -> None:
    db = tmp_path / "durable.sqlite"
    store = Store(db)
    with store.transaction() as c:
        for i in range(400):  # a few pages of rows, so that a page in the middle holds data
            c.execute("CREATE TABLE IF NOT EXISTS filler (k INTEGER PRIMARY KEY, v TEXT)")
            c.execute("INSERT INTO filler (v) VALUES (?)", ("x" * 200 + str(i),))
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    Store(db).close()  # intact: opens
    with db.open("r+b") as fh:
        fh.seek(4096 * 2)
        fh.write(b"\xde\xad\xbe\xef" * 1024)
    with pytest.raises(sqlite3.DatabaseError) as info:
        Store(db)
    assert str(db) in str(info.value)
    assert "restore it from a backup" in str(info.value)
