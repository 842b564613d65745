"""The host's safety rails: the durable RPC base answers loopback clients only whatever address the host
binds, and one host per state directory (a second one refuses, naming the holder's pid)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from local_runtime.azurite import Azurite
from tests.runtime.conftest import APPS, RuntimeProcess, wait_until

pytestmark = pytest.mark.slow


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (the source of a connection made to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # UDP: no packet is sent, the kernel only picks a source address
        except OSError:
            return None
        addr = str(s.getsockname()[0])
    return None if addr.startswith("127.") else addr


def test_rpc_is_loopback_only_and_the_state_dir_has_one_host(
    runtime: Callable[..., RuntimeProcess], azurite: Azurite, tmp_path: Path
) -> None:
    addr = non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call from")
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "RUNTIME_TEST_EVENTS": str(tmp_path / "ev.jsonl"),
    }
    rp = runtime("durable_app", tmp_path / "state", env, "--host", "0.0.0.0")
    port = rp.url.rsplit(":", 1)[1]
    local, remote = f"http://127.0.0.1:{port}", f"http://{addr}:{port}"

    # from another address: the RPC base refuses everything (start, list, purge), the keyed webhook works
    for method, path in (
        ("POST", "/durabletask/orchestrators/greet"),
        ("GET", "/durabletask/instances"),
        ("DELETE", "/durabletask/instances?createdTimeFrom=2000-01-01T00:00:00Z"),
    ):
        r = requests.request(method, remote + path, json="Eve", timeout=10)
        assert r.status_code == 403, (method, path, r.status_code)
        assert "loopback" in r.text
    code = (tmp_path / "state" / "durabletask_extension.key").read_text().strip()
    r = requests.post(
        f"{remote}/runtime/webhooks/durabletask/orchestrators/greet?code={code}", json=json.dumps("Web")
    )
    assert r.status_code == 202
    assert (
        requests.post(f"{remote}/runtime/webhooks/durabletask/orchestrators/greet", json="x").status_code
        == 401
    )

    # from loopback the RPC base works, and so does the app's own client (its rpcBaseUrl is 0.0.0.0:port)
    r = requests.post(f"{local}/durabletask/orchestrators/greet/rpc-1", json=json.dumps("Lo"), timeout=10)
    assert r.status_code == 202
    r = requests.post(f"{local}/api/start/Ann", timeout=10)
    assert r.status_code == 202
    status = f"{local}/durabletask/instances/rpc-1"
    wait_until(lambda: requests.get(status, timeout=10).json()["runtimeStatus"] == "Completed")

    # a second host on the same state directory refuses to start and names the first one's pid
    second = RuntimeProcess("durable_app", tmp_path / "state", env)
    try:
        assert second.proc.wait(60) == 1
    finally:
        second.stop()
    assert f"in use by another local_runtime host (pid {rp.proc.pid})" in second.output
    assert "--state-dir" in second.output
    assert "Listening on" not in second.output
    # ... and the first keeps running untouched
    assert rp.proc.poll() is None
    r = requests.post(f"{local}/durabletask/orchestrators/greet/rpc-2", json=json.dumps("Still"), timeout=10)
    assert r.status_code == 202
    done = wait_until(
        lambda: (
            requests.get(f"{local}/durabletask/instances/rpc-2", timeout=10).json()["runtimeStatus"]
            == "Completed"
        )
    )
    assert done


def test_a_killed_host_leaves_the_state_dir_usable(
    runtime: Callable[..., RuntimeProcess], azurite: Azurite, tmp_path: Path
) -> None:
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "RUNTIME_TEST_EVENTS": str(tmp_path / "ev.jsonl"),
    }
    first = runtime("durable_app", tmp_path / "state", env)
    first.stop(9)
    again = runtime("durable_app", tmp_path / "state", env)
    assert (tmp_path / "state" / "host.lock").read_text().strip() == str(again.proc.pid)


EDITED_APP = """
import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.orchestration_trigger(context_name="context")
def flow(context: df.DurableOrchestrationContext):
    first = yield context.call_activity("{first}", 1)
    go = yield context.wait_for_external_event("go")
    return [first, go]


@app.activity_trigger(input_name="x")
def step_a(x: int) -> str:
    return "a"


@app.activity_trigger(input_name="x")
def step_b(x: int) -> str:
    return "b"
