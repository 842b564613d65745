"""Episodes: one orchestrator invocation (in a worker process) over an instance's history and new
events, the replay of its actions (`replay.py`: ids, non-determinism), and the one SQLite transaction that
records the decisions (activities, timers, sub-orchestrations, entity messages) and the outcome.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Any

from local_runtime.durable import history as h
from local_runtime.durable.core import (
    _STATUS_NUM,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    SUSPENDED,
    TERMINAL,
    TERMINATED,
    DurableError,
    EngineCore,
    Instance,
    _Effects,
    log,
)
from local_runtime.durable.replay import (
    NON_DETERMINISTIC,
    Decision,
    NonDeterminismError,
    ReplayError,
    replay_actions,
)
from local_runtime.durable.store import InstanceRow, WorkItem
from local_runtime.durable.workers import FunctionTimeout
from local_runtime.indexing import FunctionInfo


class Episodes(EngineCore):
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
        answered = h.utcnow()  # OrchestratorCompleted's time, as DTFx stamps it: when the code answered
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
            added.append(h.event(h.ORCHESTRATOR_COMPLETED, answered))
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
