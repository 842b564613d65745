"""Orchestrations and activities through the real SDK replay and the real DurableOrchestrationClient."""

from __future__ import annotations

import json
import time
import uuid

import aiohttp
import azure.functions as func

from .helpers import wait_for


def test_sequence_fan_out_custom_status(server, run):
    c = server.client()
    iid = run(c.start_new("hello_sequence", None, None))
    st = wait_for(run, c, iid)
    assert st.runtime_status.value == "Completed"
    assert st.output == ["Hello Tokyo!", "Hello Seattle!", "Hello A!", "Hello B!", "Hello C!"]
    assert st.custom_status == {"stage": "fan-out"}


def test_input_is_double_encoded_like_the_real_host(server, run):
    c = server.client()
    iid = run(c.start_new("fan_out", f"fan-{uuid.uuid4().hex}", 20))
    st = wait_for(run, c, iid)
    assert st.output == sum(range(1, 21))
    # start_new sends the JSON text as a JSON string; the status reports it as that string
    assert st.input_ == "20"


def test_chained_sync_and_async_activities(server, run):
    c = server.client()
    iid = run(c.start_new("chain", None, 5))
    assert wait_for(run, c, iid).output == 10


def test_is_replaying_follows_is_played(server, run):
    """Earlier episodes' events carry IsPlayed=true: only the code after the newest event runs 'live'."""
    c = server.client()
    iid = run(c.start_new("replay_flags", None, None))
    assert wait_for(run, c, iid).output == [True, True, True, False]


def test_a_blocking_orchestrator_does_not_stall_the_host(server, run, tmp_path):
    c = server.client()
    iid = run(c.start_new("gated", None, str(tmp_path)))
    deadline = time.monotonic() + 10
    while not (tmp_path / "entered").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (tmp_path / "entered").exists()
    try:
        # the orchestrator is blocked right now; the HTTP API still answers
        assert run(c.get_status(iid)).runtime_status.value in ("Pending", "Running")
    finally:
        (tmp_path / "open").touch()
    assert wait_for(run, c, iid).output == "released"


def test_sys_exit_in_function_code_fails_the_function_not_the_host(server, run):
    c = server.client()
    iid = run(c.start_new("exit_in_activity", None, None))
    assert wait_for(run, c, iid).output == "Activity function 'exits' failed: SystemExit: 3"
    iid = run(c.start_new("exit_in_orchestrator", None, None))
    st = wait_for(run, c, iid)
    assert st.runtime_status.value == "Failed" and "SystemExit: 4" in st.output
    iid = run(c.start_new("chain", None, 1))
    assert wait_for(run, c, iid).output == 2  # the host still runs


def test_unhandled_activity_failure_fails_the_orchestration(server, run):
    c = server.client()
    iid = run(c.start_new("unhandled_failure", None, None))
    st = wait_for(run, c, iid)
    assert st.runtime_status.value == "Failed"
    assert st.output.startswith("Orchestrator function 'unhandled_failure' failed: ")
    assert "Activity function 'always_fails' failed: RuntimeError: nope boom" in st.output


def test_unknown_orchestrator_is_a_400_with_the_hosts_message(server, run):
    c = server.client()
    try:
        run(c.start_new("no_such_orchestrator", None, None))
    except Exception as e:
        assert "doesn't exist" in str(e)
    else:
        raise AssertionError("start_new of an unknown orchestrator must raise")


def test_duplicate_running_instance_id_is_refused(server, run):
    c = server.client()
    iid = f"dup-{uuid.uuid4().hex}"
    run(c.start_new("waiter", iid, None))
    try:
        run(c.start_new("waiter", iid, None))
    except Exception as e:
        assert "already exists" in str(e)
    else:
        raise AssertionError("a second start with a running id must fail")
    run(c.terminate(iid, "cleanup"))
    wait_for(run, c, iid)


def test_status_codes_and_history(server, run):
    c = server.client()
    iid = run(c.start_new("waiter", None, None))
    wait_for(run, c, iid, ("Running",))

    async def get(url):
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return r.status, (await r.json() if r.content_length else None), dict(r.headers)

    code, body, headers = run(get(f"{server.host.rpc_base_url}instances/{iid}"))
    assert code == 202 and body["customStatus"] == "waiting" and headers["Retry-After"] == "5"
    code, _, _ = run(get(f"{server.host.rpc_base_url}instances/nope-{uuid.uuid4().hex}"))
    assert code == 404
    run(c.raise_event(iid, "Go", "now"))
    st = wait_for(run, c, iid)
    # quirk #295: the Python client encodes event data twice and the host undoes only one layer
    assert st.output == 'Hello "now"!'

    code, body, _ = run(
        get(f"{server.host.rpc_base_url}instances/{iid}?showHistory=true&showHistoryOutput=true")
    )
    assert code == 200
    kinds = [e["EventType"] for e in body["historyEvents"]]
    assert kinds[0] == "ExecutionStarted" and kinds[-1] == "ExecutionCompleted"
    done = [e for e in body["historyEvents"] if e["EventType"] == "TaskCompleted"]
    assert done[0]["FunctionName"] == "say_hello" and done[0]["Result"] == 'Hello "now"!'


def test_webhook_urls_need_the_system_key(server, run):
    c = server.client()
    req = func.HttpRequest("POST", f"{server.base_url}/api/orchestrators/chain", body=b"")
    resp = c.create_check_status_response(req, "abc")
    payload = json.loads(resp.get_body())
    assert payload["statusQueryGetUri"].startswith(
        f"{server.base_url}/runtime/webhooks/durabletask/instances/abc?"
    )
    assert "taskHub=SampleHub" in payload["statusQueryGetUri"]
    iid = run(c.start_new("chain", None, 1))
    wait_for(run, c, iid)
    url = server.host.management_urls(iid)["statusQueryGetUri"]

    async def get(u):
        async with aiohttp.ClientSession() as s, s.get(u) as r:
            return r.status, await r.json() if r.status == 200 else None

    code, body = run(get(url))
    assert code == 200 and body["output"] == 2
    assert run(get(url.split("&code=")[0]))[0] == 401


def test_http_starter_function_with_the_client_binding(server, run):
    """The app's own durableClient HTTP function, called the way the worker calls it."""
    fn = server.functions["http_start"]
    binding = next(b for b in fn.bindings if b["type"] == "durableClient")
    req = func.HttpRequest(
        "POST",
        f"{server.base_url}/api/orchestrators/chain",
        body=b"3",
        route_params={"functionName": "chain"},
    )
    resp = run(fn.user_function(req=req, client=server.host.client_binding_json(binding)))
    assert resp.status_code == 202
    payload = json.loads(resp.get_body())
    st = wait_for(run, server.client(), payload["id"])
    assert st.output == 6
