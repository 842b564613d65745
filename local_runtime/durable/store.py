"""The durable state in one SQLite file (WAL): instances, history, inboxes, activity work items, entities.

Every state change of the engine is one `transaction()`; a kill -9 at any point leaves either the whole
episode (or activity completion, or entity batch) or nothing of it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT,
    execution_id TEXT NOT NULL,
    status TEXT NOT NULL,
    input TEXT,
    output TEXT,
    custom_status TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    parent TEXT
);
CREATE INDEX IF NOT EXISTS instances_created ON instances (created, instance_id);
CREATE INDEX IF NOT EXISTS instances_status ON instances (status);
CREATE TABLE IF NOT EXISTS history (
    instance_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (instance_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL,
    execution_id TEXT,
    visible_at REAL NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_instance ON inbox (instance_id, id);
CREATE TABLE IF NOT EXISTS activities (
    instance_id TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    input TEXT,
    kind TEXT NOT NULL,
    PRIMARY KEY (instance_id, execution_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entities (
    entity_id TEXT PRIMARY KEY,
    state TEXT,
    updated REAL NOT NULL
);
"""


@dataclass
class InstanceRow:
    instance_id: str
    name: str
    version: str | None
    execution_id: str
    status: str
    input: str | None  # JSON text of the context `input` value
    output: str | None  # JSON text
    custom_status: str | None  # JSON text
    created: float
    updated: float
    parent: str | None  # JSON text of ParentInstance + TaskScheduleId


@dataclass
class InboxItem:
    id: int
    instance_id: str
    execution_id: str | None
    visible_at: float
    event: dict[str, Any]


@dataclass
class WorkItem:
    instance_id: str
    execution_id: str
    seq: int
    name: str
    input: str | None
    kind: str  # "activity" | "http"


