"""Retries, timers, events, sub-orchestrations, continue-as-new, entities and management operations."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import azure.durable_functions as df
import pytest

from local_runtime.durable import history as h

from .helpers import wait_for


def _ids(server, iid):
    """(EventType, id) of every scheduling/completion event, from the engine's persisted history."""
    out = []
    for e in server.host.engine.history_of(iid):
        t = e["EventType"]
        if t in (h.TASK_SCHEDULED, h.TIMER_CREATED, h.SUB_ORCHESTRATION_CREATED, h.EVENT_SENT):
            out.append((h.EVENT_NAMES[t], e["EventId"]))
        elif t in (
            h.TASK_COMPLETED,
            h.TASK_FAILED,
            h.SUB_ORCHESTRATION_COMPLETED,
            h.SUB_ORCHESTRATION_FAILED,
        ):
            out.append((h.EVENT_NAMES[t], e["TaskScheduledId"]))
        elif t == h.TIMER_FIRED:
            out.append((h.EVENT_NAMES[t], e["TimerId"]))
    return out


def test_retry_succeeds_with_dtfx_sequence_numbers(server, run):
    c = server.client()
    key = f"r{uuid.uuid4().hex[:8]}:3"
    iid = run(c.start_new("retry_then_ok", None, key))
    st = wait_for(run, c, iid)
    assert st.output == [f"{key.split(':')[0]} ok after 3", "Hello after!"]
    # attempt 0 fails, timer 1, attempt 2 fails, timer 3, attempt 4 succeeds, then the next activity is 5
    assert _ids(server, iid) == [
        ("TaskScheduled", 0),
        ("TaskFailed", 0),
        ("TimerCreated", 1),
        ("TimerFired", 1),
        ("TaskScheduled", 2),
        ("TaskFailed", 2),
        ("TimerCreated", 3),
        ("TimerFired", 3),
        ("TaskScheduled", 4),
        ("TaskCompleted", 4),
        ("TaskScheduled", 5),
        ("TaskCompleted", 5),
    ]


def test_retries_interleaved_with_other_work(server, run):
    c = server.client()
    tag = f"i{uuid.uuid4().hex[:6]}"
    iid = run(c.start_new("retry_interleaved", None, tag))
    st = wait_for(run, c, iid)
    assert st.runtime_status.value == "Completed", st.output
    out = st.output
    assert out[:3] == [f"{tag}A ok after 2", "Hello B!", f"{tag}C ok after 3"]
    assert out[3] in ("Hello E!", f"{tag}D ok after 2") and out[4] == "Hello F!"
    ids = _ids(server, iid)
    scheduled = [i for k, i in ids if k in ("TaskScheduled", "TimerCreated", "EventSent")]
    assert sorted(scheduled) == list(range(len(scheduled))), ids  # every id used once, none skipped
    assert scheduled[:3] == [0, 1, 2]


def test_max_concurrent_activity_functions(server, run):
    c = server.client()
    iid = run(c.start_new("probe_fan_out", None, None))
    st = wait_for(run, c, iid)
    assert 2 <= st.output <= 4  # host.json maxConcurrentActivityFunctions = 4


def test_retries_that_exhaust_raise_in_the_orchestrator(server, run):
    c = server.client()
    iid = run(c.start_new("retry_exhausts", None, None))
    st = wait_for(run, c, iid)
    assert st.runtime_status.value == "Completed"
    assert st.output["error"] == "Activity function 'always_fails' failed: RuntimeError: nope x"
    assert st.output["after"] == "Hello after!"
    ids = _ids(server, iid)
    # 3 attempts (0, 2, 4), their timers (1, 3) and the DTFx extra timer (5) before the exception; then 6
    assert [i for k, i in ids if k == "TaskScheduled"] == [0, 2, 4, 6]
    assert [i for k, i in ids if k == "TimerCreated"] == [1, 3, 5]


