"""What every part of the durable engine shares: the instance states, `DurableError`, the in-memory
mirror of SQLite (instances, inboxes, ready set, activity queue) kept in step after each COMMIT, and
`EngineCore`, the state all the Engine's parts work on. `Store` is the one place SQL is written."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from local_runtime.durable import history as h
from local_runtime.durable.store import InboxItem, InstanceRow, Store, WorkItem
from local_runtime.durable.workers import WorkerPool
from local_runtime.indexing import FunctionInfo

log = logging.getLogger("local_runtime.durable")

PENDING, RUNNING, COMPLETED, FAILED, TERMINATED, SUSPENDED = (
    "Pending",
    "Running",
    "Completed",
    "Failed",
    "Terminated",
    "Suspended",
)
TERMINAL = (COMPLETED, FAILED, TERMINATED)
POISON_LIMIT = 5  # host-side processing failures of one instance before it is failed (maxDequeueCount)
MAX_COALESCE = 0.5  # seconds; upper bound of the completion-batching wait (see Engine.__init__)
# DTFx OrchestrationStatus numbers used in ExecutionCompleted.OrchestrationStatus
_STATUS_NUM = {COMPLETED: 1, FAILED: 3, TERMINATED: 5}


class DurableError(Exception):
    """A client request the engine refuses; `status` is the HTTP status the real host answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Instance:
    row: InstanceRow
    history: list[h.Event] | None = None
    played: int = 0  # history[:played] already carries IsPlayed=True


@dataclass
class _Effects:
    """What one transaction produced, applied to memory after COMMIT."""

    inbox: list[InboxItem] = field(default_factory=list)
    work: list[WorkItem] = field(default_factory=list)
    created: list[Instance] = field(default_factory=list)  # new instances (their old inbox is gone)


def entity_scheduler_id(name: str, key: str) -> str:
    return f"@{name.lower()}@{key}"


def _parse_entity_id(entity_id: str) -> tuple[str, str]:
    _, name, key = entity_id.split("@", 2)
    return name, key


