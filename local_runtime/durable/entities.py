"""Entities: one batch of queued operations per invocation of the entity function (in a worker
process), its new state and the responses to calling orchestrations committed together; entity reads,
signals, listings and purges for clients.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from local_runtime.durable import history as h
from local_runtime.durable.core import (
    EngineCore,
    _Effects,
    _parse_entity_id,
    entity_scheduler_id,
    log,
)
from local_runtime.durable.workers import WorkerDied


class Entities(EngineCore):
    async def _entity_batch(self, entity_id: str) -> None:
        visible = self._visible(entity_id)
        if not visible:
            return
        name, key = _parse_entity_id(entity_id)
        fn = self.entities.get(name)
        self.stats["entity_batches"] += 1
        requests: list[dict[str, Any]] = []
        for item in visible:
            try:
                requests.append(json.loads(item.event.get("Input") or "{}"))
            except ValueError:
                requests.append({})
        state = self.db.get_entity(entity_id)
        results: list[dict[str, Any]]
        new_state = state
        if fn is None:
            err = json.dumps(
                f"The function '{name}' doesn't exist, is disabled, or is not an entity function."
            )
            results = [{"isError": True, "result": err} for _ in requests]
        else:
            batch = {
                "self": {"name": name, "key": key},
                "exists": state is not None,
                "state": state,
                "batch": [
                    {
                        "name": r.get("op"),
                        "input": json.dumps(r["input"]) if r.get("input") is not None else None,
                        "isSignal": bool(r.get("signal")),
                    }
                    for r in requests
                ],
            }
            try:
                ok, out = await self.workers.call("entity", fn.name, json.dumps(batch))
                if not ok:
                    raise RuntimeError(str(out[-1]))
                results = list(out.get("results") or [])
                new_state = out.get("entityState") if out.get("entityExists") else None
            except WorkerDied:
                raise  # the batch is processed again
            except Exception as exc:
                log.exception("durable: entity %s failed", entity_id)
                results = [
                    {"isError": True, "result": json.dumps(f"{type(exc).__name__}: {exc}")} for _ in requests
                ]
        fx = _Effects()
        ids = [i.id for i in visible]
        with self.db.transaction() as c:
            self.db.delete_inbox(c, ids)
            self.db.put_entity(c, entity_id, new_state, time.time())
            for i, r in enumerate(requests):
                if r.get("signal") or not r.get("parent"):
                    continue
                res = results[i] if i < len(results) else {"isError": True, "result": json.dumps("no result")}
                body: dict[str, Any] = {"result": res.get("result")}
                if res.get("isError"):
                    body["exceptionType"] = "Error"
                ev = h.event(h.EVENT_RAISED, h.utcnow(), Name=r.get("id"), Input=json.dumps(body))
                fx.inbox.append(self.db.add_inbox(c, r["parent"], r.get("parentExecution"), time.time(), ev))
        self._consume(entity_id, set(ids))
        self._apply(fx)

    def purge_entity(self, entity_id: str) -> bool:
        """Delete an entity (state and queued operations) by its `@name@key` id; False if unknown."""
        name, key = _parse_entity_id(entity_id) if entity_id.count("@") >= 2 else ("", "")
        eid = entity_scheduler_id(name, key) if name else entity_id
        if self.db.get_entity(eid) is None and eid not in self.inbox:
            return False
        with self.db.transaction() as c:
            self.db.put_entity(c, eid, None, time.time())
            self.db.delete_instance(c, eid)
        self.inbox.pop(eid, None)
        return True

    def signal_entity(self, name: str, key: str, op: str, input_text: str | None) -> None:
        msg = {"id": str(uuid.uuid4()), "op": op, "signal": True, "input": input_text}
        self._enqueue(
            entity_scheduler_id(name, key),
            None,
            h.event(h.EVENT_RAISED, h.utcnow(), Name="op", Input=json.dumps(msg)),
        )

    def entity_state(self, name: str, key: str) -> str | None:
        return self.db.get_entity(entity_scheduler_id(name, key))

    def list_entities(self, name: str | None) -> list[tuple[str, str, str, float]]:
        """(lower-cased name, key, state JSON, last operation time) of the entities named `name` (or all)."""
        out = []
        for eid, state, updated in self.db.list_entities(f"@{name.lower()}@" if name else "@"):
            n, k = _parse_entity_id(eid)
            out.append((n, k, state, updated))
        return out
