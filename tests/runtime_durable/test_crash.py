"""kill -9 during a fan-out, restart on the same state dir: every instance finishes, and every activity
whose completion was committed before the kill ran exactly once (activities append to a log file)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

HERE = Path(__file__).parent
APP = HERE / "apps" / "durable_sample"
ROOT = HERE.parent.parent
M = 40


def _start(cmd: list[str], env: dict[str, str], ready: str, out: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the host with its output in a file (a full pipe would block it); wait for `ready`."""
    with out.open("ab") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        text = out.read_text(errors="replace")
        if ready in text:
            return proc, text
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError("host did not start:\n" + out.read_text(errors="replace")[-3000:])


def _committed_items(db: Path) -> set[str]:
    """Items of the activities whose completion is committed (history or inbox), read after the kill."""
    con = sqlite3.connect(db)
    items: set[str] = set()
    by_instance: dict[str, list[dict]] = {}
    for iid, text in con.execute(
        "SELECT instance_id, event FROM history UNION ALL SELECT instance_id, event FROM inbox"
    ):
        by_instance.setdefault(iid, []).append(json.loads(text))
    for events in by_instance.values():
        inputs = {e["EventId"]: json.loads(e["Input"]) for e in events if e["EventType"] == 4}
        items |= {
            inputs[e["TaskScheduledId"]]
            for e in events
            if e["EventType"] == 5 and e["TaskScheduledId"] in inputs
        }
    con.close()
    return items


