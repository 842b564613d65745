"""Smaller behaviours where the host follows the real one: routes and operation names in any case, purging
an entity by its instance id, per-invocation thread-local storage in activities."""

from __future__ import annotations

import json
import time
import uuid

import azure.durable_functions as df
import requests

from .helpers import wait_for


def test_routes_and_operation_names_match_in_any_case(server, run):
    iid = f"case-{uuid.uuid4().hex[:8]}"
    r = requests.post(f"{server.base_url}/DurableTask/ORCHESTRATORS/waiter/{iid}", timeout=10)
    assert r.status_code == 202
    c = server.client()
    wait_for(run, c, iid, ("Running",))
    assert requests.get(f"{server.base_url}/durabletask/Instances/{iid}", timeout=10).status_code == 202
    key = server.host.system_key
    hook = f"{server.base_url}/Runtime/Webhooks/DurableTask/instances/{iid}"
    r = requests.post(f"{hook}/Suspend?reason=x&code={key}", timeout=10)
    assert r.status_code == 202
    wait_for(run, c, iid, ("Suspended",))
    assert requests.post(f"{hook}/RESUME?code={key}", timeout=10).status_code == 202
    wait_for(run, c, iid, ("Running",))
    assert requests.post(f"{hook}/Terminate?reason=bye&code={key}", timeout=10).status_code == 202
    assert wait_for(run, c, iid).runtime_status.value == "Terminated"
    assert requests.post(f"{hook}/Terminate?code=wrong", timeout=10).status_code == 401
    # a HEAD is not a GET on the real handler: 404
    assert requests.head(f"{server.base_url}/durabletask/instances/{iid}", timeout=10).status_code == 404


def test_delete_of_an_entity_instance_id_purges_the_entity(server, run):
    c = server.client()
    key = uuid.uuid4().hex[:8]
    eid = df.EntityId("Counter", key)
    run(c.signal_entity(eid, "add", 3))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not run(c.read_entity_state(eid)).entity_exists:
        time.sleep(0.02)
    url = f"{server.base_url}/durabletask/instances/@counter@{key}"
    r = requests.delete(url, timeout=10)
    assert r.status_code == 200 and r.json() == {"instancesDeleted": 1}
    assert not run(c.read_entity_state(eid)).entity_exists
    assert requests.delete(url, timeout=10).status_code == 404


def test_activity_context_has_thread_local_storage(server, run):
    c = server.client()
    iid = run(c.start_new("thread_local_user", None, None))
    st = wait_for(run, c, iid)
    assert st.runtime_status.value == "Completed", json.dumps(st.to_json())
    assert st.output == 42