class EngineCore:
    """The engine's state and its memory mirror; the parts (scheduling, episodes, activities,
    entities, client operations) are mixins over it, composed in `engine.Engine`."""

    def __init__(
        self,
        *,
        functions: list[FunctionInfo],
        db_path: Path,
        max_activities: int,
        workers: WorkerPool,
        max_orchestrators: int = 10,
        function_timeout: float | None = None,
        coalesce_window: float = 0.02,
        own_workers: bool = True,
    ) -> None:
        self.orchestrators: dict[str, FunctionInfo] = {}
        self.activities: dict[str, FunctionInfo] = {}
        self.entities: dict[str, FunctionInfo] = {}
        for f in functions:
            key = (f.durable_name or f.name).lower()
            if f.trigger_type == "orchestrationTrigger":
                self.orchestrators[key] = f
            elif f.trigger_type == "activityTrigger":
                self.activities[key] = f
            elif f.trigger_type == "entityTrigger":
                self.entities[key] = f
        self.db_path = db_path
        self.workers = workers
        self.own_workers = own_workers  # False: the host's pool, stopped by the host after its HTTP server
        self.max_activities = max(1, max_activities)
        self.max_orchestrators = max(1, max_orchestrators)
        self.function_timeout = function_timeout
        self.running: set[str] = set()  # instances whose episode (or entity batch) is being processed
        self.slots: asyncio.Semaphore | None = None
        self.episodes: set[asyncio.Task[None]] = set()
        self.store: Store | None = None
        self.instances: dict[str, Instance] = {}
        self.inbox: dict[str, list[InboxItem]] = {}
        self.ready: OrderedDict[str, None] = OrderedDict()
        self.work_q: asyncio.Queue[WorkItem] = asyncio.Queue()
        self.completions: list[tuple[WorkItem, h.Event]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.wake = asyncio.Event()
        self.stopping = False
        self.in_flight = 0
        self.http: aiohttp.ClientSession | None = None
        self.flush_scheduled = False
        self.timer_handles: dict[int, asyncio.TimerHandle] = {}
        # Completion batching: an instance that still has activities queued or running waits for more
        # completions, so that a fan-out replays a few times, not once per result. The wait is
        # `coalesce_window`, or twice the instance's last replay if that is longer (replay is O(history):
        # a 1000-activity fan-out must not spend its time replaying), capped at MAX_COALESCE.
        self.coalesce_window = coalesce_window
        self.replay_cost: dict[str, float] = {}
        self.stats = {"episodes": 0, "activities": 0, "entity_batches": 0}
        self.outstanding: dict[str, int] = {}
        self.deferred: dict[str, asyncio.TimerHandle] = {}
        self.failures: dict[str, int] = {}  # consecutive host-side processing failures per instance

    @property
    def db(self) -> Store:
        assert self.store is not None, "durable engine not started"
        return self.store

    def _add_inbox_mem(self, item: InboxItem, coalesce: bool = False) -> None:
        iid = item.instance_id
        self.inbox.setdefault(iid, []).append(item)
        delay = item.visible_at - time.time()
        if delay > 0:
            loop = asyncio.get_running_loop()
            self.timer_handles[item.id] = loop.call_later(delay, self._timer_due, item.id, iid)
        elif coalesce and self.outstanding.get(iid, 0) > 0 and self.coalesce_window > 0:
            if iid not in self.deferred:
                loop = asyncio.get_running_loop()
                window = min(MAX_COALESCE, max(self.coalesce_window, 2 * self.replay_cost.get(iid, 0.0)))
                self.deferred[iid] = loop.call_later(window, self._mark_ready, iid)
        else:
            self._mark_ready(iid)

    def _queue_work(self, items: list[WorkItem]) -> None:
        for w in items:
            self.outstanding[w.instance_id] = self.outstanding.get(w.instance_id, 0) + 1
            self.work_q.put_nowait(w)

    def _timer_due(self, item_id: int, instance_id: str) -> None:
        self.timer_handles.pop(item_id, None)
        self._mark_ready(instance_id)

    def _mark_ready(self, instance_id: str) -> None:
        handle = self.deferred.pop(instance_id, None)
        if handle is not None:
            handle.cancel()
        self.ready[instance_id] = None
        self.wake.set()

    def _apply(self, fx: _Effects, coalesce: bool = False) -> None:
        for inst in fx.created:
            iid = inst.row.instance_id
            self.inbox.pop(iid, None)
            self.instances[iid] = inst
        for item in fx.inbox:
            self._add_inbox_mem(item, coalesce)
        self._queue_work(fx.work)

    def _visible(self, iid: str) -> list[InboxItem]:
        items = self.inbox.get(iid)
        if not items:
            return []
        now = time.time()
        return [i for i in items if i.visible_at <= now]

    def _consume(self, iid: str, ids: set[int]) -> None:
        items = self.inbox.get(iid)
        if items is None:
            return
        rest = [i for i in items if i.id not in ids]
        if rest:
            self.inbox[iid] = rest
        else:
            del self.inbox[iid]

    def _instance(self, iid: str) -> Instance | None:
        inst = self.instances.get(iid)
        if inst is None:
            row = self.db.get_instance(iid)
            if row is None:
                return None
            inst = Instance(row)
            self.instances[iid] = inst
        return inst

    def _history(self, inst: Instance) -> list[h.Event]:
        if inst.history is None:
            inst.history = self.db.load_history(inst.row.instance_id)
        for e in inst.history[inst.played :]:
            e["IsPlayed"] = True
        inst.played = len(inst.history)
        return inst.history

    def status_row(self, iid: str) -> InstanceRow | None:
        inst = self.instances.get(iid)
        return inst.row if inst else self.db.get_instance(iid)

    def _enqueue(self, iid: str, execution_id: str | None, event: h.Event) -> None:
        fx = _Effects()
        with self.db.transaction() as c:
            fx.inbox.append(self.db.add_inbox(c, iid, execution_id, time.time(), event))
        self._apply(fx)

    # ---- defined by the parts (mixins) of Engine
    def _create(
        self,
        c: Any,
        name: str,
        instance_id: str,
        input_value: Any,
        version: str | None,
        parent: dict[str, Any] | None,
        fx: _Effects,
        *,
        replace: bool,
    ) -> InstanceRow:
        raise NotImplementedError  # defined by a mixin of Engine

    async def _entity_batch(self, entity_id: str) -> None:
        raise NotImplementedError  # defined by a mixin of Engine

    async def _episode(self, iid: str) -> None:
        raise NotImplementedError  # defined by a mixin of Engine

    def _notify_parent(
        self, c: Any, row: InstanceRow, *, failed: bool, result: str | None, reason: str | None, fx: _Effects
    ) -> None:
        raise NotImplementedError  # defined by a mixin of Engine