class Store:
    """Thin typed access to the SQLite file; the engine owns all policy."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._check_intact(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a process kill (kill -9) without losing committed transactions; only an
        # OS crash or power loss can drop the last ones, as with any WAL database.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def _check_intact(self, path: Path) -> None:
        """Refuse a damaged history (a torn disk write, a file edited by hand): SQLite's quick_check
        reads every page once, so a bad page is found at start instead of when some instance touches it."""
        try:
            rows = self.db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        else:
            problems = [str(r[0]) for r in rows if str(r[0]) != "ok"]
        if problems:
            self.db.close()
            raise sqlite3.DatabaseError(
                f"{path} is damaged ({'; '.join(problems[:3])}): restore it from a backup, or move it "
                "away to start this state directory with an empty durable history"
            )

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- instances
    def put_instance(self, c: sqlite3.Connection, r: InstanceRow) -> None:
        c.execute(
            "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                r.instance_id,
                r.name,
                r.version,
                r.execution_id,
                r.status,
                r.input,
                r.output,
                r.custom_status,
                r.created,
                r.updated,
                r.parent,
            ),
        )

    def get_instance(self, instance_id: str) -> InstanceRow | None:
        row = self.db.execute("SELECT * FROM instances WHERE instance_id=?", (instance_id,)).fetchone()
        return InstanceRow(*row) if row else None

    def instances_with_status(self, statuses: tuple[str, ...]) -> list[InstanceRow]:
        marks = ",".join("?" * len(statuses))
        rows = self.db.execute(f"SELECT * FROM instances WHERE status IN ({marks})", statuses).fetchall()
        return [InstanceRow(*r) for r in rows]

    def query_instances(
        self,
        *,
        created_from: float | None,
        created_to: float | None,
        statuses: list[str] | None,
        prefix: str | None,
        limit: int | None,
        offset: int,
    ) -> list[InstanceRow]:
        where, args = self._filter(created_from, created_to, statuses, prefix)
        # instance id order, as the Azure Storage provider's Instances table (PartitionKey = instance id)
        sql = f"SELECT * FROM instances {where} ORDER BY instance_id"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]
        elif offset:
            sql += " LIMIT -1 OFFSET ?"
            args.append(offset)
        return [InstanceRow(*r) for r in self.db.execute(sql, args).fetchall()]

    @staticmethod
    def _filter(
        created_from: float | None, created_to: float | None, statuses: list[str] | None, prefix: str | None
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if created_from is not None:
            clauses.append("created >= ?")
            args.append(created_from)
        if created_to is not None:
            clauses.append("created <= ?")
            args.append(created_to)
        if statuses:
            clauses.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
        if prefix:
            clauses.append("substr(instance_id, 1, ?) = ?")
            args += [len(prefix), prefix]
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", args

    def delete_instance(self, c: sqlite3.Connection, instance_id: str) -> None:
        c.execute("DELETE FROM instances WHERE instance_id=?", (instance_id,))
        c.execute("DELETE FROM history WHERE instance_id=?", (instance_id,))
        c.execute("DELETE FROM inbox WHERE instance_id=?", (instance_id,))
        c.execute("DELETE FROM activities WHERE instance_id=?", (instance_id,))

    # ---- history
    def load_history(self, instance_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT event FROM history WHERE instance_id=? ORDER BY idx", (instance_id,))
        return [json.loads(r[0]) for r in rows]

    def append_history(
        self, c: sqlite3.Connection, instance_id: str, start_idx: int, events: list[dict[str, Any]]
    ) -> None:
        c.executemany(
            "INSERT INTO history VALUES (?,?,?)",
            [(instance_id, start_idx + i, json.dumps(e)) for i, e in enumerate(events)],
        )

    def history_length(self, instance_id: str) -> int:
        """How many events the instance's history holds (without parsing them)."""
        row = self.db.execute("SELECT COUNT(*) FROM history WHERE instance_id=?", (instance_id,)).fetchone()
        return int(row[0])

    def clear_history(self, c: sqlite3.Connection, instance_id: str) -> None:
        c.execute("DELETE FROM history WHERE instance_id=?", (instance_id,))

    # ---- inbox
    def add_inbox(
        self,
        c: sqlite3.Connection,
        instance_id: str,
        execution_id: str | None,
        visible_at: float,
        event: dict[str, Any],
    ) -> InboxItem:
        cur = c.execute(
            "INSERT INTO inbox (instance_id, execution_id, visible_at, event) VALUES (?,?,?,?)",
            (instance_id, execution_id, visible_at, json.dumps(event)),
        )
        return InboxItem(int(cur.lastrowid or 0), instance_id, execution_id, visible_at, event)

    def delete_inbox(self, c: sqlite3.Connection, ids: list[int]) -> None:
        c.executemany("DELETE FROM inbox WHERE id=?", [(i,) for i in ids])

    def all_inbox(self) -> list[InboxItem]:
        rows = self.db.execute(
            "SELECT id, instance_id, execution_id, visible_at, event FROM inbox ORDER BY id"
        )
        return [InboxItem(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    # ---- activities
    def add_work(self, c: sqlite3.Connection, w: WorkItem) -> None:
        c.execute(
            "INSERT OR REPLACE INTO activities VALUES (?,?,?,?,?,?)",
            (w.instance_id, w.execution_id, w.seq, w.name, w.input, w.kind),
        )

    def delete_work(self, c: sqlite3.Connection, w: WorkItem) -> bool:
        cur = c.execute(
            "DELETE FROM activities WHERE instance_id=? AND execution_id=? AND seq=?",
            (w.instance_id, w.execution_id, w.seq),
        )
        return cur.rowcount > 0

    def delete_execution_work(self, c: sqlite3.Connection, instance_id: str, execution_id: str) -> None:
        """Forget the queued work of one execution (terminated, continued as new, failed)."""
        c.execute(
            "DELETE FROM activities WHERE instance_id=? AND execution_id=?", (instance_id, execution_id)
        )

    def all_work(self) -> list[WorkItem]:
        rows = self.db.execute("SELECT instance_id, execution_id, seq, name, input, kind FROM activities")
        return [WorkItem(*r) for r in rows]

    # ---- entities
    def get_entity(self, entity_id: str) -> str | None:
        row = self.db.execute("SELECT state FROM entities WHERE entity_id=?", (entity_id,)).fetchone()
        return None if row is None else row[0]

    def put_entity(self, c: sqlite3.Connection, entity_id: str, state: str | None, now: float) -> None:
        if state is None:
            c.execute("DELETE FROM entities WHERE entity_id=?", (entity_id,))
        else:
            c.execute("INSERT OR REPLACE INTO entities VALUES (?,?,?)", (entity_id, state, now))

    def list_entities(self, prefix: str) -> list[tuple[str, str, float]]:
        """(entity id, state JSON, time of the last operation) of the entities whose id starts with prefix."""
        rows = self.db.execute(
            "SELECT entity_id, state, updated FROM entities WHERE substr(entity_id, 1, ?) = ? "
            "ORDER BY entity_id",
            (len(prefix), prefix),
        )
        return [(r[0], r[1], r[2]) for r in rows]
