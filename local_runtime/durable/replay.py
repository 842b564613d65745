"""Host-side replay of an episode's actions: DTFx-identical sequence numbers and the new decisions.

The SDK never reports task ids; both sides number id-consuming actions in the same order. This module
re-creates what the Durable extension's `ProcessAsyncActionsV2` + DTFx `RetryInterceptor` do: walk the
action list in order, awaiting each action while draining history; `-WithRetry` actions allocate a timer
id when an attempt fails and a re-attempt id when that timer fires. Ids with no scheduling event in
history are the episode's new decisions.

Non-determinism is detected as DTFx's TaskOrchestrationContext does it: every scheduling event in history
(TaskScheduled, TimerCreated, SubOrchestrationInstanceCreated, EventSent) must meet an action of the same
kind and name with the same id, and no scheduling event may be left without one (`NonDeterminismError`).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from local_runtime.durable import history as h

# OutOfProcOrchestrationShim.AsyncActionType
CALL_ACTIVITY = 0
CALL_ACTIVITY_RETRY = 1
CALL_SUB = 2
CALL_SUB_RETRY = 3
CONTINUE_AS_NEW = 4
CREATE_TIMER = 5
WAIT_EVENT = 6
CALL_ENTITY = 7
CALL_HTTP = 8
SIGNAL_ENTITY = 9
WHEN_ANY = 11
WHEN_ALL = 12

HTTP_ACTIVITY = "BuiltIn::HttpActivity"


class ReplayError(Exception):
    """The action list cannot be processed (unknown action type, malformed action)."""


NON_DETERMINISTIC = "DurableTask.Core.Exceptions.NonDeterministicOrchestrationException"
_CHANGED = "Was a change made to the orchestrator code after this instance had already started running?"


class NonDeterminismError(ReplayError):
    """History and the orchestrator's actions disagree (DTFx NonDeterministicOrchestrationException).

    `missing` is True when history holds a task the replay never scheduled (rather than another task at
    the same id): an episode whose code raised may have stopped before scheduling it."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(f"Non-Deterministic workflow detected: {message}")
        self.missing = missing


@dataclass
class Decision:
    """An id-consuming operation the orchestrator asked for that history does not hold yet."""

    kind: str  # "activity" | "timer" | "suborchestration" | "entity" | "http"
    seq: int
    name: str = ""
    input: str | None = None
    fire_at: datetime | None = None
    canceled: bool = False
    instance_id: str | None = None
    version: str | None = None
    operation: str | None = None
    signal: bool = False
    http_request: dict[str, Any] | None = None


class _Fut:
    __slots__ = ("callbacks", "done", "failed")

    def __init__(self) -> None:
        self.done = False
        self.failed = False
        self.callbacks: list[Callable[[_Fut], None]] = []

    def resolve(self, failed: bool = False) -> None:
        if self.done:
            return
        self.done = True
        self.failed = failed
        callbacks, self.callbacks = self.callbacks, []
        for cb in callbacks:
            cb(self)

    def on_done(self, cb: Callable[[_Fut], None]) -> None:
        if self.done:
            cb(self)
        else:
            self.callbacks.append(cb)


@dataclass
class ReplayResult:
    decisions: list[Decision] = field(default_factory=list)
    continue_as_new: str | None = None
    did_continue_as_new: bool = False


