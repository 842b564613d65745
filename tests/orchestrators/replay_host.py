"""A small DTFx-style host for orchestrator unit tests: it drives the SDK's registered handles with
history JSON (DURABLE-PROTOCOL.md §2), on a virtual clock, with fake activities.

Each episode delivers one new event: `[OrchestratorStarted, <event>]`, then the host turns the new
leaf actions into TaskScheduled / TimerCreated / SubOrchestrationInstanceCreated (sequence ids
assigned in first-yield order, retries allocating theirs when the failure and then the timer are
processed, as DTFx's RetryInterceptor does) followed by OrchestratorCompleted.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
MARKER = "\n\n$OutOfProcData$:"

EXECUTION_STARTED, TASK_SCHEDULED, TASK_COMPLETED, TASK_FAILED = 0, 4, 5, 6
SUB_CREATED, SUB_COMPLETED, SUB_FAILED = 7, 8, 9
TIMER_CREATED, TIMER_FIRED, ORCH_STARTED, ORCH_COMPLETED, EVENT_RAISED = 10, 11, 12, 13, 15


class Hang:
    """Returned by a fake activity: it never completes (a step stuck until timeout or cancel)."""


@dataclass
class Delay:
    """Returned by a fake activity: its value arrives after `seconds` of virtual time."""

    seconds: float
    value: Any


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def parse(text: str) -> datetime:
    return datetime.strptime(text.rstrip("Z")[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)


def leaves(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for a in actions:
        if a["actionType"] in (11, 12):
            out.extend(leaves(a["compoundActions"]))
        else:
            out.append(a)
    return out


@dataclass
class Scheduled:
    kind: str  # activity | timer | sub
    name: str = ""
    input: str | None = None
    retry: dict[str, Any] | None = None
    attempts: int = 0
    waiting_retry_timer: bool = False


@dataclass
class Instance:
    name: str
    instance_id: str
    input_text: str | None
    parent: tuple[Instance, int] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0
    seen_leaves: int = 0
    by_seq: dict[int, Scheduled] = field(default_factory=dict)
    done: bool = False
    failed: str | None = None
    output: Any = None
    custom_status: Any = None
    custom_statuses: list[Any] = field(default_factory=list)
    episodes: int = 0


@dataclass
class Call:
    """One activity execution the host performed (a retry is a second Call)."""

    at: datetime
    instance_id: str
    name: str
    payload: Any


class ReplayHost:
    def __init__(
        self,
        orchestrators: dict[str, Callable[[str], str]],
        activities: dict[str, Callable[[Any], Any]],
        *,
        durations: dict[str, float] | None = None,
    ) -> None:
        self.orchestrators = orchestrators
        self.activities = activities
        self.durations = durations or {}
        self.clock = T0
        self.queue: list[tuple[datetime, int, Instance, dict[str, Any] | None]] = []
        self.counter = itertools.count()
        self.instances: dict[str, Instance] = {}
        self.calls: list[Call] = []
        self.on_schedule: list[Callable[[ReplayHost, Instance, Scheduled], None]] = []

    # ---- plumbing ---------------------------------------------------------------------------------
    def ev(self, event_type: int, event_id: int = -1, **fields: Any) -> dict[str, Any]:
        return {
            "EventType": event_type,
            "EventId": event_id,
            "IsPlayed": False,
            "Timestamp": stamp(self.clock),
            **fields,
        }

    def push(self, at: datetime, inst: Instance, event: dict[str, Any] | None) -> None:
        heapq.heappush(self.queue, (at, next(self.counter), inst, event))

    def raise_event(self, instance_id: str, name: str, data: Any, *, after: float = 0.0) -> None:
        inst = self.instances[instance_id]
        self.push(
            self.clock + timedelta(seconds=after),
            inst,
            self.ev(EVENT_RAISED, Name=name, Input=json.dumps(data)),
        )

    def start(
        self, name: str, data: Any, instance_id: str = "run-1", parent: tuple[Instance, int] | None = None
    ) -> Instance:
        inst = Instance(name, instance_id, json.dumps(data), parent)
        self.instances[instance_id] = inst
        inst.history = [
            self.ev(ORCH_STARTED),
            self.ev(
                EXECUTION_STARTED,
                Name=name,
                Version="",
                Input=inst.input_text,
                OrchestrationInstance={"InstanceId": instance_id, "ExecutionId": f"x-{instance_id}"},
                ParentInstance=None,
                Tags=None,
            ),
        ]
        self.episode(inst)
        return inst

    def invoke(self, inst: Instance) -> tuple[dict[str, Any], str | None]:
        body = {
            "history": inst.history,
            "input": inst.input_text,
            "instanceId": inst.instance_id,
            "isReplaying": False,
            "parentInstanceId": inst.parent[0].instance_id if inst.parent else None,
            "upperSchemaVersion": 1,
            "upperSchemaVersionNew": 2,
        }
        handle = self.orchestrators[inst.name]
        try:
            return json.loads(handle(func.OrchestrationContext(json.dumps(body)))), None
        except Exception as exc:
            text = str(exc)
            if MARKER not in text:
                raise
            return json.loads(text.split(MARKER, 1)[1]), text.split(MARKER, 1)[0]

    def episode(self, inst: Instance) -> None:
        inst.episodes += 1
        state, error = self.invoke(inst)
        if "customStatus" in state:
            inst.custom_status = state["customStatus"]
            if not inst.custom_statuses or inst.custom_statuses[-1] != state["customStatus"]:
                inst.custom_statuses.append(state["customStatus"])
        decisions: list[dict[str, Any]] = []
        all_leaves = leaves(state["actions"][0]) if state["actions"] else []
        for action in all_leaves[inst.seen_leaves :]:
            decisions.extend(self.schedule(inst, action))
        inst.seen_leaves = len(all_leaves)
        for e in inst.history:
            e["IsPlayed"] = True
        inst.history.extend(decisions)
        inst.history.append(self.ev(ORCH_COMPLETED))
        if error is not None or state.get("isDone"):
            inst.done = True
            inst.failed = error
            inst.output = state.get("output")
            if inst.parent is not None:
                parent, seq = inst.parent
                if error is None:
                    event = self.ev(SUB_COMPLETED, TaskScheduledId=seq, Result=json.dumps(inst.output))
                else:
                    event = self.ev(
                        SUB_FAILED,
                        TaskScheduledId=seq,
                        Reason=f"Orchestrator function '{inst.name}' failed: {error}",
                        Details="",
                    )
                self.push(self.clock, parent, event)

    def schedule(self, inst: Instance, action: dict[str, Any]) -> list[dict[str, Any]]:
        kind = action["actionType"]
        if kind == 6:  # WaitForExternalEvent: keyed by name, no id
            return []
        seq = inst.seq
        inst.seq += 1
        if kind in (0, 1):
            item = Scheduled("activity", action["functionName"], action["input"], action.get("retryOptions"))
            inst.by_seq[seq] = item
            self.run_activity(inst, seq, item)
            for hook in self.on_schedule:
                hook(self, inst, item)
            return [self.ev(TASK_SCHEDULED, seq, Name=item.name, Version="", Input=item.input)]
        if kind == 5:
            inst.by_seq[seq] = Scheduled("timer")
            self.push(
                parse(action["fireAt"]), inst, self.ev(TIMER_FIRED, TimerId=seq, FireAt=action["fireAt"])
            )
            return [self.ev(TIMER_CREATED, seq, FireAt=action["fireAt"])]
        if kind in (2, 3):
            child_id = action.get("instanceId") or f"x-{inst.instance_id}:{seq}"
            inst.by_seq[seq] = Scheduled("sub", action["functionName"], action["input"])
            self.pending_children.append(
                (action["functionName"], json.loads(action["input"]), child_id, (inst, seq))
            )
            return [
                self.ev(
                    SUB_CREATED,
                    seq,
                    Name=action["functionName"],
                    InstanceId=child_id,
                    Input=action["input"],
                    Version="",
                )
            ]
        raise AssertionError(f"unexpected action {action}")

    pending_children: list[tuple[str, Any, str, tuple[Instance, int]]]

    def run_activity(self, inst: Instance, seq: int, item: Scheduled) -> None:
        item.attempts += 1
        payload = json.loads(item.input) if item.input else None
        self.calls.append(Call(self.clock, inst.instance_id, item.name, payload))
        duration = self.durations.get(item.name, 1.0)
        try:
            value = self.activities[item.name](payload)
        except Exception as exc:
            reason = f"Activity function '{item.name}' failed: {type(exc).__name__}: {exc}"
            event = self.ev(
                TASK_FAILED, TaskScheduledId=seq, Reason=reason, Details=json.dumps({"Message": str(exc)})
            )
            self.push(self.clock + timedelta(seconds=duration), inst, event)
            return
        if isinstance(value, Hang):
            return
        if isinstance(value, Delay):
            duration, value = value.seconds, value.value
        event = self.ev(TASK_COMPLETED, TaskScheduledId=seq, Result=json.dumps(value))
        self.push(self.clock + timedelta(seconds=duration), inst, event)

    def deliver(self, inst: Instance, event: dict[str, Any]) -> None:
        """Append one event in a new episode, with the host-side retry logic of DTFx."""
        inst.history.append(self.ev(ORCH_STARTED))
        event["Timestamp"] = stamp(self.clock)
        inst.history.append(event)
        extra: list[dict[str, Any]] = []
        if event["EventType"] == TASK_FAILED:
            item = inst.by_seq[event["TaskScheduledId"]]
            if item.retry:
                timer_seq = inst.seq
                inst.seq += 1
                fire = self.clock + timedelta(milliseconds=item.retry["firstRetryIntervalInMilliseconds"])
                inst.by_seq[timer_seq] = Scheduled("timer")
                item.waiting_retry_timer = True
                self.retry_timers[(inst.instance_id, timer_seq)] = item
                extra.append(self.ev(TIMER_CREATED, timer_seq, FireAt=stamp(fire)))
                self.push(fire, inst, self.ev(TIMER_FIRED, TimerId=timer_seq, FireAt=stamp(fire)))
        retry_item = None
        if event["EventType"] == TIMER_FIRED:
            retry_item = self.retry_timers.pop((inst.instance_id, event["TimerId"]), None)
        self.episode_with(inst, extra)
        if retry_item is not None and retry_item.attempts < retry_item.retry["maxNumberOfAttempts"]:
            # DTFx re-schedules the activity under the next sequence id
            seq = inst.seq
            inst.seq += 1
            again = Scheduled(
                "activity", retry_item.name, retry_item.input, retry_item.retry, retry_item.attempts
            )
            inst.by_seq[seq] = again
            # the re-attempt's TaskScheduled belongs to the episode that handled the timer
            inst.history.insert(
                len(inst.history) - 1,
                self.ev(TASK_SCHEDULED, seq, Name=again.name, Version="", Input=again.input),
            )
            self.run_activity(inst, seq, again)

    def episode_with(self, inst: Instance, extra: list[dict[str, Any]]) -> None:
        inst.history.extend(extra)  # host decisions taken while processing the event (retry timers)
        self.episode(inst)

    retry_timers: dict[tuple[str, int], Scheduled]

    # ---- driving ----------------------------------------------------------------------------------
    def run(self, name: str, data: Any, instance_id: str = "run-1", *, max_steps: int = 2000) -> Instance:
        self.pending_children = []
        self.retry_timers = {}
        root = self.start(name, data, instance_id)
        for _ in range(max_steps):
            self._start_children()
            if root.done:
                return root
            if not self.queue:
                raise AssertionError(
                    f"{instance_id} is stuck: nothing left to deliver; status {root.custom_status}"
                )
            at, _, inst, event = heapq.heappop(self.queue)
            self.clock = max(self.clock, at)
            if inst.done or event is None:
                continue
            self.deliver(inst, event)
        raise AssertionError("too many steps")

    def _start_children(self) -> None:
        while self.pending_children:
            name, data, child_id, parent = self.pending_children.pop(0)
            self.start(name, data, child_id, parent)

    def names(self, instance_id: str | None = None) -> list[str]:
        return [c.name for c in self.calls if instance_id is None or c.instance_id == instance_id]