def test_sub_orchestration_retry(server, run):
    c = server.client()
    key = f"s{uuid.uuid4().hex[:8]}:2"
    iid = run(c.start_new("parent_retry", None, key))
    st = wait_for(run, c, iid)
    assert st.runtime_status.value == "Completed", st.output
    assert st.output == "child ok"
    ids = _ids(server, iid)
    assert ids[:4] == [
        ("SubOrchestrationInstanceCreated", 0),
        ("SubOrchestrationInstanceFailed", 0),
        ("TimerCreated", 1),
        ("TimerFired", 1),
    ]
    assert ids[4:] == [("SubOrchestrationInstanceCreated", 2), ("SubOrchestrationInstanceCompleted", 2)]


def test_nested_sub_orchestrations(server, run):
    c = server.client()
    iid = f"parent-{uuid.uuid4().hex[:8]}"
    run(c.start_new("parent", iid, None))
    st = wait_for(run, c, iid)
    # child(n) = sum(k+1 for k in 1..n)
    assert st.output == [9, [2, 5]]
    child = run(c.get_status(f"{iid}-child"))
    assert child.runtime_status.value == "Completed" and child.output == 9
    # default ids of the children: "{parentExecutionId}:{seq}"
    created = [e for e in server.host.engine.history_of(iid) if e["EventType"] == h.SUB_ORCHESTRATION_CREATED]
    assert created[0]["InstanceId"] == f"{iid}-child"
    assert [e["InstanceId"].rsplit(":", 1)[1] for e in created[1:]] == ["1", "2"]
    # such ids are URL-encoded in the management URLs and still resolve
    url = server.host.status_url(created[1]["InstanceId"])
    assert "%3A1?" in url

    async def get():
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return r.status, await r.json()

    code, body = run(get())
    assert code == 200 and body["output"] == 2


def test_event_beats_timer(server, run):
    c = server.client()
    iid = run(c.start_new("approval", None, 30))
    wait_for(run, c, iid, ("Running",))
    run(c.raise_event(iid, "Approval", True))
    st = wait_for(run, c, iid)
    # quirk #295 reproduced: raise_event(True) arrives as the string "true"
    assert st.output == {"approved": "true"}


def test_timer_beats_event(server, run):
    c = server.client()
    iid = run(c.start_new("approval", None, 0.3))
    st = wait_for(run, c, iid)
    assert st.output == "timed out"
    assert run(c.get_status(iid)).runtime_status.value == "Completed"


def test_timer_then_activity(server, run):
    c = server.client()
    t0 = time.monotonic()
    iid = run(c.start_new("timer_then_activity", None, None))
    st = wait_for(run, c, iid)
    assert st.output == "Hello timer!"
    assert time.monotonic() - t0 >= 0.3


def test_raw_event_bodies_arrive_as_json(server, run):
    """A raw JSON body (curl, not the Python client) arrives as JSON; two events feed two waits."""
    c = server.client()
    iid = run(c.start_new("two_waits", None, None))
    wait_for(run, c, iid, ("Running",))

    async def post(url, body):
        async with (
            aiohttp.ClientSession() as s,
            s.post(url, data=body, headers={"Content-Type": "application/json"}) as r,
        ):
            return r.status

    assert run(post(f"{server.host.rpc_base_url}instances/{iid}/raiseEvent/E", b'{"ok": true}')) == 202
    assert run(post(f"{server.host.rpc_base_url}instances/{iid}/raiseEvent/E", b"2")) == 202
    st = wait_for(run, c, iid)
    assert st.output == [{"ok": True}, 2]
    assert run(post(f"{server.host.rpc_base_url}instances/{iid}/raiseEvent/E", b"3")) == 410


def test_one_buffered_event_satisfies_two_waits(server, run):
    """SDK quirk (§8.2): an event raised before the waits resolves both of them, as on Azure."""
    c = server.client()
    iid = run(c.start_new("late_waits", None, None))
    wait_for(run, c, iid, ("Running",))
    run(c.raise_event(iid, "E", 1))
    st = wait_for(run, c, iid)
    assert st.output == ["1", "1"]