class _Walker:
    def __init__(self, events: list[h.Event], start_time: datetime) -> None:
        self.events = events
        self.pos = 0
        self.counter = 0
        self.now = start_time
        self.leaves: dict[int, tuple[Decision, _Fut]] = {}
        self.scheduled: dict[int, h.Event] = {}
        self.deferred: dict[int, tuple[bool, h.Event]] = {}
        self.waiters: dict[str, deque[_Fut]] = {}
        self.buffered: dict[str, deque[h.Event]] = {}
        self.entity_calls: dict[str, _Fut] = {}
        self.result = ReplayResult()

    # ---- allocation
    def alloc(self, decision_factory: Callable[[int], Decision]) -> _Fut:
        seq = self.counter
        self.counter += 1
        fut = _Fut()
        self.leaves[seq] = (decision_factory(seq), fut)
        if seq in self.scheduled:
            self._verify(seq)
        pending = self.deferred.pop(seq, None)
        if pending is not None:
            self._complete(seq, pending[0], pending[1])
        return fut

    # ---- history
    def _complete(self, seq: int, failed: bool, e: h.Event) -> None:
        leaf = self.leaves.get(seq)
        if leaf is None:
            self.deferred[seq] = (failed, e)
            return
        leaf[1].resolve(failed)

    def process(self, e: h.Event) -> None:
        t = e["EventType"]
        if t == h.ORCHESTRATOR_STARTED:
            self.now = h.parse_time(e["Timestamp"])
        elif t in (h.TASK_SCHEDULED, h.TIMER_CREATED, h.SUB_ORCHESTRATION_CREATED, h.EVENT_SENT):
            seq = e["EventId"]
            self.scheduled[seq] = e
            if seq in self.leaves:
                self._verify(seq)
            if t == h.EVENT_SENT:
                leaf = self.leaves.get(seq)
                if leaf is not None and leaf[0].kind == "entity" and not leaf[0].signal:
                    try:
                        self.entity_calls[json.loads(e["Input"])["id"]] = leaf[1]
                    except (ValueError, KeyError, TypeError):
                        pass
        elif t in (h.TASK_COMPLETED, h.SUB_ORCHESTRATION_COMPLETED):
            self._complete(e["TaskScheduledId"], False, e)
        elif t in (h.TASK_FAILED, h.SUB_ORCHESTRATION_FAILED):
            self._complete(e["TaskScheduledId"], True, e)
        elif t == h.TIMER_FIRED:
            self._complete(e["TimerId"], False, e)
        elif t == h.EVENT_RAISED:
            name = e.get("Name") or ""
            fut = self.entity_calls.pop(name, None)
            if fut is not None:
                failed = False
                try:
                    failed = "exceptionType" in json.loads(e.get("Input") or "{}")
                except (ValueError, TypeError):
                    pass
                fut.resolve(failed)
                return
            waiters = self.waiters.get(name)
            if waiters:
                # the extension keeps the waits of one name on a stack: the newest gets the event, so a
                # task_any over the same event in a loop is answered, not a wait abandoned earlier
                waiters.pop().resolve()
            else:
                self.buffered.setdefault(name, deque()).append(e)

    def _verify(self, seq: int) -> None:
        """The action allocated `seq` must be what history scheduled with it (kind and name)."""
        d = self.leaves[seq][0]
        e = self.scheduled[seq]
        t = e["EventType"]
        same = False
        if t == h.TASK_SCHEDULED and d.kind in ("activity", "http"):
            same = d.name.lower() == str(e.get("Name") or "").lower()
        elif t == h.TIMER_CREATED:
            same = d.kind == "timer"
        elif t == h.SUB_ORCHESTRATION_CREATED and d.kind == "suborchestration":
            same = d.name.lower() == str(e.get("Name") or "").lower()
        elif t == h.EVENT_SENT and d.kind == "entity":
            same = str(d.instance_id or "").lower() == str(e.get("InstanceId") or "").lower()
        if not same:
            raise NonDeterminismError(
                f"A previous execution of this orchestration scheduled {_event_task(e, 'number')}, but the "
                f"current orchestration replay instead scheduled {_decision_task(d)} with this sequence "
                f"number. {_CHANGED}",
                missing=False,
            )

    def drain_until(self, fut: _Fut) -> None:
        while not fut.done and self.pos < len(self.events):
            e = self.events[self.pos]
            self.pos += 1
            self.process(e)

    def drain_all(self) -> None:
        while self.pos < len(self.events):
            e = self.events[self.pos]
            self.pos += 1
            self.process(e)

    # ---- actions
    def invoke(self, a: dict[str, Any]) -> _Fut:
        t = a.get("actionType")
        if t == CALL_ACTIVITY:
            name, inp = a["functionName"], a.get("input")
            return self.alloc(lambda s: Decision("activity", s, name=name, input=inp))
        if t == CALL_SUB:
            return self.alloc(lambda s: self._sub(s, a))
        if t == CALL_HTTP:
            req = a.get("httpRequest") or {}
            return self.alloc(lambda s: Decision("http", s, name=HTTP_ACTIVITY, http_request=req))
        if t in (CALL_ACTIVITY_RETRY, CALL_SUB_RETRY):
            return self._retry(a)
        if t == CREATE_TIMER:
            fire_at = h.parse_time(a["fireAt"])
            canceled = bool(a.get("isCanceled"))
            return self.alloc(lambda s: Decision("timer", s, fire_at=fire_at, canceled=canceled))
        if t == WAIT_EVENT:
            name = a.get("externalEventName") or ""
            fut = _Fut()
            buf = self.buffered.get(name)
            if buf:
                buf.popleft()
                fut.resolve()
            else:
                self.waiters.setdefault(name, deque()).append(fut)
            return fut
        if t in (CALL_ENTITY, SIGNAL_ENTITY):
            signal = t == SIGNAL_ENTITY
            fut = self.alloc(
                lambda s: Decision(
                    "entity",
                    s,
                    instance_id=a["instanceId"],
                    operation=a.get("operation"),
                    input=a.get("input"),
                    signal=signal,
                )
            )
            if signal:
                done = _Fut()
                done.resolve()
                return done
            return fut
        if t == CONTINUE_AS_NEW:
            self.result.did_continue_as_new = True
            self.result.continue_as_new = a.get("input")
            done = _Fut()
            done.resolve()
            return done
        if t in (WHEN_ALL, WHEN_ANY):
            children = [self.invoke(c) for c in a.get("compoundActions") or []]
            return self._compound(children, any_=t == WHEN_ANY)
        raise ReplayError(f"unknown actionType {t!r} in action {json.dumps(a)[:200]}")

    def _sub(self, seq: int, a: dict[str, Any]) -> Decision:
        return Decision(
            "suborchestration",
            seq,
            name=a["functionName"],
            input=a.get("input"),
            instance_id=a.get("instanceId"),
            version=a.get("version"),
        )

    def _compound(self, children: list[_Fut], any_: bool) -> _Fut:
        out = _Fut()
        if not children:
            out.resolve()
            return out
        remaining = [len(children)]

        def on_child(f: _Fut) -> None:
            if any_:
                out.resolve()
                return
            if f.failed:
                out.resolve(True)  # the SDK's WhenAll fails on the first error (see QUIRKS.md)
                return
            remaining[0] -= 1
            if remaining[0] == 0:
                out.resolve()

        for c in children:
            c.on_done(on_child)
        return out

    def _retry(self, a: dict[str, Any]) -> _Fut:
        """DTFx RetryInterceptor: attempt; on failure a timer, then a re-attempt; an extra final timer."""
        opts = a.get("retryOptions") or {}
        interval = timedelta(milliseconds=float(opts.get("firstRetryIntervalInMilliseconds", 0)))
        max_attempts = int(opts.get("maxNumberOfAttempts", 1))
        is_sub = a.get("actionType") == CALL_SUB_RETRY
        out = _Fut()
        attempts = [0]

        def attempt() -> None:
            attempts[0] += 1
            if is_sub:
                fut = self.alloc(lambda s: self._sub(s, a))
            else:
                name, inp = a["functionName"], a.get("input")
                fut = self.alloc(lambda s: Decision("activity", s, name=name, input=inp))
            fut.on_done(on_attempt)

        def on_attempt(f: _Fut) -> None:
            if not f.failed:
                out.resolve()
                return
            last = attempts[0] >= max_attempts
            # Newer DTFx: the back-compat timer after the last attempt fires immediately.
            fire_at = self.now if last else self.now + interval
            timer = self.alloc(lambda s: Decision("timer", s, fire_at=fire_at))
            timer.on_done(lambda _t: out.resolve(True) if last else attempt())

        attempt()
        return out


