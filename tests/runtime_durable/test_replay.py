"""The host-side replayer alone: DTFx sequence numbers for the action shapes verified in
shared/reference/durable/scenarios_demo.py (retries, timers, events, entities, sub-orchestrations)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from local_runtime.durable import history as h
from local_runtime.durable.replay import NonDeterminismError, replay_actions

T0 = datetime(2024, 1, 1, 12, tzinfo=UTC)
RETRY = {
    "actionType": 12,
    "compoundActions": [
        {
            "actionType": 1,
            "functionName": "flaky",
            "input": '"x"',
            "retryOptions": {"firstRetryIntervalInMilliseconds": 5000, "maxNumberOfAttempts": 2},
        }
    ],
}


def ev(t, eid=-1, at=T0, **kw):
    return h.event(t, at, eid, **kw)


def start():
    return [ev(h.ORCHESTRATOR_STARTED), ev(h.EXECUTION_STARTED, Name="o", Version="", Input=None)]


def kinds(result):
    return [(d.kind, d.seq) for d in result.decisions]


def test_retry_allocates_timer_then_reattempt_then_extra_timer():
    hist = start()
    assert kinds(replay_actions([RETRY], hist, T0)) == [("activity", 0)]
    t1 = T0 + timedelta(seconds=1)
    hist += [
        ev(h.TASK_SCHEDULED, 0, Name="flaky"),
        ev(h.ORCHESTRATOR_COMPLETED),
        ev(h.ORCHESTRATOR_STARTED, at=t1),
        ev(h.TASK_FAILED, TaskScheduledId=0, Reason="r", Details="d"),
    ]
    r = replay_actions([RETRY], hist, T0)
    assert kinds(r) == [("timer", 1)] and r.decisions[0].fire_at == t1 + timedelta(seconds=5)
    hist += [
        ev(h.TIMER_CREATED, 1),
        ev(h.ORCHESTRATOR_COMPLETED),
        ev(h.ORCHESTRATOR_STARTED),
        ev(h.TIMER_FIRED, TimerId=1),
    ]
    assert kinds(replay_actions([RETRY], hist, T0)) == [("activity", 2)]
    t2 = T0 + timedelta(seconds=9)
    hist += [
        ev(h.TASK_SCHEDULED, 2, Name="flaky"),
        ev(h.ORCHESTRATOR_COMPLETED),
        ev(h.ORCHESTRATOR_STARTED, at=t2),
        ev(h.TASK_FAILED, TaskScheduledId=2, Reason="r", Details="d"),
    ]
    r = replay_actions([RETRY], hist, T0)
    # the last attempt failed: one more (immediate) timer before the SDK raises
    assert kinds(r) == [("timer", 3)] and r.decisions[0].fire_at == t2
    # after it fires nothing is left to schedule; a following action gets id 4
    hist += [
        ev(h.TIMER_CREATED, 3),
        ev(h.ORCHESTRATOR_COMPLETED),
        ev(h.ORCHESTRATOR_STARTED),
        ev(h.TIMER_FIRED, TimerId=3),
    ]
    nxt = {"actionType": 0, "functionName": "after", "input": "null"}
    assert kinds(replay_actions([RETRY, nxt], hist, T0)) == [("activity", 4)]


def test_retry_success_lets_the_next_action_follow():
    hist = [
        *start(),
        ev(h.TASK_SCHEDULED, 0, Name="flaky"),
        ev(h.ORCHESTRATOR_COMPLETED),
        ev(h.ORCHESTRATOR_STARTED),
        ev(h.TASK_COMPLETED, TaskScheduledId=0, Result='"ok"'),
    ]
    nxt = {"actionType": 0, "functionName": "after", "input": "null"}
    assert kinds(replay_actions([RETRY, nxt], hist, T0)) == [("activity", 1)]


def test_event_with_timeout_gives_the_timer_id_zero():
    fire = "2024-01-01T13:00:00.010000Z"
    actions = [
        {
            "actionType": 11,
            "compoundActions": [
                {"actionType": 6, "externalEventName": "Approval", "reason": "ExternalEvent"},
                {"actionType": 5, "fireAt": fire, "isCanceled": False},
            ],
        }
    ]
    r = replay_actions(actions, start(), T0)
    assert kinds(r) == [("timer", 0)] and h.fmt_event_time(r.decisions[0].fire_at) == fire
    # the event wins: the next action is reached and takes id 1
    hist = [
        *start(),
        ev(h.TIMER_CREATED, 0, FireAt=fire),
        ev(h.ORCHESTRATOR_COMPLETED),
        ev(h.ORCHESTRATOR_STARTED),
        ev(h.EVENT_RAISED, Name="Approval", Input="true"),
    ]
    nxt = {"actionType": 0, "functionName": "work", "input": "1"}
    assert kinds(replay_actions([*actions, nxt], hist, T0)) == [("activity", 1)]


def test_entities_signal_then_call_and_subs():
    actions = [
        {"actionType": 9, "instanceId": "@counter@c1", "operation": "add", "input": "5"},
        {"actionType": 7, "instanceId": "@counter@c1", "operation": "get", "input": "null"},
    ]
    r = replay_actions(actions, start(), T0)
    assert [(d.kind, d.seq, d.signal, d.operation) for d in r.decisions] == [
        ("entity", 0, True, "add"),
        ("entity", 1, False, "get"),
    ]
    subs = [
        {"actionType": 2, "functionName": "child", "input": "1", "instanceId": "child-42", "version": None},
        {
            "actionType": 12,
            "compoundActions": [
                {
                    "actionType": 3,
                    "functionName": "child",
                    "input": "2",
                    "instanceId": None,
                    "version": None,
                    "retryOptions": {"firstRetryIntervalInMilliseconds": 10, "maxNumberOfAttempts": 2},
                }
            ],
        },
    ]
    hist = [
        *start(),
        ev(h.SUB_ORCHESTRATION_CREATED, 0, Name="child", InstanceId="child-42"),
        ev(h.ORCHESTRATOR_COMPLETED),
        ev(h.ORCHESTRATOR_STARTED),
        ev(h.SUB_ORCHESTRATION_COMPLETED, TaskScheduledId=0, Result="1"),
    ]
    r = replay_actions(subs, hist, T0)
    assert [(d.kind, d.seq, d.instance_id) for d in r.decisions] == [("suborchestration", 1, None)]


def test_continue_as_new_is_reported():
    actions = [{"actionType": 0, "functionName": "work", "input": "3"}, {"actionType": 4, "input": "4"}]
    hist = [
        *start(),
        ev(h.TASK_SCHEDULED, 0, Name="work"),
        ev(h.ORCHESTRATOR_COMPLETED),
        ev(h.ORCHESTRATOR_STARTED),
        ev(h.TASK_COMPLETED, TaskScheduledId=0, Result="null"),
    ]
    r = replay_actions(actions, hist, T0)
    assert r.did_continue_as_new and r.continue_as_new == "4" and r.decisions == []


def _one_activity_done(name: str = "A") -> list[h.Event]:
    return [
        *start(),
        ev(h.TASK_SCHEDULED, 0, Name=name, Version=""),
        ev(h.ORCHESTRATOR_COMPLETED),
        ev(h.ORCHESTRATOR_STARTED),
        ev(h.TASK_COMPLETED, TaskScheduledId=0, Result="1"),
    ]


def test_non_determinism_other_activity_at_the_same_id():
    with pytest.raises(NonDeterminismError) as err:
        replay_actions([{"actionType": 0, "functionName": "B", "input": "1"}], _one_activity_done(), T0)
    msg = str(err.value)
    assert msg.startswith("Non-Deterministic workflow detected: A previous execution of this orchestration")
    assert "activity task with sequence number 0 and name 'A'" in msg
    assert "instead scheduled an activity task named 'B'" in msg and not err.value.missing
    # names match case-insensitively, as function names do
    assert replay_actions([{"actionType": 0, "functionName": "a", "input": "1"}], _one_activity_done(), T0)


def test_non_determinism_timer_instead_of_activity_and_task_missing():
    timer = {"actionType": 5, "fireAt": "2024-01-01T13:00:00Z", "isCanceled": False}
    with pytest.raises(NonDeterminismError, match="instead scheduled a timer task"):
        replay_actions([timer], _one_activity_done(), T0)
    with pytest.raises(NonDeterminismError) as err:
        replay_actions([], _one_activity_done(), T0)  # the code now schedules nothing
    assert "sequence ID 0 and name 'A' (version '')" in str(err.value)
    assert "hasn't (yet?) scheduled this task" in str(err.value) and err.value.missing


def test_non_determinism_sub_orchestration_and_entity():
    hist = [
        *start(),
        ev(h.EVENT_SENT, 0, InstanceId="@counter@k", Name="op", Input='{"id": "x"}'),
        ev(h.SUB_ORCHESTRATION_CREATED, 1, Name="child", InstanceId="c1"),
    ]
    sig = {"actionType": 9, "instanceId": "@gauge@k", "operation": "add", "input": "5"}
    sub = {"actionType": 2, "functionName": "other", "input": "1", "instanceId": "c1", "version": None}
    with pytest.raises(NonDeterminismError, match="entity signal to '@gauge@k'"):
        replay_actions([sig, sub], hist, T0)
    sig["instanceId"] = "@counter@k"
    with pytest.raises(NonDeterminismError, match="sub-orchestration task named 'other'"):
        replay_actions([sig, sub], hist, T0)
    sub["functionName"] = "child"
    assert replay_actions([sig, sub], hist, T0).decisions == []


def test_an_event_answers_the_newest_wait_of_its_name():
    """A task_any([step, cancel-wait]) in a loop: each loop adds a wait; the event goes to the newest one
    (the extension's pendingExternalEvents stack), so the latest race is interrupted and the code goes on."""
    race = {
        "actionType": 11,
        "compoundActions": [
            {"actionType": 0, "functionName": "step", "input": "1"},
            {"actionType": 6, "externalEventName": "cancel", "reason": "ExternalEvent"},
        ],
    }
    race2 = json.loads(json.dumps(race).replace('"input": "1"', '"input": "2"'))
    after = {"actionType": 0, "functionName": "cleanup", "input": "3"}
    hist = [
        *start(),
        ev(h.TASK_SCHEDULED, 0, Name="step"),
        ev(h.ORCHESTRATOR_COMPLETED),
        ev(h.ORCHESTRATOR_STARTED),
        ev(h.TASK_COMPLETED, TaskScheduledId=0, Result="1"),
        ev(h.TASK_SCHEDULED, 1, Name="step"),
        ev(h.ORCHESTRATOR_COMPLETED),
        ev(h.ORCHESTRATOR_STARTED),
        ev(h.EVENT_RAISED, Name="cancel", Input="null"),
    ]
    r = replay_actions([race, race2, after], hist, T0)
    assert kinds(r) == [("activity", 2)]
    # the walk got there through the second race being answered, not past a pending one: drop the
    # action after it and the newest wait still resolves (the first race's wait stays pending)
    w = _walker_after([race, race2], hist)
    assert [f.done for f in w] == [True, True]


def _walker_after(actions, hist):
    from local_runtime.durable.replay import _Walker

    walker = _Walker(hist, T0)
    futs = []
    for a in actions:
        futs.append(walker.invoke(a))
        walker.drain_until(futs[-1])
    walker.drain_all()
    return futs


def test_history_timestamps_parse_once_per_worker_process_to_the_same_values() -> None:
    import subprocess
    import sys

    # in a fresh interpreter, as a worker process does it (the memo must not leak into this test run)
    script = """
import importlib
from azure.durable_functions.models.history import HistoryEvent as Event
from azure.durable_functions.models.history import HistoryEventType as T
from local_runtime.durable import calls
stamps = ["2026-12-06T06:30:38.123456Z", "2026-12-06T06:30:38Z", "2026-12-06T07:30:38.5+01:00"]
plain = [Event(T.TASK_COMPLETED, 1, True, s).timestamp for s in stamps]
calls.memoize_history_timestamps()
calls.memoize_history_timestamps()  # idempotent: one memo
memo = [[Event(T.TASK_COMPLETED, 1, True, s).timestamp for s in stamps] for _ in range(3)]
m = importlib.import_module("azure.durable_functions.models.history.HistoryEvent")
info = m.dt_parse.cache_info()
assert all(row == plain for row in memo), (memo, plain)
assert all(type(a.tzinfo) is type(b.tzinfo) for a, b in zip(memo[0], plain))
assert (info.misses, info.hits) == (3, 6), info
try:
    Event(T.TASK_COMPLETED, 1, True, "not a time")
except Exception as exc:
    print("raises", type(exc).__name__)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("raises"), out.stdout