def test_durable_names(server, run):
    """call_activity(fn_obj) sends the def name, not activity=... (quirk §8.5); names are case-insensitive."""
    c = server.client()
    iid = run(c.start_new("calls_by_function_object", None, None))
    st = wait_for(run, c, iid)
    assert st.runtime_status.value == "Failed"
    assert (
        "The function 'original_def' doesn't exist, is disabled, or is not an activity function" in st.output
    )
    iid = run(c.start_new("calls_by_durable_name", None, None))
    assert wait_for(run, c, iid).output == 1


def test_continue_as_new(server, run):
    c = server.client()
    iid = run(c.start_new("eternal", None, 0))
    st = wait_for(run, c, iid)
    assert st.output == 5
    # the last execution's history starts over
    started = [e for e in server.host.engine.history_of(iid) if e["EventType"] == h.EXECUTION_STARTED]
    assert len(started) == 1 and started[0]["Input"] == '"4"'


def test_entities_from_orchestrator_and_client(server, run):
    c = server.client()
    key = uuid.uuid4().hex[:8]
    iid = run(c.start_new("counter_user", None, key))
    st = wait_for(run, c, iid)
    assert st.output == [15, 15, "bad op"]
    eid = df.EntityId("Counter", key)
    run(c.signal_entity(eid, "add", 7))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = run(c.read_entity_state(eid))
        if state.entity_exists and state.entity_state == 22:
            break
        time.sleep(0.02)
    assert state.entity_exists and state.entity_state == 22
    missing = run(c.read_entity_state(df.EntityId("Counter", "never-" + key)))
    assert not missing.entity_exists


def test_terminate(server, run):
    c = server.client()
    iid = run(c.start_new("waiter", None, None))
    wait_for(run, c, iid, ("Running",))
    run(c.terminate(iid, "no longer needed"))
    st = wait_for(run, c, iid)
    assert st.runtime_status.value == "Terminated" and st.output == "no longer needed"
    run(c.terminate(iid, "again"))  # 410 is accepted by the client


def test_terminating_a_sub_orchestration_fails_the_parents_task(server, run):
    c = server.client()
    iid = f"pw-{uuid.uuid4().hex[:8]}"
    run(c.start_new("parent_of_waiter", iid, None))
    wait_for(run, c, f"{iid}-w", ("Running",))
    run(c.terminate(f"{iid}-w", "stop it"))
    st = wait_for(run, c, iid)
    assert st.output == "child failed: Orchestration terminated: stop it"


def test_suspend_holds_events_until_resume(server, run):
    c = server.client()
    iid = run(c.start_new("waiter", None, None))
    wait_for(run, c, iid, ("Running",))
    run(c.suspend(iid, "pause"))
    wait_for(run, c, iid, ("Suspended",))
    run(c.raise_event(iid, "Go", 1))
    time.sleep(0.2)
    assert run(c.get_status(iid)).runtime_status.value == "Suspended"
    run(c.resume(iid, "go on"))
    st = wait_for(run, c, iid)
    assert st.output == "Hello 1!"  # the int 1 arrives as the string "1" (#295)
    kinds = [e["EventType"] for e in server.host.engine.history_of(iid)]
    assert h.EXECUTION_SUSPENDED in kinds and h.EXECUTION_RESUMED in kinds


def test_restart_same_and_new_id(server, run):
    c = server.client()
    iid = run(c.start_new("chain", None, 2))
    assert wait_for(run, c, iid).output == 4
    payload = run(c.restart(iid, restart_with_new_instance_id=True))
    assert isinstance(payload, dict) and payload["id"] != iid  # quirk: the body, not an id string
    assert wait_for(run, c, payload["id"]).output == 4
    again = run(c.restart(iid, restart_with_new_instance_id=False))
    assert again["id"] == iid
    assert wait_for(run, c, iid).output == 4