def replay_actions(actions: list[Any], events: list[h.Event], start_time: datetime) -> ReplayResult:
    """Walk the (V2/V3 flat) action list against the full history; return the new decisions in id order."""
    w = _Walker(events, start_time)
    for a in actions:
        fut = w.invoke(a)
        w.drain_until(fut)
    w.drain_all()
    for seq in sorted(w.scheduled):
        if seq not in w.leaves:
            task = _event_task(w.scheduled[seq], "ID")
            raise NonDeterminismError(
                f"A previous execution of this orchestration scheduled {task}, but the current replay "
                f"execution hasn't (yet?) scheduled this task. {_CHANGED}",
                missing=True,
            )
    for seq in sorted(w.leaves):
        if seq not in w.scheduled:
            w.result.decisions.append(w.leaves[seq][0])
    return w.result


def _event_task(e: h.Event, word: str) -> str:
    """A scheduling event as DTFx names it in NonDeterministicOrchestrationException messages."""
    t, seq, name = e["EventType"], e.get("EventId"), e.get("Name")
    if t == h.TASK_SCHEDULED:
        version = e.get("Version") or ""
        return f"an activity task with sequence {word} {seq} and name '{name}' (version '{version}')"
    if t == h.TIMER_CREATED:
        return f"a timer task with sequence {word} {seq} firing at {e.get('FireAt')}"
    if t == h.SUB_ORCHESTRATION_CREATED:
        return (
            f"a sub-orchestration task with sequence {word} {seq} and name '{name}' "
            f"(version '{e.get('Version') or ''}', instance ID '{e.get('InstanceId')}')"
        )
    return f"a send event task with sequence {word} {seq} to instance ID '{e.get('InstanceId')}'"


def _decision_task(d: Decision) -> str:
    if d.kind == "activity":
        return f"an activity task named '{d.name}'"
    if d.kind == "http":
        return f"an HTTP task ('{d.name}')"
    if d.kind == "timer":
        return "a timer task"
    if d.kind == "suborchestration":
        return f"a sub-orchestration task named '{d.name}'"
    return f"an entity {'signal' if d.signal else 'call'} to '{d.instance_id}' ('{d.operation}')"
