"""The durable engine: episodes, activity workers, timers, sub-orchestrations and entities over SQLite.

One asyncio loop owns all state. An instance runs one episode at a time and each episode takes *all*
visible inbox events of the instance at once (never one replay per completion); up to
`maxConcurrentOrchestratorFunctions` instances are processed at once. User code runs in worker processes
(`workers.WorkerPool`); `maxConcurrentActivityFunctions` activities run at once and their completions are
committed in batches. Errors: `DurableError` (bad request from a client, carries an HTTP status) is the
only exception this module raises to callers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from local_runtime.durable import calls
from local_runtime.durable import history as h
from local_runtime.durable.replay import (
    NON_DETERMINISTIC,
    Decision,
    NonDeterminismError,
    ReplayError,
    replay_actions,
)
from local_runtime.durable.store import InboxItem, InstanceRow, Store, WorkItem
from local_runtime.durable.workers import FunctionTimeout, WorkerDied, WorkerPool
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
HTTP_POLL_DEFAULT = 30.0  # seconds between call_http 202 polls without Retry-After (the extension's default)
POISON_LIMIT = 5  # host-side processing failures of one instance before it is failed (maxDequeueCount)
HTTP_REQUEST_TIMEOUT = 100.0  # seconds per call_http request (HttpClient's default)
HTTP_POLL_MAX = 300.0  # longest Retry-After honoured between call_http polls
HTTP_POLL_LIMIT = 24 * 3600.0  # call_http polling without a timeout or functionTimeout ends after a day
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


def _seconds(value: Any) -> float | None:
    """A DurableHttpRequest timeout: seconds, or a TimeSpan text ("00:01:30")."""
    if isinstance(value, int | float) and value > 0:
        return float(value)
    if isinstance(value, str) and value.count(":") == 2:
        try:
            hh, mm, ss = value.split(":")
            total = int(hh) * 3600 + int(mm) * 60 + float(ss)
        except ValueError:
            return None
        return total if total > 0 else None
    return None


def entity_scheduler_id(name: str, key: str) -> str:
    return f"@{name.lower()}@{key}"


def _parse_entity_id(entity_id: str) -> tuple[str, str]:
    _, name, key = entity_id.split("@", 2)
    return name, key


class Engine:
    """Runs every durable instance of one task hub; all public methods run on the event loop."""

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

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.store = Store(self.db_path)
        await self.workers.start()
        self.slots = asyncio.Semaphore(self.max_orchestrators)
        for item in self.store.all_inbox():
            self._add_inbox_mem(item)
        # recovered work items may run again if they were mid-flight at the crash (QUIRKS.md)
        self._queue_work(self.store.all_work())
        self.tasks.append(asyncio.create_task(self._dispatch_loop(), name="durable-dispatch"))
        for i in range(self.max_activities):
            self.tasks.append(asyncio.create_task(self._activity_worker(), name=f"durable-activity-{i}"))
        self.wake.set()

    async def stop(self, grace: float = 5.0) -> None:
        self.stopping = True
        self.wake.set()
        deadline = time.monotonic() + grace
        while (self.in_flight or self.episodes) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        everything = [*self.tasks, *self.episodes]
        for t in everything:
            t.cancel()
        for t in everything:
            try:
                await t
            except (asyncio.CancelledError, Exception) as exc:
                log.debug("durable: task ended with %r at stop", exc)
        self.tasks.clear()
        if self.completions and self.store is not None:
            self._flush_completions()
        for handle in [*self.timer_handles.values(), *self.deferred.values()]:
            handle.cancel()
        self.timer_handles.clear()
        self.deferred.clear()
        await self.workers.stop()
        if self.http is not None:
            await self.http.close()
        if self.store is not None:
            self.store.close()
            self.store = None

    @property
    def db(self) -> Store:
        assert self.store is not None, "durable engine not started"
        return self.store

    # ------------------------------------------------------------------ inbox (memory mirror)
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

    # ------------------------------------------------------------------ dispatch
    async def _dispatch_loop(self) -> None:
        """Start an episode (or entity batch) for every ready instance not already being processed, at
        most `maxConcurrentOrchestratorFunctions` at once; one instance is never processed twice at once."""
        assert self.slots is not None
        while not self.stopping:
            await self.wake.wait()
            self.wake.clear()
            while not self.stopping:
                iid = next((i for i in self.ready if i not in self.running), None)
                if iid is None:
                    break  # the rest are being processed: their end wakes this loop
                await self.slots.acquire()
                if self.stopping:
                    self.slots.release()
                    break
                if iid not in self.ready or iid in self.running:  # consumed while waiting for a slot
                    self.slots.release()
                    continue
                del self.ready[iid]
                self.running.add(iid)
                task = asyncio.create_task(self._process(iid), name=f"durable:{iid}")
                self.episodes.add(task)
                task.add_done_callback(self.episodes.discard)

    async def _process(self, iid: str) -> None:
        assert self.slots is not None
        try:
            if iid.startswith("@"):
                await self._entity_batch(iid)
            else:
                t0 = time.perf_counter()
                await self._episode(iid)
                if iid in self.outstanding:
                    self.replay_cost[iid] = time.perf_counter() - t0
                else:
                    self.replay_cost.pop(iid, None)
        except Exception as exc:
            self._processing_failed(iid, exc)
        else:
            self.failures.pop(iid, None)
        finally:
            self.running.discard(iid)
            self.slots.release()
            if iid in self.ready:
                self.wake.set()

    def _processing_failed(self, iid: str, exc: Exception) -> None:
        """A host-side error (not user code) while processing `iid`: the transaction rolled back. Retry
        with back-off; after POISON_LIMIT attempts the instance fails (an entity drops the batch), as a
        poison message would on Azure, instead of being retried forever."""
        self.instances.pop(iid, None)  # forget what memory may have changed, reload from SQLite
        n = self.failures.get(iid, 0) + 1
        self.failures[iid] = n
        loop = asyncio.get_running_loop()
        if n < POISON_LIMIT and isinstance(exc, WorkerDied):  # collateral of a recycled or killed worker
            log.warning("durable: %s: %s (attempt %d of %d); retrying", iid, exc, n, POISON_LIMIT)
            loop.call_later(min(30.0, 0.25 * 2**n), self._mark_ready, iid)
            return
        if n < POISON_LIMIT:
            log.exception("durable: processing %s failed (attempt %d of %d); retrying", iid, n, POISON_LIMIT)
            loop.call_later(min(30.0, 0.25 * 2**n), self._mark_ready, iid)
            return
        log.error("durable: processing %s failed %d times; giving up on it", iid, n, exc_info=exc)
        try:
            self._poison(iid, f"{type(exc).__name__}: {exc}")
            self.failures.pop(iid, None)
        except Exception:
            log.exception("durable: could not record the failure of %s; retrying in 60 s", iid)
            self.instances.pop(iid, None)
            loop.call_later(60.0, self._mark_ready, iid)

    def _poison(self, iid: str, error: str) -> None:
        visible = self._visible(iid)
        ids = [i.id for i in visible]
        fx = _Effects()
        inst = None if iid.startswith("@") else self._instance(iid)
        with self.db.transaction() as c:
            self.db.delete_inbox(c, ids)
            if inst is not None and inst.row.status not in TERMINAL:
                row = inst.row
                message = f"The host could not process this instance after {POISON_LIMIT} attempts: {error}"
                done = h.event(
                    h.EXECUTION_COMPLETED,
                    h.utcnow(),
                    OrchestrationStatus=_STATUS_NUM[FAILED],
                    Result=json.dumps(message),
                    FailureDetails={"ErrorType": "PoisonMessage", "ErrorMessage": message},
                )
                # history may be what cannot be read: append without parsing it
                self.db.append_history(c, iid, self.db.history_length(iid), [done])
                self.db.delete_execution_work(c, iid, row.execution_id)
                row.status, row.output, row.updated = FAILED, json.dumps(message), time.time()
                self.db.put_instance(c, row)
                self._notify_parent(c, row, failed=True, result=None, reason=message, fx=fx)
        self._consume(iid, set(ids))
        self.instances.pop(iid, None)
        self._apply(fx)

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

    # ------------------------------------------------------------------ episodes
    async def _episode(self, iid: str) -> None:
        await self._episode_once(iid)
        inst = self.instances.get(iid)
        if inst is None:
            return
        if inst.row.status in TERMINAL:
            self.instances.pop(iid, None)  # finished instances live in SQLite only
        elif inst.row.status != SUSPENDED and self._visible(iid):
            self._mark_ready(iid)  # events held during a suspension, released by a resume in this batch

    async def _episode_once(self, iid: str) -> None:
        visible = self._visible(iid)
        if not visible:
            return
        inst = self._instance(iid)
        if inst is None:  # purged: drop whatever was still addressed to it
            ids = [i.id for i in visible]
            with self.db.transaction() as c:
                self.db.delete_inbox(c, ids)
            self._consume(iid, set(ids))
            return
        row = inst.row
        consumed: list[int] = []
        events: list[h.Event] = []  # in arrival order: a suspend lands after what came before it
        replay = False
        terminate_reason: str | None = None
        status = row.status
        for item in visible:
            e = item.event
            control = e.get("__control__")
            if item.execution_id is not None and item.execution_id != row.execution_id:
                consumed.append(item.id)  # stale: an earlier execution's completion
                continue
            if status in TERMINAL:
                consumed.append(item.id)
                continue
            if control == h.CONTROL_TERMINATE:
                consumed.append(item.id)
                terminate_reason = e.get("reason")
                break
            if control == h.CONTROL_SUSPEND:
                consumed.append(item.id)
                if status != SUSPENDED:
                    status = SUSPENDED
                    events.append(h.event(h.EXECUTION_SUSPENDED, h.utcnow(), Reason=e.get("reason")))
                continue
            if control == h.CONTROL_RESUME:
                consumed.append(item.id)
                if status == SUSPENDED:
                    status = RUNNING
                    events.append(h.event(h.EXECUTION_RESUMED, h.utcnow(), Reason=e.get("reason")))
                continue
            if status == SUSPENDED:
                continue  # held until resume
            consumed.append(item.id)
            events.append(e)
            replay = True
        if terminate_reason is not None or status in TERMINAL:
            if terminate_reason is not None and status not in TERMINAL:
                self._terminate_now(inst, consumed, events, terminate_reason)
            else:
                with self.db.transaction() as c:
                    self.db.delete_inbox(c, consumed)
                self._consume(iid, set(consumed))
            return
        if not replay:
            # only control events: record them, no replay
            hist = self._history(inst)
            with self.db.transaction() as c:
                self.db.delete_inbox(c, consumed)
                if events:
                    self.db.append_history(c, iid, len(hist), events)
                row.status = status if status != PENDING else row.status
                row.updated = time.time()
                self.db.put_instance(c, row)
            hist.extend(events)
            self._consume(iid, set(consumed))
            return
        await self._replay(inst, consumed, events, suspended=status == SUSPENDED)

    def _terminate_now(
        self, inst: Instance, consumed: list[int], events: list[h.Event], reason: str | None
    ) -> None:
        row = inst.row
        hist = self._history(inst)
        now = h.utcnow()
        out = json.dumps(reason)
        added = [
            *events,
            h.event(h.EXECUTION_TERMINATED, now, Input=reason),
            h.event(h.EXECUTION_COMPLETED, now, OrchestrationStatus=_STATUS_NUM[TERMINATED], Result=out),
        ]
        fx = _Effects()
        with self.db.transaction() as c:
            self.db.delete_inbox(c, consumed)
            self.db.append_history(c, row.instance_id, len(hist), added)
            self.db.delete_execution_work(c, row.instance_id, row.execution_id)
            row.status, row.output, row.updated = TERMINATED, out, time.time()
            self.db.put_instance(c, row)
            self._notify_parent(
                c, row, failed=True, result=None, reason=f"Orchestration terminated: {reason}", fx=fx
            )
        hist.extend(added)
        self._consume(row.instance_id, set(consumed))
        self._apply(fx)

    async def _replay(
        self, inst: Instance, consumed: list[int], new_events: list[h.Event], *, suspended: bool = False
    ) -> None:
        row = inst.row
        iid = row.instance_id
        hist = self._history(inst)
        now = h.utcnow()
        self.stats["episodes"] += 1
        episode = [h.event(h.ORCHESTRATOR_STARTED, now), *new_events]
        full = hist + episode
        parent = json.loads(row.parent) if row.parent else None
        ctx = {
            "history": full,
            "input": json.loads(row.input) if row.input is not None else None,
            "instanceId": iid,
            "isReplaying": bool(hist),
            "parentInstanceId": parent["OrchestrationInstance"]["InstanceId"] if parent else None,
            "upperSchemaVersion": 1,
            "upperSchemaVersionNew": 2,
        }
        fn = self.orchestrators.get(row.name.lower())
        error: str | None
        if fn is None:
            state: dict[str, Any] = {}
            error = (
                f"The function '{row.name}' doesn't exist, is disabled, or is not an orchestrator function."
            )
        else:
            state, error = await self._run_orchestrator(fn, json.dumps(ctx))
        actions: list[Any] = []
        for group in state.get("actions") or []:
            actions.extend(group if isinstance(group, list) else [group])
        decisions: list[Decision] = []
        can_input: str | None = None
        did_can = False
        error_type = "OrchestrationFailureException"
        try:
            result = replay_actions(actions, full, now)
            decisions, can_input, did_can = (
                result.decisions,
                result.continue_as_new,
                result.did_continue_as_new,
            )
        except NonDeterminismError as exc:
            # DTFx finds it while replaying, before the code could fail on the wrong result; a code error
            # with a *missing* task only means the code stopped early
            if error is None or not exc.missing:
                error, error_type = str(exc), NON_DETERMINISTIC
        except ReplayError as exc:
            error = error or str(exc)
        if error_type == NON_DETERMINISTIC:
            decisions = [d for d in decisions if d.kind == "entity" and d.signal]
        else:
            # the shim processes the actions an episode yielded (fire-and-forget ones included) before it
            # fails the instance; a call of an unknown function fails it at that call
            for i, d in enumerate(decisions):
                problem = self._check_decision(row, d)
                if problem:
                    error = error or problem
                    decisions = decisions[:i]
                    break
        fx = _Effects()
        added: list[h.Event] = list(episode)
        with self.db.transaction() as c:
            self.db.delete_inbox(c, consumed)
            if "customStatus" in state:
                row.custom_status = json.dumps(state["customStatus"])
            for d in decisions:
                ev = self._decide(c, row, d, now, fx)
                if ev is not None:
                    added.append(ev)
            added.append(h.event(h.ORCHESTRATOR_COMPLETED, now))
            row.updated = time.time()
            if error is not None:
                # NonDeterministicOrchestrationException reaches the status as its own message, as on Azure
                message = (
                    error
                    if error_type == NON_DETERMINISTIC
                    else f"Orchestrator function '{row.name}' failed: {error}"
                )
                added.append(
                    h.event(
                        h.EXECUTION_COMPLETED,
                        now,
                        OrchestrationStatus=_STATUS_NUM[FAILED],
                        Result=json.dumps(message),
                        FailureDetails={"ErrorType": error_type, "ErrorMessage": message},
                    )
                )
                row.status, row.output = FAILED, json.dumps(message)
                log.warning("durable: orchestration %s (%s) failed: %s", row.name, iid, error)
                self._notify_parent(c, row, failed=True, result=None, reason=message, fx=fx)
            elif state.get("isDone") and did_can:
                self._continue_as_new(c, inst, can_input, fx)
                added = []
            elif state.get("isDone"):
                output = state.get("output")
                out_text = json.dumps(output)
                added.append(
                    h.event(
                        h.EXECUTION_COMPLETED,
                        now,
                        OrchestrationStatus=_STATUS_NUM[COMPLETED],
                        Result=out_text,
                    )
                )
                row.status, row.output = COMPLETED, out_text
                log.info("durable: orchestration %s (%s) completed", row.name, iid)
                self._notify_parent(c, row, failed=False, result=out_text, reason=None, fx=fx)
            else:
                row.status = SUSPENDED if suspended else RUNNING
            if added:
                self.db.append_history(c, iid, len(hist), added)
            self.db.put_instance(c, row)
        if added:
            hist.extend(added)
        self._consume(iid, set(consumed))
        if row.status in TERMINAL:
            self.instances.pop(iid, None)
        self._apply(fx)

    def _check_decision(self, row: InstanceRow, d: Decision) -> str | None:
        if d.kind == "activity" and d.name.lower() not in self.activities:
            return f"The function '{d.name}' doesn't exist, is disabled, or is not an activity function."
        if d.kind == "suborchestration":
            if d.name.lower() not in self.orchestrators:
                return (
                    f"The function '{d.name}' doesn't exist, is disabled, or is not an orchestrator function."
                )
            if d.instance_id is not None and (
                d.instance_id.startswith("@") or d.instance_id == row.instance_id
            ):
                return f"Invalid sub-orchestration instance ID '{d.instance_id}'."
        return None

    def _decide(self, c: Any, row: InstanceRow, d: Decision, now: datetime, fx: _Effects) -> h.Event | None:
        iid, xid = row.instance_id, row.execution_id
        if d.kind in ("activity", "http"):
            inp = d.input if d.kind == "activity" else json.dumps(d.http_request)
            w = WorkItem(iid, xid, d.seq, d.name, inp, d.kind)
            self.db.add_work(c, w)
            fx.work.append(w)
            return h.event(h.TASK_SCHEDULED, now, d.seq, Name=d.name, Version="", Input=inp)
        if d.kind == "timer":
            assert d.fire_at is not None
            fire = h.fmt_event_time(d.fire_at)
            fired = h.event(h.TIMER_FIRED, d.fire_at, TimerId=d.seq, FireAt=fire)
            fx.inbox.append(self.db.add_inbox(c, iid, xid, d.fire_at.timestamp(), fired))
            return h.event(h.TIMER_CREATED, now, d.seq, FireAt=fire)
        if d.kind == "suborchestration":
            child_id = d.instance_id or f"{xid}:{d.seq}"
            fn = self.orchestrators[d.name.lower()]
            parent = {
                "Name": row.name,
                "Version": row.version or "",
                "TaskScheduleId": d.seq,
                "OrchestrationInstance": {"InstanceId": iid, "ExecutionId": xid},
            }
            existing = self.status_row(child_id)
            if existing is not None and existing.status not in TERMINAL:
                # DTFx refuses to start over a live instance; the parent sees the sub-orchestration fail
                reason = (
                    f"An orchestration instance with the ID '{child_id}' already exists ({existing.status})."
                )
                details = json.dumps({"ClassName": "System.InvalidOperationException", "Message": reason})
                failed = h.event(
                    h.SUB_ORCHESTRATION_FAILED, now, TaskScheduledId=d.seq, Reason=reason, Details=details
                )
                fx.inbox.append(self.db.add_inbox(c, iid, xid, time.time(), failed))
            else:
                self._create(
                    c, fn.durable_name or fn.name, child_id, d.input, d.version, parent, fx, replace=True
                )
            return h.event(
                h.SUB_ORCHESTRATION_CREATED,
                now,
                d.seq,
                Name=d.name,
                Version=d.version or "",
                InstanceId=child_id,
                Input=d.input,
            )
        if d.kind == "entity":
            assert d.instance_id is not None
            msg: dict[str, Any] = {
                "id": str(uuid.uuid4()),
                "op": d.operation,
                "signal": d.signal,
                "input": d.input,
                "parent": iid,
                "parentExecution": xid,
            }
            text = json.dumps(msg)
            op = h.event(h.EVENT_RAISED, now, Name="op", Input=text)
            fx.inbox.append(self.db.add_inbox(c, d.instance_id, None, time.time(), op))
            return h.event(h.EVENT_SENT, now, d.seq, InstanceId=d.instance_id, Name="op", Input=text)
        return None

    def _notify_parent(
        self, c: Any, row: InstanceRow, *, failed: bool, result: str | None, reason: str | None, fx: _Effects
    ) -> None:
        if not row.parent:
            return
        parent = json.loads(row.parent)
        pid = parent["OrchestrationInstance"]["InstanceId"]
        pxid = parent["OrchestrationInstance"]["ExecutionId"]
        seq = parent["TaskScheduleId"]
        now = h.utcnow()
        if failed:
            details = json.dumps({"ClassName": "System.Exception", "Message": reason})
            ev = h.event(h.SUB_ORCHESTRATION_FAILED, now, TaskScheduledId=seq, Reason=reason, Details=details)
        else:
            ev = h.event(h.SUB_ORCHESTRATION_COMPLETED, now, TaskScheduledId=seq, Result=result)
        fx.inbox.append(self.db.add_inbox(c, pid, pxid, time.time(), ev))

    def _continue_as_new(self, c: Any, inst: Instance, input_text: str | None, fx: _Effects) -> None:
        row = inst.row
        self.db.clear_history(c, row.instance_id)
        self.db.delete_execution_work(c, row.instance_id, row.execution_id)
        row.execution_id = uuid.uuid4().hex
        row.input = json.dumps(input_text)
        row.status = RUNNING
        row.output = None
        inst.history = []
        inst.played = 0
        fx.inbox.append(
            self.db.add_inbox(c, row.instance_id, row.execution_id, time.time(), self._started(row))
        )

    @staticmethod
    def _started(row: InstanceRow) -> h.Event:
        parent = json.loads(row.parent) if row.parent else None
        return h.event(
            h.EXECUTION_STARTED,
            h.utcnow(),
            OrchestrationInstance={"InstanceId": row.instance_id, "ExecutionId": row.execution_id},
            ParentInstance=parent,
            Name=row.name,
            Version=row.version or "",
            Input=row.input,
            Tags=None,
            Correlation=None,
            ScheduledStartTime=None,
            Generation=0,
        )

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
        existing = self.instances.get(instance_id) or None
        old = existing.row if existing else self.db.get_instance(instance_id)
        if old is not None and old.status not in TERMINAL and not replace:
            raise DurableError(
                409,
                f"An orchestration instance with the ID '{instance_id}' already exists and is {old.status}.",
            )
        if old is not None:
            self.db.delete_instance(c, instance_id)
        now = time.time()
        row = InstanceRow(
            instance_id=instance_id,
            name=name,
            version=version,
            execution_id=uuid.uuid4().hex,
            status=PENDING,
            input=json.dumps(input_value),
            output=None,
            custom_status=None,
            created=now,
            updated=now,
            parent=json.dumps(parent) if parent else None,
        )
        self.db.put_instance(c, row)
        # memory follows only after COMMIT (_apply): a rolled-back episode leaves no phantom child
        fx.created.append(Instance(row, history=[], played=0))
        fx.inbox.append(self.db.add_inbox(c, instance_id, row.execution_id, now, self._started(row)))
        return row

    async def _run_orchestrator(
        self, fn: FunctionInfo, context_json: str
    ) -> tuple[dict[str, Any], str | None]:
        """One orchestrator invocation in a worker process: (OrchestratorState, error text or None).
        A timeout fails the orchestration with the host's message; a dead worker raises WorkerDied (the
        episode is retried)."""
        try:
            ok, value = await self.workers.call("orchestrator", fn.name, context_json)
        except FunctionTimeout as exc:
            return {}, f"FunctionTimeoutException: {exc}"
        if not ok:
            return {}, str(value[-1])
        state, error = value
        return state, error

    # ------------------------------------------------------------------ activities
    async def _activity_worker(self) -> None:
        while True:
            w = await self.work_q.get()
            if self.stopping:
                return
            self.in_flight += 1
            self.stats["activities"] += 1
            try:
                ev = await self._run_work_item(w)
            except WorkerDied as exc:
                # as on Azure when a worker dies mid-activity: the activity runs again (at least once)
                log.warning("durable: activity %s (%s #%d) is retried: %s", w.name, w.instance_id, w.seq, exc)
                asyncio.get_running_loop().call_later(0.1, self.work_q.put_nowait, w)
                continue
            finally:
                self.in_flight -= 1
            self.completions.append((w, ev))
            if not self.flush_scheduled:
                self.flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_completions)

    async def _run_work_item(self, w: WorkItem) -> h.Event:
        now = h.utcnow
        try:
            if w.kind == "http":
                result = await self._http_activity(w.input)
            else:
                fn = self.activities.get(w.name.lower())
                if fn is None:
                    raise calls.ActivityFailure(
                        f"The function '{w.name}' doesn't exist, is disabled, or is not an activity function",
                        "",
                    )
                ok, value = await self.workers.call("activity", fn.name, w.input)
                if not ok and value[0] == "failure":
                    raise calls.ActivityFailure(value[1], value[2])
                if not ok:
                    raise RuntimeError(str(value[-1]))
                result = value
            return h.event(h.TASK_COMPLETED, now(), TaskScheduledId=w.seq, Result=result)
        except WorkerDied:
            raise  # not a result: the activity runs again
        except FunctionTimeout as exc:
            reason = f"Activity function '{w.name}' failed: FunctionTimeoutException: {exc}"
            details = json.dumps({"ClassName": "Microsoft.Azure.WebJobs.Host.FunctionTimeoutException"})
            return h.event(h.TASK_FAILED, now(), TaskScheduledId=w.seq, Reason=reason, Details=details)
        except calls.ActivityFailure as f:
            return h.event(h.TASK_FAILED, now(), TaskScheduledId=w.seq, Reason=f.reason, Details=f.details)
        except Exception as exc:
            failure = calls.activity_failure(w.name, exc)
            return h.event(
                h.TASK_FAILED, now(), TaskScheduledId=w.seq, Reason=failure.reason, Details=failure.details
            )

    async def _http_activity(self, input_text: str | None) -> str:
        """`call_http`: one request, then (async pattern) GET polls of `Location` while it answers 202.
        Bounded: each request by HTTP_REQUEST_TIMEOUT (HttpClient's 100 s), `Retry-After` by HTTP_POLL_MAX,
        the whole call by the request's `timeout`, else functionTimeout, else HTTP_POLL_LIMIT."""
        req = json.loads(input_text or "{}")
        if self.http is None:
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_REQUEST_TIMEOUT))
        headers = {k: v if isinstance(v, str) else ",".join(v) for k, v in (req.get("headers") or {}).items()}
        method, uri, content = str(req.get("method") or "GET"), str(req["uri"]), req.get("content")
        limit = _seconds(req.get("timeout")) or self.function_timeout or HTTP_POLL_LIMIT
        deadline = time.monotonic() + limit
        while True:
            async with self.http.request(method, uri, data=content, headers=headers) as resp:
                body = await resp.text()
                location = resp.headers.get("Location")
                if resp.status == 202 and location and req.get("asynchronousPatternEnabled", True):
                    # the Durable HTTP async pattern: poll Location with GET until it stops answering 202
                    try:
                        delay = min(HTTP_POLL_MAX, max(0.0, float(resp.headers.get("Retry-After", ""))))
                    except ValueError:
                        delay = HTTP_POLL_DEFAULT
                    if time.monotonic() + delay > deadline:
                        raise TimeoutError(
                            f"call_http: {uri} still answered 202 after {limit:.0f} s of polling (the "
                            "limit is the request's timeout, else functionTimeout, else 24 h)"
                        )
                    method, uri, content = "GET", location, None
                    await asyncio.sleep(delay)
                    continue
                return json.dumps(
                    {
                        "statusCode": resp.status,
                        "headers": {k: v for k, v in resp.headers.items()},
                        "content": body,
                    }
                )

    def _flush_completions(self) -> None:
        self.flush_scheduled = False
        batch, self.completions = self.completions, []
        if not batch or self.store is None:
            return
        fx = _Effects()
        try:
            with self.db.transaction() as c:
                for w, ev in batch:
                    if self.db.delete_work(c, w):  # gone if the instance was terminated, purged or restarted
                        fx.inbox.append(self.db.add_inbox(c, w.instance_id, w.execution_id, time.time(), ev))
        except Exception:
            log.exception("durable: recording %d activity completions failed; retrying", len(batch))
            self.completions[:0] = batch
            if not self.flush_scheduled:
                self.flush_scheduled = True
                asyncio.get_running_loop().call_later(1.0, self._flush_completions)
            return
        for w, _ in batch:
            left = self.outstanding.get(w.instance_id, 1) - 1
            if left > 0:
                self.outstanding[w.instance_id] = left
            else:
                self.outstanding.pop(w.instance_id, None)
        self._apply(fx, coalesce=True)

    # ------------------------------------------------------------------ entities
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

    # ------------------------------------------------------------------ client operations
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

    def status_row(self, iid: str) -> InstanceRow | None:
        inst = self.instances.get(iid)
        return inst.row if inst else self.db.get_instance(iid)

    def history_of(self, iid: str) -> list[h.Event]:
        inst = self.instances.get(iid)
        if inst is not None and inst.history is not None:
            return list(inst.history)
        return self.db.load_history(iid)

    def _enqueue(self, iid: str, execution_id: str | None, event: h.Event) -> None:
        fx = _Effects()
        with self.db.transaction() as c:
            fx.inbox.append(self.db.add_inbox(c, iid, execution_id, time.time(), event))
        self._apply(fx)

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
