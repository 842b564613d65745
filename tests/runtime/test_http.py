"""HTTP triggers on a real `python -m local_runtime start`: routes, constraints, methods, keys, outputs."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.runtime.conftest import RuntimeProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    rp = RuntimeProcess("http_app", tmp_path_factory.mktemp("http-state"))
    try:
        rp.wait_ready()
        yield rp
    finally:
        rp.stop()


def test_startup_lines_list_urls_with_keys(host: RuntimeProcess) -> None:
    keys = host.keys
    out = host.output
    assert f"  hello: [GET] {host.url}/api/hello/{{name}}" in out
    assert f"  echo: [POST] {host.url}/api/echo?code={keys['functionKeys']['default']}" in out
    assert keys["masterKey"] not in out  # the master key is never printed
    mode = stat.S_IMODE(os.stat(host.state_dir / "keys.json").st_mode)
    assert mode == 0o600


def test_routes_and_constraints(host: RuntimeProcess) -> None:
    u = host.url + "/api"
    r = requests.get(f"{u}/hello/World", timeout=10)
    assert (r.status_code, r.text, r.headers["content-type"]) == (
        200,
        "Hello, World!",
        "text/plain; charset=utf-8",
    )
    assert requests.get(f"{u}/items/42", timeout=10).json() == {"kind": "int", "id": "42", "method": "GET"}
    assert requests.put(f"{u}/items/7", timeout=10).json()["method"] == "PUT"
    assert requests.get(f"{u}/items/abc", timeout=10).json() == {"kind": "alpha", "slug": "abc"}
    assert requests.get(f"{u}/items/4a", timeout=10).status_code == 404  # neither int nor alpha
    assert requests.get(f"{u}/items/99999999999", timeout=10).status_code == 404  # int is 32-bit
    assert requests.get(f"{u}/files/a/b/c.txt", timeout=10).text == "rest=a/b/c.txt"
    assert requests.get(f"{u}/opt/x", timeout=10).json() == {"a": "x"}
    assert requests.get(f"{u}/opt/x/y", timeout=10).json() == {"a": "x", "b": "y"}
    # case-insensitive like the host; route values keep their case
    assert requests.get(f"{host.url}/API/HELLO/Ann", timeout=10).text == "Hello, Ann!"
    assert requests.get(f"{u}/hello/a%20b", timeout=10).text == "Hello, a b!"
    assert requests.get(f"{u}/nope", timeout=10).status_code == 404


def test_methods(host: RuntimeProcess) -> None:
    u = host.url + "/api"
    assert requests.post(f"{u}/hello/x", timeout=10).status_code == 404  # GET only
    assert requests.delete(f"{u}/items/1", timeout=10).status_code == 404  # GET, PUT only


def test_function_and_admin_keys(host: RuntimeProcess) -> None:
    keys = host.keys
    fkey, master = keys["functionKeys"]["default"], keys["masterKey"]
    u = host.url + "/api"
    assert requests.post(f"{u}/echo", timeout=10).status_code == 401
    assert requests.post(f"{u}/echo?code=wrong", timeout=10).status_code == 401
    assert requests.post(f"{u}/echo?code={fkey}", timeout=10).status_code == 201
    assert requests.post(f"{u}/echo", headers={"x-functions-key": fkey}, timeout=10).status_code == 201
    assert requests.post(f"{u}/echo", headers={"x-functions-key": master}, timeout=10).status_code == 201
    assert requests.get(f"{u}/admin-only?code={fkey}", timeout=10).status_code == 401
    r = requests.get(f"{u}/admin-only", headers={"x-functions-key": master}, timeout=10)
    assert (r.status_code, r.text) == (200, "admin ok")
    assert requests.get(f"{host.url}/admin/host/status", timeout=10).status_code == 401
    assert (
        requests.get(f"{host.url}/admin/host/status?code={master}", timeout=10).json()["state"] == "Running"
    )


def test_request_and_response_in_full(host: RuntimeProcess) -> None:
    fkey = host.keys["functionKeys"]["default"]
    r = requests.post(
        f"{host.url}/api/echo?code={fkey}&a=1",
        json={"x": [1, 2]},
        headers={"X-Test": "hi"},
        timeout=10,
    )
    assert r.status_code == 201
    assert r.headers["X-Echo"] == "yes"
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["params"] == {"code": fkey, "a": "1"}
    assert body["header"] == "hi"
    assert body["json"] == {"x": [1, 2]}
    assert body["url"].startswith(f"{host.url}/api/echo?")


def test_big_body(host: RuntimeProcess) -> None:
    fkey = host.keys["functionKeys"]["default"]
    data = os.urandom(8 * 1024 * 1024)
    r = requests.post(f"{host.url}/api/echo?code={fkey}", data=data, timeout=60)
    assert r.status_code == 201 and r.json()["len"] == len(data)


def test_exception_is_500_without_trace(host: RuntimeProcess) -> None:
    r = requests.get(f"{host.url}/api/boom", timeout=10)
    assert r.status_code == 500
    assert "secret detail" not in r.text and "Traceback" not in r.text
    host.wait_for_line(r"RuntimeError: secret detail that must not leak")
    host.wait_for_line(r"Executed 'Functions.boom' \(Failed")
    assert requests.get(f"{host.url}/api/wrong-type", timeout=10).status_code == 500
    host.wait_for_line(r"Function 'wrong_type' returned dict for its http output")


def test_named_output_context_and_no_content(host: RuntimeProcess) -> None:
    r = requests.get(f"{host.url}/api/named", timeout=10)
    assert (r.status_code, r.text) == (202, "named_output True")
    assert requests.get(f"{host.url}/api/nothing", timeout=10).status_code == 204


def test_function_logs_carry_the_function_name(host: RuntimeProcess) -> None:
    requests.get(f"{host.url}/api/hello/Logger", timeout=10)
    host.wait_for_line(r"\[hello\] saying hello to Logger")


def test_keys_persist_across_restarts(runtime: Callable[..., RuntimeProcess], tmp_path: Path) -> None:
    first = runtime("http_app", tmp_path)
    keys = first.keys
    assert first.stop() == 0
    second = runtime("http_app", tmp_path)
    assert second.keys == keys
    fkey = keys["functionKeys"]["default"]
    assert requests.post(f"{second.url}/api/echo?code={fkey}", timeout=10).status_code == 201