def test_rewind_reruns_failed_activities(server, run):
    c = server.client()
    key = f"w{uuid.uuid4().hex[:8]}:2"
    iid = run(c.start_new("failing_child", None, key))
    st = wait_for(run, c, iid)
    assert st.runtime_status.value == "Failed"
    run(c.rewind(iid, "try again"))
    st = wait_for(run, c, iid)
    assert st.runtime_status.value == "Completed" and st.output == "child ok"


def test_rewind_of_an_orchestrator_code_failure_fails_again(server, run):
    c = server.client()
    iid = run(c.start_new("code_failure", None, None))
    assert wait_for(run, c, iid).runtime_status.value == "Failed"
    run(c.rewind(iid, "no luck"))
    st = wait_for(run, c, iid)
    assert st.runtime_status.value == "Failed" and "deterministic bug" in st.output


def test_rewind_reaches_failed_sub_orchestrations(server, run):
    c = server.client()
    key = f"v{uuid.uuid4().hex[:8]}:2"
    iid = run(c.start_new("parent_plain", None, key))
    st = wait_for(run, c, iid)
    assert st.runtime_status.value == "Failed"
    assert "Orchestrator function 'failing_child' failed" in st.output
    run(c.rewind(iid, "again"))
    st = wait_for(run, c, iid)
    assert st.runtime_status.value == "Completed" and st.output == "parent got child ok"


def test_call_http_runs_as_the_builtin_http_activity(server, run):
    c = server.client()
    iid = run(c.start_new("http_caller", None, f"{server.host.rpc_base_url}instances/?top=1"))
    st = wait_for(run, c, iid)
    assert st.output == {"status": 200, "is_list": True}
    scheduled = [e for e in server.host.engine.history_of(iid) if e["EventType"] == h.TASK_SCHEDULED]
    assert scheduled[0]["Name"] == "BuiltIn::HttpActivity"


def test_call_http_follows_the_async_pattern(server, run):
    c = server.client()
    iid = run(
        c.start_new("http_poster", None, f"{server.base_url}/test/async-pattern/2?t={uuid.uuid4().hex}")
    )
    st = wait_for(run, c, iid)
    assert st.output == {"status": 200, "content": {"polls": 3, "method": "GET"}}


def test_query_filters_paging_and_purge(server, run):
    c = server.client()
    prefix = f"q{uuid.uuid4().hex[:6]}-"
    since = datetime.now(UTC) - timedelta(seconds=2)
    ids = [run(c.start_new("chain", f"{prefix}{i}", 1)) for i in range(5)]
    for i in ids:
        wait_for(run, c, i)
    running = run(c.start_new("waiter", f"{prefix}w", None))
    wait_for(run, c, running, ("Running",))
    all_ = run(c.get_status_all())
    assert {s.instance_id for s in all_} >= {*ids, running}
    by = run(c.get_status_by(created_time_from=since, runtime_status=[df.OrchestrationRuntimeStatus.Running]))
    assert running in {s.instance_id for s in by} and not set(ids) & {s.instance_id for s in by}

    async def page(token=None):
        headers = {"x-ms-continuation-token": token} if token else {}
        url = f"{server.host.rpc_base_url}instances/?instanceIdPrefix={prefix}&top=2"
        async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
            return [x["instanceId"] for x in await r.json()], r.headers.get("x-ms-continuation-token")

    seen, token = [], None
    for _ in range(5):
        got, token = run(page(token))
        seen += got
        if not token:
            break
    assert sorted(seen) == sorted([*ids, running])

    assert run(c.purge_instance_history(ids[0])).instances_deleted == 1
    assert not run(c.get_status(ids[0]))
    with pytest.raises(Exception, match="412"):  # running: refused with 412, as HttpApiHandler does
        run(c.purge_instance_history(running))
    res = run(
        c.purge_instance_history_by(
            created_time_from=since, runtime_status=[df.OrchestrationRuntimeStatus.Completed]
        )
    )
    assert res.instances_deleted >= 4
    assert not any(run(c.get_status(i)) for i in ids)
    run(c.terminate(running, "done"))
