"""`aib` against a small stand-in server (no runtime): --endpoint/--key, the ARM error printed with
exit code 2, the Azure provider's kept build VM named by `aib shell` (never a secret), and the ETA of
`run --follow` from the template's last successful run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from rich.console import Console

from aibcli.follow import View, expected_seconds
from aibcli.main import main

KEY = "test-key"
PREFIX = "/subscriptions/sub1/resourceGroups/rg/providers/Microsoft.VirtualMachineImages/imageTemplates/t"
AZURE_KEPT = [
    "/subscriptions/sub1/resourceGroups/IT_rg_t_1/providers/Microsoft.Compute/virtualMachines/vm-1",
    "/subscriptions/sub1/resourceGroups/IT_rg_t_1",
]
RUNS: dict[str, dict[str, Any]] = {
    "r1": {
        "name": "r1",
        "properties": {
            "runState": "Failed",
            "details": {"cleanup": {"kept": AZURE_KEPT, "removed": [], "errors": []}},
        },
    }
}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        if self.headers.get("x-functions-key") != KEY:
            self._send(401, None)
            return
        path = self.path.split("?")[0]
        if path == f"{PREFIX}/runs/r1":
            self._send(200, RUNS["r1"])
        elif path == f"{PREFIX}/runs":
            self._send(200, {"value": list(RUNS.values())})
        else:
            error = {
                "code": "ResourceNotFound",
                "message": "The image template 'x' was not found.",
                "target": "x",
            }
            self._send(404, {"error": error})

    def _send(self, status: int, body: Any) -> None:
        raw = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def args(url: str, *rest: str) -> list[str]:
    return [*rest, "--endpoint", url, "--key", KEY, "--subscription", "sub1"]


def test_an_api_error_prints_code_target_message_and_exits_2(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args(server, "show", "-g", "rg", "-n", "x")) == 2
    err = capsys.readouterr().err
    assert "error: ResourceNotFound: The image template 'x' was not found." in err
    assert "target: x" in err


def test_a_wrong_key_is_bad_input(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "-g", "rg", "-n", "t", "--endpoint", server, "--key", "wrong"]) == 2
    assert "HTTP401" in capsys.readouterr().err


def test_shell_on_the_azure_provider_names_the_kept_build_vm(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args(server, "shell", "-g", "rg", "-n", "t", "r1")) == 0
    out = capsys.readouterr().out
    assert "not on this machine" in out
    for rid in AZURE_KEPT:
        assert rid in out
    assert KEY not in out


def test_follow_shows_an_eta_from_the_last_successful_run() -> None:
    runs = [
        {
            "properties": {
                "runState": "Succeeded",
                "startTime": "2026-01-01T00:00:00Z",
                "endTime": "2026-01-01T00:02:00Z",
            }
        },
        {
            "properties": {
                "runState": "Failed",
                "startTime": "2026-01-02T00:00:00Z",
                "endTime": "2026-01-02T00:00:10Z",
            }
        },
    ]
    assert expected_seconds(runs) == 120.0
    view = View("r2", expected=120.0)
    view.update(
        {"properties": {"runState": "Running", "runSubState": "Customizing"}},
        "==> customize[0] (Shell): started\n",
    )
    console = Console(width=120, record=True)
    console.print(view.render())
    text = console.export_text()
    assert "ETA 1" in text and "(last success took 120s)" in text
    assert "customize[0] (Shell)" in text and "running" in text