"""


def test_an_orchestrator_edited_while_an_instance_runs_fails_it_as_non_deterministic(
    runtime: Callable[..., RuntimeProcess], tmp_path: Path
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "host.json").write_text('{"version": "2.0"}')
    (app / "function_app.py").write_text(EDITED_APP.replace("{first}", "step_a"))
    state = tmp_path / "state"
    rp = runtime(app, state)
    base = f"{rp.url}/durabletask/instances/edited"
    assert requests.post(f"{rp.url}/durabletask/orchestrators/flow/edited", timeout=10).status_code == 202

    def history() -> list[dict[str, object]]:
        return list(requests.get(f"{base}?showHistory=true", timeout=10).json()["historyEvents"])

    wait_until(lambda: any(e["EventType"] == "TaskCompleted" for e in history()), what="step_a to complete")
    rp.stop()
    # the developer edits the orchestrator (the host restarts on a file change, as func start does)
    (app / "function_app.py").write_text(EDITED_APP.replace("{first}", "step_b"))
    rp = runtime(app, state)
    base = f"{rp.url}/durabletask/instances/edited"
    r = requests.post(f"{base}/raiseEvent/go", json=True, timeout=10)
    assert r.status_code == 202
    status = wait_until(
        lambda: (s := requests.get(base, timeout=10).json())["runtimeStatus"] == "Failed" and s, what="Failed"
    )
    assert status["output"] == (
        "Non-Deterministic workflow detected: A previous execution of this orchestration scheduled an "
        "activity task with sequence number 0 and name 'step_a' (version ''), but the current orchestration "
        "replay instead scheduled an activity task named 'step_b' with this sequence number. Was a change "
        "made to the orchestrator code after this instance had already started running?"
    )
    done = [e for e in history() if e["EventType"] == "ExecutionCompleted"]
    assert done and done[0]["FailureDetails"]["ErrorType"].endswith("NonDeterministicOrchestrationException")
    assert "step_b" not in str([e for e in history() if e["EventType"] == "TaskScheduled"])


def test_an_instance_the_host_cannot_process_fails_after_five_attempts(
    runtime: Callable[..., RuntimeProcess], tmp_path: Path
) -> None:
    """A host-side error (here: a history row SQLite holds but nobody can parse) is retried with back-off,
    then the instance fails with the error instead of being retried forever; other instances go on."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "host.json").write_text('{"version": "2.0"}')
    (app / "function_app.py").write_text(EDITED_APP.replace("{first}", "step_a"))
    state = tmp_path / "state"
    rp = runtime(app, state)
    assert requests.post(f"{rp.url}/durabletask/orchestrators/flow/bad", timeout=10).status_code == 202
    wait_until(
        lambda: (
            "TaskCompleted"
            in str(requests.get(f"{rp.url}/durabletask/instances/bad?showHistory=true", timeout=10).json())
        )
    )
    rp.stop()
    with sqlite3.connect(state / "durable.sqlite") as db:
        db.execute("UPDATE history SET event='{not json' WHERE instance_id='bad' AND idx=1")
    rp = runtime(app, state)
    assert (
        requests.post(f"{rp.url}/durabletask/instances/bad/raiseEvent/go", json=1, timeout=10).status_code
        == 202
    )
    assert requests.post(f"{rp.url}/durabletask/orchestrators/flow/good", timeout=10).status_code == 202
    assert (
        requests.post(f"{rp.url}/durabletask/instances/good/raiseEvent/go", json=1, timeout=10).status_code
        == 202
    )
    wait_until(
        lambda: (
            requests.get(f"{rp.url}/durabletask/instances/good", timeout=10).json()["runtimeStatus"]
            == "Completed"
        ),
        what="the other instance to complete",
    )
    status = wait_until(
        lambda: (
            (s := requests.get(f"{rp.url}/durabletask/instances/bad", timeout=10).json())["runtimeStatus"]
            == "Failed"
            and s
        ),
        timeout=30,
    )
    assert status["output"].startswith("The host could not process this instance after 5 attempts: ")
    assert "JSONDecodeError" in status["output"]
    assert len(re.findall(r"processing bad failed \(attempt \d of 5\)", rp.output)) == 4


def _status(rp: RuntimeProcess, iid: str) -> dict[str, object]:
    return dict(requests.get(f"{rp.url}/durabletask/instances/{iid}", timeout=10).json())


def _start(rp: RuntimeProcess, name: str, iid: str, value: object = None) -> None:
    r = requests.post(f"{rp.url}/durabletask/orchestrators/{name}/{iid}", json=json.dumps(value), timeout=10)
    assert r.status_code == 202, r.text


def _final(rp: RuntimeProcess, iid: str, timeout: float = 40) -> dict[str, object]:
    return dict(
        wait_until(
            lambda: (s := _status(rp, iid))["runtimeStatus"] in ("Completed", "Failed") and s,
            timeout=timeout,
            what=f"{iid} to finish",
        )
    )


