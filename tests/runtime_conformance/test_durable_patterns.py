"""The public Durable Functions samples' patterns on `python -m local_runtime start`, driven over HTTP the
way users and tools drive them on Azure: HTTP starters, check-status payloads whose URLs are followed as
given, the status shape of the real host (Microsoft Learn "HTTP API reference"), events, timers,
continue_as_new, entities, blueprints, queries and purge through the client."""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.runtime.conftest import RuntimeProcess
from tests.runtime_conformance.conftest import Reply, http, poll

pytestmark = pytest.mark.timeout(120) if hasattr(pytest.mark, "timeout") else []

CHECK_STATUS_KEYS = {
    "id",
    "statusQueryGetUri",
    "sendEventPostUri",
    "terminatePostUri",
    "rewindPostUri",
    "purgeHistoryDeleteUri",
    "restartPostUri",
    "suspendPostUri",
    "resumePostUri",
}
HOST_CHECK_STATUS_KEYS = CHECK_STATUS_KEYS - {"rewindPostUri"}  # built by the host, not the SDK
STATUS_KEYS = {
    "name",
    "instanceId",
    "runtimeStatus",
    "input",
    "customStatus",
    "output",
    "createdTime",
    "lastUpdatedTime",
}
STATUS_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def check_status(reply: Reply, origin: str, keys: set[str] = CHECK_STATUS_KEYS) -> dict[str, Any]:
    """A check-status 202 exactly as create_check_status_response (or the host) builds it on Azure."""
    assert reply.status == 202, reply.body
    payload = reply.json()
    assert set(payload) == keys
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.headers["location"] == payload["statusQueryGetUri"]
    assert reply.headers["retry-after"] == "10"
    iid = payload["id"]
    for key, url in payload.items():
        if key == "id":
            continue
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == origin, (key, url)
        assert parts.path.startswith(f"/runtime/webhooks/durabletask/instances/{iid}"), (key, url)
        q = parse_qs(parts.query)
        assert q["taskHub"] == ["TestHubName"] and q["connection"] == ["Storage"] and q["code"][0], url
    assert "/raiseEvent/{eventName}?" in payload["sendEventPostUri"]
    assert "reason={text}" in payload["terminatePostUri"]
    return payload


def wait_done(status_url: str, timeout: float = 20.0) -> dict[str, Any]:
    """Follow statusQueryGetUri the way a client does: 202 while running, 200 when finished."""

    def done() -> dict[str, Any] | None:
        r = http("GET", status_url)
        if r.status == 202:
            assert r.headers["location"] and r.headers["retry-after"] == "5"
            assert r.json()["runtimeStatus"] in ("Pending", "Running", "Suspended")
            return None
        assert r.status == 200, (r.status, r.body)
        return r.json()

    return poll(done, timeout, f"{status_url} to finish")


def event_url(payload: dict[str, Any], name: str) -> str:
    return payload["sendEventPostUri"].replace("{eventName}", name)


