"""Host lifecycle: private Azurite for UseDevelopmentStorage=true, clean SIGTERM/SIGINT shutdown with no
leftover process, kill -9 leaves no Azurite behind, admin invocation, and startup errors that say what to do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from local_runtime.azurite import port_open
from tests.runtime.conftest import ROOT, RuntimeProcess, read_events, wait_until

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is gone for our purposes once it has no cmdline
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def start_private(tmp_path: Path) -> tuple[RuntimeProcess, int, int]:
    env = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "RUNTIME_TEST_EVENTS": str(tmp_path / "ev.jsonl"),
    }
    rp = RuntimeProcess("storage_app", tmp_path / "state", env, "--private-storage")
    rp.wait_ready()
    m = rp.wait_for_line(r"Azurite started \(pid (\d+)\): blob (\d+)")
    ports = rp.wait_for_line(r"^Azurite ports: blob=(\d+) queue=(\d+) table=(\d+)$")
    assert int(ports.group(1)) == int(m.group(2))
    return rp, int(m.group(1)), int(m.group(2))


def test_sigterm_stops_everything_and_admin_invoke(tmp_path: Path) -> None:
    rp, azurite_pid, blob_port = start_private(tmp_path)
    try:
        assert (tmp_path / "state" / "azurite").is_dir()  # emulator data under the state dir
        master = rp.keys["masterKey"]
        r = requests.post(
            f"{rp.url}/admin/functions/on_plain?code={master}", json={"input": "via admin"}, timeout=10
        )
        assert r.status_code == 202
        wait_until(lambda: [e for e in read_events(tmp_path / "ev.jsonl") if e.get("text") == "via admin"])
        fkey = rp.keys["functionKeys"]["default"]
        assert requests.post(f"{rp.url}/admin/functions/on_plain?code={fkey}", timeout=10).status_code == 401
    finally:
        assert rp.stop(signal.SIGTERM) == 0
    assert rp.lines[-1] == "Stopped"
    assert not alive(azurite_pid)
    assert not port_open(blob_port)


def test_kill_9_leaves_no_azurite(tmp_path: Path) -> None:
    rp, azurite_pid, _ = start_private(tmp_path)
    rp.stop(signal.SIGKILL)
    wait_until(lambda: not alive(azurite_pid), 15, "Azurite to exit after its host was killed")


def test_sigint_without_storage(runtime: Callable[..., RuntimeProcess], tmp_path: Path) -> None:
    rp = runtime("http_app", tmp_path)
    assert "Azurite" not in rp.output  # no storage configured: no emulator
    assert rp.stop(signal.SIGINT) == 0
    assert rp.lines[-1] == "Stopped"


def run_start(app_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "local_runtime", "start", str(app_dir), "--port", "0", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_startup_errors_name_the_problem(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    r = run_start(app, "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 1 and "host.json is missing" in r.stderr
    (app / "host.json").write_text(
        '{"version": "2.0", "extensions": {"queues": {"messageEncoding": "utf7"}}}'
    )
    r = run_start(app, "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 1 and "$.extensions.queues.messageEncoding" in r.stderr
    (app / "host.json").write_text('{"version": "2.0"}')
    (app / "function_app.py").write_text(
        "import azure.functions as func\napp = func.FunctionApp()\n"
        "@app.route(route='x/{id:nosuch}')\ndef f(req): return 'x'\n"
    )
    r = run_start(app, "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 1 and "unknown route constraint 'nosuch'" in r.stderr and "'f'" in r.stderr


def test_shutdown_does_not_wait_for_a_stuck_sync_function(tmp_path: Path) -> None:
    rp = RuntimeProcess("http_app", tmp_path, {"LOCAL_RUNTIME_SHUTDOWN_GRACE": "1"})
    rp.wait_ready()
    caller = threading.Thread(
        target=lambda: _swallow(lambda: requests.get(f"{rp.url}/api/sleepy", timeout=60))
    )
    caller.start()
    rp.wait_for_line(r"Executing 'Functions.sleepy'")
    rp.proc.send_signal(signal.SIGTERM)
    assert rp.proc.wait(timeout=30) == 0  # the function sleeps 120 s
    rp.stop()
    # it sleeps in the worker process, which stops with the host (nothing of it is left running)
    assert rp.lines[-1] == "Stopped"
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _worker_of(p, rp.app_dir)]
    caller.join(30)


def _worker_of(proc: Path, app_dir: Path) -> bool:
    try:
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    return b"local_runtime.durable.worker" in cmdline and str(app_dir).encode() in cmdline


def _swallow(call: Callable[[], object]) -> None:
    try:
        call()
    except requests.RequestException:
        pass