def test_stuck_functions_time_out_and_the_rest_keeps_running(
    runtime: Callable[..., RuntimeProcess], tmp_path: Path
) -> None:
    """functionTimeout (3 s) for an orchestrator in `while True` and a sync activity sleeping 30 s: both fail
    with the host's timeout message, their worker is recycled, other instances complete meanwhile."""
    rp = runtime("unruly_app", tmp_path / "state", {"UNRULY_MARKS": str(tmp_path)})
    host_pid = rp.proc.pid
    _start(rp, "spin", "spin")
    _start(rp, "sleeper", "sleeper")
    for i in range(3):
        _start(rp, "quick", f"quick-{i}", str(i))
    for i in range(3):  # while the stuck ones still run
        done = _final(rp, f"quick-{i}", timeout=15)
        assert done["runtimeStatus"] == "Completed" and done["output"]["pid"] != host_pid  # type: ignore[index]
    assert _status(rp, "spin")["runtimeStatus"] in ("Pending", "Running")  # its first episode never ends
    spin = _final(rp, "spin")
    assert spin["runtimeStatus"] == "Failed"
    assert spin["output"] == (
        "Orchestrator function 'spin' failed: FunctionTimeoutException: "
        "Timeout value of 00:00:03 was exceeded by function: Functions.spin"
    )
    sleeper = _final(rp, "sleeper")
    assert sleeper["runtimeStatus"] == "Failed"
    assert (
        "Activity function 'sleepy' failed: FunctionTimeoutException: "
        "Timeout value of 00:00:03 was exceeded by function: Functions.sleepy" in str(sleeper["output"])
    )
    assert "Timeout value of 00:00:03 exceeded by function 'Functions.spin'" in rp.output
    assert "recycling its worker process" in rp.output
    # the host is still up and a fresh worker runs new work
    assert rp.proc.poll() is None
    _start(rp, "quick", "after", "after")
    assert _final(rp, "after")["runtimeStatus"] == "Completed"


def test_a_worker_killed_mid_activity_retries_it_and_the_host_survives(
    runtime: Callable[..., RuntimeProcess], tmp_path: Path
) -> None:
    rp = runtime("unruly_app", tmp_path / "state", {"UNRULY_MARKS": str(tmp_path)})
    _start(rp, "victim", "victim", "k1")
    marks = tmp_path / "k1.jsonl"
    wait_until(marks.exists, what="the activity to start")
    worker = json.loads(marks.read_text().splitlines()[0])["pid"]
    assert worker != rp.proc.pid
    os.kill(worker, signal.SIGKILL)
    done = _final(rp, "victim")
    assert done["runtimeStatus"] == "Completed" and done["output"] == 2  # ran again, in a new worker
    pids = [json.loads(line)["pid"] for line in marks.read_text().splitlines()]
    assert pids[0] == worker and pids[1] != worker
    assert rp.proc.poll() is None
    assert f"worker process {worker} exited" in rp.output


def test_functions_worker_process_count_is_honoured(
    runtime: Callable[..., RuntimeProcess], tmp_path: Path
) -> None:
    env = {"UNRULY_MARKS": str(tmp_path), "FUNCTIONS_WORKER_PROCESS_COUNT": "2"}
    rp = runtime("unruly_app", tmp_path / "state", env)
    _start(rp, "fan", "fan", 8)
    out = _final(rp, "fan")["output"]
    pids = {o["pid"] for o in out}  # type: ignore[union-attr]
    assert len(pids) == 2 and rp.proc.pid not in pids
    bad = RuntimeProcess("unruly_app", tmp_path / "state2", {"FUNCTIONS_WORKER_PROCESS_COUNT": "11"})
    try:
        assert bad.proc.wait(60) == 1
    finally:
        bad.stop()
    assert "FUNCTIONS_WORKER_PROCESS_COUNT must be from 1 to 10, not 11" in bad.output


@pytest.mark.parametrize("limit", [1, 3])
def test_max_concurrent_orchestrator_functions(
    runtime: Callable[..., RuntimeProcess], tmp_path: Path, limit: int
) -> None:
    app = tmp_path / "app"
    shutil.copytree(APPS / "unruly_app", app)
    host = {"version": "2.0", "extensions": {"durableTask": {"maxConcurrentOrchestratorFunctions": limit}}}
    (app / "host.json").write_text(json.dumps(host))
    rp = runtime(app, tmp_path / "state", {"UNRULY_MARKS": str(tmp_path)})
    for i in range(3):
        _start(rp, "blocky", f"b{i}", str(i))
    for i in range(3):
        assert _final(rp, f"b{i}")["output"] == str(i)
    running = peak = 0
    events = [json.loads(line) for line in (tmp_path / "blocky.jsonl").read_text().splitlines()]
    for e in sorted(events, key=lambda e: e.get("start", e.get("end"))):
        running += 1 if "start" in e else -1
        peak = max(peak, running)
    assert peak == (1 if limit == 1 else 3)


def test_an_http_function_past_function_timeout_fails_with_the_hosts_message(
    runtime: Callable[..., RuntimeProcess], tmp_path: Path
) -> None:
    app = tmp_path / "app"
    shutil.copytree(APPS / "http_app", app)
    (app / "host.json").write_text(
        json.dumps(
            {"version": "2.0", "functionTimeout": "00:00:02", "extensions": {"http": {"routePrefix": "api"}}}
        )
    )
    rp = runtime(app, tmp_path / "state", {"LOCAL_RUNTIME_SHUTDOWN_GRACE": "1"})
    r = requests.get(f"{rp.url}/api/sleepy", timeout=30)
    assert r.status_code == 500
    rp.wait_for_line(
        r"Timeout value of 00:00:02 exceeded by function 'Functions\.sleepy'.* Initiating cancellation"
    )
    rp.wait_for_line(
        r"FunctionTimeoutError: Timeout value of 00:00:02 was exceeded by function: Functions\.sleepy"
    )
    assert requests.get(f"{rp.url}/api/hello/x", timeout=10).status_code == 200
