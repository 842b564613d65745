"""The host-side replayer alone: DTFx sequence numbers for the action shapes verified in
shared/reference/durable/scenarios_demo.py (retries, timers, events, entities, sub-orchestrations)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from local_runtime.durable import history as h
from local_runtime.durable.replay import replay_actions

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
        ev(h.TASK_SCHEDULED, 0),
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
        ev(h.SUB_ORCHESTRATION_CREATED, 0, InstanceId="child-42"),
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
        ev(h.TASK_SCHEDULED, 0),
        ev(h.ORCHESTRATOR_COMPLETED),
        ev(h.ORCHESTRATOR_STARTED),
        ev(h.TASK_COMPLETED, TaskScheduledId=0, Result="null"),
    ]
    r = replay_actions(actions, hist, T0)
    assert r.did_continue_as_new and r.continue_as_new == "4" and r.decisions == []