def test_function_chaining_check_status_and_status_shape(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    payload = check_status(http("GET", f"{url}/api/orchestrators/my_orchestrator"), url)
    status = wait_done(payload["statusQueryGetUri"])
    assert set(status) == STATUS_KEYS
    assert status["name"] == "my_orchestrator" and status["instanceId"] == payload["id"]
    assert status["runtimeStatus"] == "Completed"
    assert status["input"] is None and status["customStatus"] is None
    assert status["output"] == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    assert STATUS_TIME.match(status["createdTime"]) and STATUS_TIME.match(status["lastUpdatedTime"])
    assert status["createdTime"] <= status["lastUpdatedTime"]

    r = http("GET", payload["statusQueryGetUri"] + "&showHistory=true&showHistoryOutput=true")
    events = r.json()["historyEvents"]
    kinds = [e["EventType"] for e in events]
    assert kinds == [
        "ExecutionStarted",
        "TaskCompleted",
        "TaskCompleted",
        "TaskCompleted",
        "ExecutionCompleted",
    ]
    assert events[0]["FunctionName"] == "my_orchestrator"
    assert [e["FunctionName"] for e in events[1:4]] == ["say_hello"] * 3
    assert [e["Result"] for e in events[1:4]] == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    assert all("ScheduledTime" in e and "Timestamp" in e for e in events[1:4])
    assert [e["Input"] for e in events[1:4]] == ['"Tokyo"', '"Seattle"', '"London"']  # showInput defaults on
    assert all("EventId" not in e and "IsPlayed" not in e and "TaskScheduledId" not in e for e in events)
    hidden = http("GET", payload["statusQueryGetUri"] + "&showHistory=true&showInput=false").json()
    assert hidden["input"] is None and all("Input" not in e for e in hidden["historyEvents"])
    assert events[-1]["OrchestrationStatus"] == "Completed"
    assert events[-1]["Result"] == status["output"]
    no_output = http("GET", payload["statusQueryGetUri"] + "&showHistory=true").json()["historyEvents"]
    assert all("Result" not in e for e in no_output)
    assert "historyEvents" not in http("GET", payload["statusQueryGetUri"]).json()

    # the key in the URL is what makes it work: without it the webhook is closed
    bare = payload["statusQueryGetUri"].split("&code=")[0]
    assert http("GET", bare).status == 401
    assert http("GET", bare + "&code=%C3%A9t%C3%A9").status == 401  # a non-ASCII key is just wrong

    purged = http("DELETE", payload["purgeHistoryDeleteUri"])
    assert purged.status == 200 and purged.json() == {"instancesDeleted": 1}
    gone = http("GET", payload["statusQueryGetUri"])
    assert gone.status == 404 and gone.body == b""
    assert http("DELETE", payload["purgeHistoryDeleteUri"]).status == 404


def test_fan_out_fan_in_with_json_body(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    payload = check_status(http("POST", f"{url}/api/start/fan_out_fan_in", {"items": 12}), url)
    status = wait_done(payload["statusQueryGetUri"])
    assert status["runtimeStatus"] == "Completed"
    assert status["output"] == sum(len(f"item-{i:02d}") + i for i in range(12))
    # start_new's client double-encodes the input: the real host reports it as a string of JSON text
    assert status["input"] == json.dumps({"items": 12})


def test_failed_orchestration_status(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    r = http("POST", f"{url}/api/startwait/fan_out_fan_in?timeout=10000", None)
    assert r.status == 500, r.body
    status = r.json()
    assert status["runtimeStatus"] == "Failed"
    assert "An input with 'items' is required" in status["output"]
    assert status["output"].startswith("Orchestrator function 'fan_out_fan_in' failed:")
    # the status URL answers 200 for Failed (500 only on request)
    listed = http("GET", f"{url}/api/instances?status=Failed").json()
    assert any(i["instanceId"] == status["instanceId"] for i in listed)


def test_wait_for_completion_returns_output_or_times_out(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    done = http("POST", f"{url}/api/startwait/my_orchestrator?timeout=15000", None)
    assert done.status == 200, done.body
    assert done.json() == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]

    slow = http("POST", f"{url}/api/startwait/approval_workflow?timeout=600", None)
    payload = check_status(slow, url)
    running = http("GET", payload["statusQueryGetUri"])
    assert running.status == 202 and running.json()["customStatus"] == "Waiting for approval"
    # a raw JSON body on sendEventPostUri arrives as JSON
    sent = http("POST", event_url(payload, "Approval"), "alice")
    assert sent.status == 202, sent.body
    status = wait_done(payload["statusQueryGetUri"])
    assert status["output"] == "Approved by alice"
    assert status["customStatus"] == {"approvedBy": "alice"}
    assert http("POST", event_url(payload, "Approval"), "late").status == 410


def test_human_interaction_event_races_timer(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    start = {"phone": "+15550100", "timeoutSeconds": 30}
    payload = check_status(http("POST", f"{url}/api/start/phone_verification", start), url)

    def history() -> list[dict[str, Any]]:
        return http("GET", payload["statusQueryGetUri"] + "&showHistory=true").json()["historyEvents"]

    # the user answers once the SMS is out (the orchestrator waits); a JSON number arrives as a number
    poll(lambda: any(e["EventType"] == "TimerCreated" for e in history()), 10, "the challenge timer")
    assert http("POST", event_url(payload, "SmsChallengeResponse"), 1111).status == 202
    poll(lambda: sum(e["EventType"] == "EventRaised" for e in history()) == 1, 10, "the first answer")
    assert http("GET", payload["statusQueryGetUri"]).status == 202  # wrong code: still waiting
    assert http("POST", event_url(payload, "SmsChallengeResponse"), 4242).status == 202
    status = wait_done(payload["statusQueryGetUri"])
    assert status["output"] is True
    # an activity's own logging is attributed to it (category Function.send_challenge.User)
    assert "[send_challenge] Sending challenge to +15550100" in durable_app.output

    expired = check_status(
        http("POST", f"{url}/api/start/phone_verification", {"phone": "+15550101", "timeoutSeconds": 1}), url
    )
    status = wait_done(expired["statusQueryGetUri"])
    assert status["output"] is False


def test_event_without_json_content_type_is_rejected(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    payload = check_status(http("GET", f"{url}/api/orchestrators/approval_workflow"), url)
    r = http("POST", event_url(payload, "Approval"), raw=b"bob", headers={"Content-Type": "text/plain"})
    assert r.status == 400
    http("POST", payload["terminatePostUri"].replace("{text}", "cleanup"))


def test_python_client_raise_event_double_encoding(durable_app: RuntimeProcess) -> None:
    """azure-functions-durable-python#295: raise_event's data arrives JSON-encoded once more."""
    url = durable_app.url
    payload = check_status(http("GET", f"{url}/api/orchestrators/approval_workflow"), url)
    assert http("POST", f"{url}/api/instances/{payload['id']}/approve", {"by": "bob"}).status == 202
    status = wait_done(payload["statusQueryGetUri"])
    assert status["output"] == 'Approved by "bob"'


def test_monitor_polls_until_done(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    job = {"jobId": "job-1", "pollingInterval": 0.3, "readyAt": time.time() + 1.0}
    job["expiryTime"] = "2100-01-01T00:00:00+00:00"
    payload = check_status(http("POST", f"{url}/api/start/job_monitor", job), url)
    status = wait_done(payload["statusQueryGetUri"])
    assert status["runtimeStatus"] == "Completed", status
    assert status["output"]["jobId"] == "job-1" and status["output"]["polls"] >= 2
    assert status["customStatus"] == {"polls": status["output"]["polls"], "lastStatus": "Completed"}


def test_eternal_orchestration_continue_as_new(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    payload = check_status(http("GET", f"{url}/api/orchestrators/periodic_cleanup"), url)
    status = wait_done(payload["statusQueryGetUri"])
    assert status["runtimeStatus"] == "Completed"
    assert status["output"] == {"round": 3, "cleaned": ["round-0", "round-1", "round-2"]}
    # the instance keeps its id and reports the input of its last generation
    assert status["instanceId"] == payload["id"]
    assert json.loads(status["input"]) == {"round": 2, "cleaned": ["round-0", "round-1"]}
    history = http("GET", payload["statusQueryGetUri"] + "&showHistory=true").json()["historyEvents"]
    assert history[0]["EventType"] == "ExecutionStarted"
    assert sum(e["EventType"] == "TaskCompleted" for e in history) == 1  # only the last generation


def test_blueprint_functions_are_registered(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    payload = check_status(http("POST", f"{url}/api/startOrchestrator"), url)
    status = wait_done(payload["statusQueryGetUri"])
    assert status["name"] == "bp_orchestrator" and status["output"] == ["Hi Oslo!", "Hi Lima!"]


def test_management_urls_suspend_resume_terminate_restart(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    payload = check_status(http("GET", f"{url}/api/orchestrators/approval_workflow"), url)
    poll(
        lambda: http("GET", payload["statusQueryGetUri"]).json()["runtimeStatus"] == "Running", 10, "Running"
    )
    assert http("POST", payload["suspendPostUri"].replace("{text}", "pause")).status == 202
    poll(
        lambda: http("GET", payload["statusQueryGetUri"]).json()["runtimeStatus"] == "Suspended",
        10,
        "Suspended",
    )
    assert http("POST", payload["resumePostUri"].replace("{text}", "go")).status == 202
    poll(
        lambda: http("GET", payload["statusQueryGetUri"]).json()["runtimeStatus"] == "Running", 10, "Running"
    )
    assert http("POST", payload["terminatePostUri"].replace("{text}", "stop+now")).status == 202
    status = wait_done(payload["statusQueryGetUri"])
    assert status["runtimeStatus"] == "Terminated" and status["output"] == "stop now"
    assert http("POST", payload["terminatePostUri"].replace("{text}", "again")).status == 410

    chain = check_status(http("GET", f"{url}/api/orchestrators/my_orchestrator"), url)
    wait_done(chain["statusQueryGetUri"])
    new = check_status(http("POST", chain["restartPostUri"]), url, HOST_CHECK_STATUS_KEYS)
    assert new["id"] != chain["id"]
    assert wait_done(new["statusQueryGetUri"])["output"] == [
        "Hello Tokyo!",
        "Hello Seattle!",
        "Hello London!",
    ]

    unknown = payload["statusQueryGetUri"].replace(payload["id"], "no-such-instance")
    assert http("GET", unknown).status == 404
    assert http("POST", event_url(payload, "x").replace(payload["id"], "no-such-instance"), 1).status == 404


def test_sync_durable_client_function_fails_as_on_azure(durable_app: RuntimeProcess) -> None:
    r = http("GET", f"{durable_app.url}/api/syncclient")
    assert r.status == 500 and r.body == b""


def test_create_http_management_payload(durable_app: RuntimeProcess) -> None:
    r = http("GET", f"{durable_app.url}/api/payload/abc123")
    assert r.status == 200
    payload = r.json()
    assert set(payload) == CHECK_STATUS_KEYS and payload["id"] == "abc123"
    assert http("GET", payload["statusQueryGetUri"]).status == 404


def test_webhook_start_and_wait(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    code = (durable_app.state_dir / "durabletask_extension.key").read_text().strip()
    base = f"{url}/runtime/webhooks/durabletask"
    r = http("POST", f"{base}/orchestrators/my_orchestrator?code={code}")
    payload = check_status(r, url, HOST_CHECK_STATUS_KEYS)
    wait_done(payload["statusQueryGetUri"])
    # a timeout without pollingInterval does not wait (both are needed)
    check_status(
        http("POST", f"{base}/orchestrators/approval_workflow/fixed-wait?timeout=5&code={code}"),
        url,
        HOST_CHECK_STATUS_KEYS,
    )
    # purge and rewind refuse a running instance with 412; restart of an unknown one is a 400
    running = f"{base}/instances/fixed-wait?code={code}"
    poll(lambda: http("GET", running).status == 202, 10, "fixed-wait to exist")
    assert http("DELETE", running).status == 412
    assert http("POST", f"{base}/instances/fixed-wait/rewind?code={code}").status == 412
    assert http("POST", f"{base}/instances/nope/restart?code={code}").status == 400
    assert (
        http("POST", f"{base}/instances/fixed-wait/restart?restartWithNewInstanceId=false&code={code}").status
        == 409
    )
    assert http("POST", f"{base}/instances/fixed-wait/terminate?code={code}").status == 202
    # the host's own wait answers 200 with the status for a Failed instance
    failed = http("POST", f"{base}/orchestrators/fan_out_fan_in?timeout=10&pollingInterval=0.2&code={code}")
    assert failed.status == 200 and failed.json()["runtimeStatus"] == "Failed"
    # wrong methods and unknown paths under the webhook base are 404s
    assert http("GET", f"{base}/orchestrators/my_orchestrator?code={code}").status == 404
    assert http("PUT", f"{base}/instances/fixed-wait?code={code}").status == 404
    waited = http("POST", f"{base}/orchestrators/say_hello_chain_missing?code={code}")
    assert waited.status == 400 and "doesn't exist" in waited.json()["ExceptionMessage"]
    done = http(
        "POST", f"{base}/orchestrators/my_orchestrator/fixed-id-1?timeout=15&pollingInterval=1&code={code}"
    )
    assert done.status == 200 and done.json() == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    listing = http("GET", f"{base}/instances?code={code}&instanceIdPrefix=fixed-id")
    assert listing.status == 200
    assert [(i["instanceId"], i["runtimeStatus"]) for i in listing.json()] == [("fixed-id-1", "Completed")]
    assert set(listing.json()[0]) == STATUS_KEYS


def test_counter_entity_client_and_webhooks(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    assert http("GET", f"{url}/api/counter/c1").json() == {"exists": False, "state": None}
    assert http("POST", f"{url}/api/counter/c1/add/5").status == 202
    assert http("POST", f"{url}/api/counter/c1/add/4").status == 202
    poll(lambda: http("GET", f"{url}/api/counter/c1").json() == {"exists": True, "state": 9}, 10, "counter 9")

    code = (durable_app.state_dir / "durabletask_extension.key").read_text().strip()
    base = f"{url}/runtime/webhooks/durabletask"
    # Python entities read their input with json.loads then df_loads: a JSON string body or a text body
    # works; a raw JSON number fails the operation on Azure too (the state does not change)
    assert http("POST", f"{base}/entities/Counter/c1?op=add&code={code}", 99).status == 202
    assert http("POST", f"{base}/entities/Counter/c1?op=add&code={code}", "3").status == 202
    text = {"Content-Type": "text/plain"}
    assert (
        http("POST", f"{base}/entities/Counter/c1?op=add&code={code}", raw=b"4", headers=text).status == 202
    )
    poll(lambda: http("GET", f"{base}/entities/Counter/c1?code={code}").body == b"16", 10, "counter 16")
    # entity names are case-insensitive on the host
    assert http("GET", f"{base}/entities/counter/c1?code={code}").json() == 16
    assert http("GET", f"{base}/entities/Counter/nope?code={code}").status == 404
    listed = http("GET", f"{base}/entities/Counter?code={code}").json()
    entry = next(e for e in listed if e["entityId"]["key"] == "c1")
    assert entry["entityId"] == {"name": "counter", "key": "c1"}
    assert STATUS_TIME.match(entry["lastOperationTime"][:19] + "Z")
    assert entry["state"] is None
    assert any(
        e["entityId"] == {"name": "counter", "key": "c1"}
        for e in http("GET", f"{base}/entities?code={code}").json()
    )
    with_state = http("GET", f"{base}/entities/Counter?fetchState=true&code={code}").json()
    assert next(e for e in with_state if e["entityId"]["key"] == "c1")["state"] == 16

    r = http("POST", f"{url}/api/start/counter_orchestrator", "c2")
    payload = check_status(r, url)
    assert wait_done(payload["statusQueryGetUri"])["output"] == 15


def test_client_queries_and_purge(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    ids = [check_status(http("GET", f"{url}/api/orchestrators/my_orchestrator"), url)["id"] for _ in range(3)]
    for iid in ids:
        wait_done(
            f"{url}/runtime/webhooks/durabletask/instances/{iid}?code="
            + (durable_app.state_dir / "durabletask_extension.key").read_text().strip()
        )
    everything = http("GET", f"{url}/api/instances").json()
    assert set(ids) <= {i["instanceId"] for i in everything}
    completed = http("GET", f"{url}/api/instances?status=Completed").json()
    assert set(ids) <= {i["instanceId"] for i in completed}
    assert all(i["runtimeStatus"] == "Completed" for i in completed)
    running = http("GET", f"{url}/api/instances?status=Running").json()
    assert not set(ids) & {i["instanceId"] for i in running}
    by_prefix = http("GET", f"{url}/api/instances?prefix={ids[0]}").json()
    assert [i["instanceId"] for i in by_prefix] == [ids[0]]

    detail = http("GET", f"{url}/api/instances/{ids[0]}").json()
    assert detail["runtimeStatus"] == "Completed" and detail["output"] == [
        "Hello Tokyo!",
        "Hello Seattle!",
        "Hello London!",
    ]
    assert [e["EventType"] for e in detail["historyEvents"]][-1] == "ExecutionCompleted"
    assert detail.get("history") is None  # DurableOrchestrationStatus.history stays None, as against Azure
    assert http("DELETE", f"{url}/api/instances/{ids[0]}").json() == {"deleted": 1}
    assert http("GET", f"{url}/api/instances/{ids[0]}").status == 404
    assert http("DELETE", f"{url}/api/instances/{ids[0]}").json() == {"deleted": 0}


def test_async_activities_and_named_loggers(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    payload = check_status(http("GET", f"{url}/api/FetchOrchestration_HttpStart"), url)
    status = wait_done(payload["statusQueryGetUri"])
    assert status["output"] == "Title of a; Title of b; Title of c"
    assert "[fetch_title] Fetching from url https://example.invalid/a." in durable_app.output
    assert "[FetchOrchestration] Fetching data." in durable_app.output


def test_timer_triggered_starter(durable_app: RuntimeProcess) -> None:
    code = (durable_app.state_dir / "durabletask_extension.key").read_text().strip()
    status_url = f"{durable_app.url}/runtime/webhooks/durabletask/instances/timer-started?code={code}"
    poll(lambda: http("GET", status_url).status != 404, 10, "the timer's orchestration")
    status = wait_done(status_url)
    assert status["name"] == "my_orchestrator" and status["runtimeStatus"] == "Completed"


def test_entity_operation_errors_reach_the_orchestrator(durable_app: RuntimeProcess) -> None:
    url = durable_app.url
    payload = check_status(http("POST", f"{url}/api/start/bank_orchestrator", "acct-1"), url)
    status = wait_done(payload["statusQueryGetUri"])
    assert status["runtimeStatus"] == "Completed", status
    assert status["output"]["balance"] == 30
    assert (
        status["output"]["outcome"].startswith("refused:")
        and "insufficient funds: 50 < 80" in status["output"]["outcome"]
    )


def test_listings_are_paged_by_100_by_default(durable_app: RuntimeProcess) -> None:
    code = (durable_app.state_dir / "durabletask_extension.key").read_text().strip()
    base = f"{durable_app.url}/runtime/webhooks/durabletask"
    first = http("GET", f"{base}/instances?top=2&code={code}")
    assert first.status == 200 and len(first.json()) == 2 and first.headers["x-ms-continuation-token"]
    token = first.headers["x-ms-continuation-token"]
    second = http("GET", f"{base}/instances?top=2&code={code}", headers={"x-ms-continuation-token": token})
    assert {i["instanceId"] for i in second.json()}.isdisjoint({i["instanceId"] for i in first.json()})