def _crash_and_recover(tmp_path: Path, cmd: list[str], ready: str, base_of, via_http_function: bool) -> None:
    log = tmp_path / "activities.log"
    env = {
        **os.environ,
        "DURABLE_SAMPLE_LOG": str(log),
        "DURABLE_SAMPLE_SLOW": "0.05",
        "SAMPLE_HUB": "CrashHub",
        "PYTHONUNBUFFERED": "1",
    }
    state = tmp_path / "state"
    proc, line = _start(cmd, env, ready, tmp_path / "host1.out")
    try:
        rpc = base_of(line) + "/durabletask/"
        ids = []
        for tag in ("a", "b"):
            if via_http_function:  # the app's HTTP starter with its durableClient binding
                url = base_of(line) + "/api/orchestrators/slow_fan_out"
                r = requests.post(url, json={"tag": tag, "m": M}, timeout=10)
            else:  # the RPC endpoint, with the Python client's double encoding
                url = f"{rpc}orchestrators/slow_fan_out"
                r = requests.post(url, json=json.dumps({"tag": tag, "m": M}), timeout=10)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        # a durable timer pending across the crash
        r = requests.post(f"{rpc}orchestrators/approval", json=json.dumps(1.0), timeout=10)
        timer_id = r.json()["id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if log.exists() and len(log.read_text().splitlines()) >= M // 2:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ran_before = Counter(log.read_text().splitlines())
    assert 0 < sum(ran_before.values()) < 2 * M, "the kill did not land mid fan-out"
    committed = _committed_items(state / "durable.sqlite")
    assert committed, "nothing was committed before the kill"

    proc, line = _start(cmd, env, ready, tmp_path / "host2.out")
    try:
        rpc = base_of(line) + "/durabletask/"
        for iid in ids:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                body = requests.get(f"{rpc}instances/{iid}", timeout=10).json()
                if body["runtimeStatus"] in ("Completed", "Failed", "Terminated"):
                    break
                time.sleep(0.05)
            assert body["runtimeStatus"] == "Completed", body
            assert body["output"] == sum(range(1, M + 1))
        body = requests.get(f"{rpc}instances/{timer_id}", timeout=10).json()
        deadline = time.monotonic() + 30
        while body["runtimeStatus"] != "Completed" and time.monotonic() < deadline:
            time.sleep(0.05)
            body = requests.get(f"{rpc}instances/{timer_id}", timeout=10).json()
        assert body["output"] == "timed out"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    runs = Counter(line.split()[1] for line in log.read_text().splitlines())
    everything = {f"{tag}:{i}" for tag in "ab" for i in range(M)}
    assert set(runs) == everything
    again = {item for item, n in runs.items() if n > 1}
    assert not again & committed, f"committed activities ran again: {sorted(again & committed)}"
    # activities log when they start: only those in flight at the kill may run twice, at most
    # maxConcurrentActivityFunctions (4) of them
    print(f"committed before the kill: {len(committed)}, ran twice: {sorted(again)}")
    assert len(again) <= 4 and all(runs[i] == 2 for i in again), runs


@pytest.mark.slow
def test_kill_9_mid_fan_out_engine_only(tmp_path):
    cmd = [sys.executable, str(HERE / "durable_runner.py"), str(APP), str(tmp_path / "state")]
    _crash_and_recover(tmp_path, cmd, "READY ", lambda out: out.split("READY ")[1].split()[0], False)


@pytest.mark.slow
def test_kill_9_mid_fan_out_local_runtime_cli(tmp_path):
    """The same through `python -m local_runtime start` (the whole host, HTTP starter included)."""
    cmd = [
        sys.executable,
        "-m",
        "local_runtime",
        "start",
        str(APP),
        "--port",
        "0",
        "--state-dir",
        str(tmp_path / "state"),
    ]
    _crash_and_recover(tmp_path, cmd, "Ready", lambda out: out.split("Listening on ")[1].split()[0], True)


@pytest.mark.slow
def test_repeated_kills_at_random_moments(tmp_path):
    """Several kill -9s at random moments (mid-episode, mid-commit, mid-activity): after each, every
    activity whose completion was committed never runs again, and in the end everything completes."""
    import random

    rnd = random.Random(1234)
    log = tmp_path / "activities.log"
    env = {
        **os.environ,
        "DURABLE_SAMPLE_LOG": str(log),
        "DURABLE_SAMPLE_SLOW": "0.04",
        "SAMPLE_HUB": "CrashHub",
    }
    cmd = [sys.executable, str(HERE / "durable_runner.py"), str(APP), str(tmp_path / "state")]
    base_of = lambda out: out.split("READY ")[1].split()[0]  # noqa: E731
    proc, out = _start(cmd, env, "READY ", tmp_path / "run0.out")
    rpc = base_of(out) + "/durabletask/"
    ids = []
    for tag in ("p", "q", "r"):
        r = requests.post(
            f"{rpc}orchestrators/slow_fan_out", json=json.dumps({"tag": tag, "m": 30}), timeout=10
        )
        ids.append(r.json()["id"])
    chain = requests.post(f"{rpc}orchestrators/chain", json=json.dumps(15), timeout=10).json()["id"]
    checkpoints: list[tuple[int, set[str]]] = []
    try:
        for k in range(4):
            time.sleep(rnd.uniform(0.05, 0.25))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            size = log.stat().st_size if log.exists() else 0
            checkpoints.append((size, _committed_items(tmp_path / "state" / "durable.sqlite")))
            proc, out = _start(cmd, env, "READY ", tmp_path / f"run{k + 1}.out")
            rpc = base_of(out) + "/durabletask/"
        for iid in [*ids, chain]:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                body = requests.get(f"{rpc}instances/{iid}", timeout=10).json()
                if body["runtimeStatus"] in ("Completed", "Failed", "Terminated"):
                    break
                time.sleep(0.05)
            assert body["runtimeStatus"] == "Completed", body
        outputs = [requests.get(f"{rpc}instances/{i}", timeout=10).json()["output"] for i in ids]
        assert outputs == [sum(range(1, 31))] * 3
        assert requests.get(f"{rpc}instances/{chain}", timeout=10).json()["output"] == 30
    finally:
        proc.kill()
        proc.wait()
    text = log.read_bytes()
    runs = Counter(line.split()[1] for line in text.decode().splitlines() if line.startswith("slow_inc"))
    assert set(runs) == {f"{t}:{i}" for t in "pqr" for i in range(30)}
    for size, committed in checkpoints:
        later = {line.split()[1] for line in text[size:].decode().splitlines() if line.startswith("slow_inc")}
        assert not later & committed, (
            f"committed before a kill, ran again after it: {sorted(later & committed)}"
        )
    print("committed at each kill:", [len(c) for _, c in checkpoints], "runs:", sum(runs.values()))
    assert sum(len(c) for _, c in checkpoints) > 0


@pytest.mark.slow
def test_graceful_stop_lets_in_flight_activities_finish(tmp_path):
    """SIGINT (graceful stop): activities already running finish and their completions are committed,
    so nothing that started runs twice after a restart."""
    log = tmp_path / "activities.log"
    env = {
        **os.environ,
        "DURABLE_SAMPLE_LOG": str(log),
        "DURABLE_SAMPLE_SLOW": "0.3",
        "SAMPLE_HUB": "StopHub",
    }
    cmd = [sys.executable, str(HERE / "durable_runner.py"), str(APP), str(tmp_path / "state")]
    proc, out = _start(cmd, env, "READY ", tmp_path / "run.out")
    try:
        rpc = out.split("READY ")[1].split()[0] + "/durabletask/"
        r = requests.post(
            f"{rpc}orchestrators/slow_fan_out", json=json.dumps({"tag": "g", "m": 12}), timeout=10
        )
        assert r.status_code == 202
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (log.exists() and log.read_text().count("\n") >= 2):
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # say what state the host was in (seen once in a full run)
            status = Path(f"/proc/{proc.pid}/status").read_text()
            stack = (
                Path(f"/proc/{proc.pid}/stack").read_text()
                if Path(f"/proc/{proc.pid}/stack").exists()
                else ""
            )
            pytest.fail(f"the host did not stop within 30 s of SIGINT:\n{status}\n{stack}\n"
                        f"{(tmp_path / 'run.out').read_text()[-3000:]}")  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    started = {line.split()[1] for line in log.read_text().splitlines()}
    assert 0 < len(started) < 12
    assert started <= _committed_items(tmp_path / "state" / "durable.sqlite"), (
        "an in-flight activity was abandoned"
    )
