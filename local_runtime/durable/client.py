"""Client operations: what the durable HTTP API asks of the engine (start, status, history, events,
terminate/suspend/resume, restart, rewind, purge, queries); `DurableError` carries the refusal's HTTP status.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from local_runtime.durable import history as h
from local_runtime.durable.core import (
    FAILED,
    RUNNING,
    TERMINAL,
    DurableError,
    EngineCore,
    _Effects,
)
from local_runtime.durable.store import InstanceRow, WorkItem


class ClientOperations(EngineCore):
    def start_new(self, name: str, instance_id: str | None, input_value: Any, version: str | None) -> str:
        fn = self.orchestrators.get(name.lower())
        if fn is None:
            raise DurableError(
                400, f"The function '{name}' doesn't exist, is disabled, or is not an orchestrator function."
            )
        iid = instance_id or uuid.uuid4().hex
        if iid.startswith("@"):
            raise DurableError(400, f"Orchestration instance ids must not start with @: '{iid}'.")
        fx = _Effects()
        with self.db.transaction() as c:
            self._create(c, fn.durable_name or fn.name, iid, input_value, version, None, fx, replace=False)
        self._apply(fx)
        return iid

    def history_of(self, iid: str) -> list[h.Event]:
        inst = self.instances.get(iid)
        if inst is not None and inst.history is not None:
            return list(inst.history)
        return self.db.load_history(iid)

    def raise_event(self, iid: str, name: str, input_text: str) -> None:
        row = self._require(iid)
        if row.status in TERMINAL:
            raise DurableError(410, f"Instance '{iid}' is {row.status}; it no longer accepts events.")
        self._enqueue(iid, None, h.event(h.EVENT_RAISED, h.utcnow(), Name=name, Input=input_text))

    def control(self, iid: str, op: str, reason: str | None) -> None:
        row = self._require(iid)
        if row.status in TERMINAL:
            raise DurableError(410, f"Instance '{iid}' is already {row.status}.")
        self._enqueue(iid, None, {"__control__": op, "reason": reason})

    def _require(self, iid: str) -> InstanceRow:
        row = self.status_row(iid)
        if row is None:
            raise DurableError(404, f"No instance with ID '{iid}' found.")
        return row

    def restart(self, iid: str, new_id: bool) -> str:
        row = self._require(iid)
        target = uuid.uuid4().hex if new_id else iid
        if not new_id and row.status not in TERMINAL:
            # OrchestrationAlreadyExistsException on the real host
            raise DurableError(409, "A non-terminal instance with this instance ID already exists.")
        fx = _Effects()
        with self.db.transaction() as c:
            self._create(
                c,
                row.name,
                target,
                json.loads(row.input) if row.input else None,
                row.version,
                None,
                fx,
                replace=not new_id,
            )
        self._apply(fx)
        return target

    def rewind(self, iid: str, reason: str | None) -> None:
        """Re-run the failed activities and sub-orchestrations of a Failed instance (DTFx rewind)."""
        row = self._require(iid)
        if row.status != FAILED:
            raise DurableError(
                412,
                f"This orchestration has status {row.status}, but only orchestrations in the "
                '"Failed" state can be rewound.',
            )
        fx = _Effects()
        with self.db.transaction() as c:
            self._rewind(c, iid, reason, fx)
        self._apply(fx)

    def _rewind(self, c: Any, iid: str, reason: str | None, fx: _Effects) -> None:
        inst = self._instance(iid)
        assert inst is not None
        row = inst.row
        hist = self._history(inst)
        scheduled = {
            e["EventId"]: e for e in hist if e["EventType"] in (h.TASK_SCHEDULED, h.SUB_ORCHESTRATION_CREATED)
        }
        keep: list[h.Event] = []
        for e in hist:
            t = e["EventType"]
            if t == h.EXECUTION_COMPLETED:
                continue
            if t == h.TASK_FAILED and e["TaskScheduledId"] in scheduled:
                s = scheduled[e["TaskScheduledId"]]
                w = WorkItem(iid, row.execution_id, s["EventId"], s["Name"], s.get("Input"), "activity")
                self.db.add_work(c, w)
                fx.work.append(w)
                continue
            if t == h.SUB_ORCHESTRATION_FAILED and e["TaskScheduledId"] in scheduled:
                child = self.status_row(scheduled[e["TaskScheduledId"]]["InstanceId"])
                if child is not None and child.status == FAILED:
                    self._rewind(c, child.instance_id, reason, fx)
                    continue
            keep.append(e)
        # an episode replays the rewound history: it waits for the re-run work, or fails again if the
        # orchestrator code itself raised
        wake = h.event(h.GENERIC_EVENT, h.utcnow(), Data=f"Rewound: {reason or ''}")
        fx.inbox.append(self.db.add_inbox(c, iid, row.execution_id, time.time(), wake))
        self.db.clear_history(c, iid)
        self.db.append_history(c, iid, 0, keep)
        row.status, row.output, row.updated = RUNNING, None, time.time()
        self.db.put_instance(c, row)
        inst.history = keep
        inst.played = 0
        self.instances[iid] = inst

    def purge(self, iid: str) -> int:
        row = self.status_row(iid)
        if row is None or row.status not in TERMINAL:
            return 0
        with self.db.transaction() as c:
            self.db.delete_instance(c, iid)
        self.instances.pop(iid, None)
        self.inbox.pop(iid, None)
        return 1

    def purge_by(self, created_from: float, created_to: float | None, statuses: list[str] | None) -> int:
        wanted = [s for s in (statuses or list(TERMINAL)) if s in TERMINAL]
        if not wanted:
            return 0
        rows = self.db.query_instances(
            created_from=created_from,
            created_to=created_to,
            statuses=wanted,
            prefix=None,
            limit=None,
            offset=0,
        )
        with self.db.transaction() as c:
            for r in rows:
                self.db.delete_instance(c, r.instance_id)
        for r in rows:
            self.instances.pop(r.instance_id, None)
            self.inbox.pop(r.instance_id, None)
        return len(rows)

    def query(
        self,
        *,
        created_from: float | None,
        created_to: float | None,
        statuses: list[str] | None,
        prefix: str | None,
        top: int | None,
        token: str | None,
    ) -> tuple[list[InstanceRow], str | None]:
        offset = 0
        if token:
            try:
                offset = int(base64.b64decode(token.encode()).decode())
            except ValueError as exc:
                raise DurableError(400, "x-ms-continuation-token is not a token this host issued.") from exc
        rows = self.db.query_instances(
            created_from=created_from,
            created_to=created_to,
            statuses=statuses,
            prefix=prefix,
            limit=top,
            offset=offset,
        )
        rows = [self.instances[r.instance_id].row if r.instance_id in self.instances else r for r in rows]
        next_token = None
        if top is not None and len(rows) == top:
            next_token = base64.b64encode(str(offset + top).encode()).decode()
        return rows, next_token
