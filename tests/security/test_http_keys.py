"""The HTTP surface under attack, for real: the project's API served by the local runtime (with Azurite):
every route needs the function key (absent or wrong: 401, the key never echoed), keys never appear in
Location / Azure-AsyncOperation headers, response bodies or the host's log, a 50 MB PUT gets a clear 413
(no 5xx), and a 500 body carries a correlation id, never a stack trace or the exception's text."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from api import _arm
from local_runtime.azurite import Azurite
from local_runtime.indexing import index_functions, load_app
from tests.api.conftest import LOCAL_CATALOG, Runtime, minimal_template

ROOT = Path(__file__).resolve().parents[2]
API = "api-version=2025-10-01"
PROVIDER = "providers/Microsoft.VirtualMachineImages"


@pytest.fixture(scope="module")
def runtime(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    # The templates name Marketplace URNs: mapped to local bases as the API tests map them (create fails
    # for a source with no local base, as AIB's does for an image that does not exist).
    rt = Runtime(
        tmp_path_factory.mktemp("sec-runtime"),
        {"AzureWebJobsStorage": azurite.connection_string, "IMAGEBUILDER_LOCAL_CATALOG": LOCAL_CATALOG},
    )
    try:
        yield rt
    finally:
        rt.stop()


def _routes(sub: str) -> list[tuple[str, str]]:
    t = f"/subscriptions/{sub}/resourceGroups/rg1/{PROVIDER}/imageTemplates/t1"
    loc = f"/subscriptions/{sub}/{PROVIDER}/locations/westus"
    return [
        ("GET", f"/{PROVIDER}/operations"),
        ("GET", f"/subscriptions/{sub}/providers/Microsoft.VirtualMachineImages"),
        ("GET", f"/subscriptions/{sub}/{PROVIDER}/imageTemplates"),
        ("GET", f"/subscriptions/{sub}/resourceGroups/rg1/{PROVIDER}/imageTemplates"),
        ("GET", t),
        ("HEAD", t),
        ("PUT", t),
        ("PATCH", t),
        ("DELETE", t),
        ("POST", t + "/run"),
        ("POST", t + "/cancel"),
        ("GET", t + "/runOutputs"),
        ("GET", t + "/runOutputs/vhd1"),
        ("GET", t + "/runs"),
        ("GET", t + "/runs/r1"),
        ("GET", t + "/runs/r1/logs/customization.log"),
        ("GET", t + "/triggers"),
        ("GET", t + "/triggers/tr1"),
        ("PUT", t + "/triggers/tr1"),
        ("DELETE", t + "/triggers/tr1"),
        ("GET", loc + "/operations/op1"),
        ("GET", loc + "/operationResults/op1"),
    ]


def test_no_http_function_of_the_app_is_anonymous() -> None:
    functions = index_functions(load_app(ROOT))
    http = [f for f in functions if f.trigger_type == "httpTrigger"]
    assert http, "the app has HTTP functions"
    for f in http:
        if f.name.startswith("dashboard_"):
            # The dashboard's pages are anonymous at the host level on purpose: they authenticate with
            # the session cookie its sign-in form issues for a valid function key (tests/dashboard shows
            # every page and action refused without it). Everything else needs the key itself.
            continue
        assert str(f.trigger.get("authLevel", "function")).lower() != "anonymous", f.name


def test_every_route_needs_the_function_key(runtime: Runtime) -> None:
    sub = str(uuid.uuid4())
    wrong = "WRONGKEY-" + uuid.uuid4().hex
    for method, path in _routes(sub):
        url = f"{runtime.url}{path}?{API}"
        for kwargs in ({}, {"headers": {"x-functions-key": wrong}}, {"params": {"code": wrong}}):
            resp = requests.request(
                method, url, json={} if method in ("PUT", "PATCH") else None, timeout=30, **kwargs
            )
            assert resp.status_code == 401, (method, path, kwargs, resp.status_code)
            assert wrong not in resp.text and wrong not in json.dumps(dict(resp.headers))
        ok = requests.request(method, url, headers={"x-functions-key": runtime.key}, timeout=30)
        assert ok.status_code != 401, (method, path)


def test_host_endpoints_need_their_keys(runtime: Runtime) -> None:
    for method, path in [
        ("GET", "/runtime/webhooks/durabletask/instances"),
        ("POST", "/runtime/webhooks/durabletask/orchestrators/build_image"),
        ("GET", "/admin/host/status"),
        ("GET", "/admin/functions"),
    ]:
        assert requests.request(method, runtime.url + path, timeout=30).status_code == 401, path
        wrong = requests.request(method, runtime.url + path, params={"code": "nope"}, timeout=30)
        assert wrong.status_code == 401, path
        # The function key is not the master key: it opens no admin endpoint.
        if path.startswith("/admin"):
            fk = requests.request(
                method, runtime.url + path, headers={"x-functions-key": runtime.key}, timeout=30
            )
            assert fk.status_code == 401, path


def test_keys_stay_out_of_headers_bodies_and_logs(runtime: Runtime) -> None:
    sub = str(uuid.uuid4())
    base = f"{runtime.url}/subscriptions/{sub}/resourceGroups/rg1/{PROVIDER}/imageTemplates/keyed"
    template = minimal_template()
    template["tags"] = {"test.seconds": "0"}
    params = {"api-version": "2025-10-01", "code": runtime.key}
    seen: list[str] = []
    first_line = len(runtime.lines)
    put = requests.put(base, params=params, json=template, timeout=30)
    assert put.status_code in (200, 201), put.text
    seen += [put.text, json.dumps(dict(put.headers))]
    run = requests.post(base + "/run", params=params, timeout=30)
    assert run.status_code == 202, run.text
    seen += [run.text, json.dumps(dict(run.headers))]
    for header in ("Location", "Azure-AsyncOperation"):
        assert "code=" not in run.headers[header]
        status = requests.get(run.headers[header], headers={"x-functions-key": runtime.key}, timeout=30)
        assert status.status_code in (200, 202)
        seen.append(status.text)
    for url in (base, base + "/runs", base + "/runOutputs"):
        seen.append(requests.get(url, params=params, timeout=30).text)
    for text in seen:
        assert runtime.key not in text
        assert "code=" not in text  # no key of any kind (durable system keys included)
    log_text = "\n".join(runtime.lines[first_line:])
    assert runtime.key not in log_text, "the function key is in the host's log of these requests"
    keys_file = runtime.state_dir / "keys.json"
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"


def test_a_50_mb_put_gets_a_clear_413(runtime: Runtime) -> None:
    sub = str(uuid.uuid4())
    url = f"{runtime.url}/subscriptions/{sub}/resourceGroups/rg1/{PROVIDER}/imageTemplates/big?{API}"
    template = minimal_template()
    template["properties"]["customize"][0]["inline"] = ["x" * 1024] * (50 * 1024)
    body = json.dumps(template).encode()
    assert len(body) > 50 * 1024 * 1024
    resp = requests.put(
        url,
        data=body,
        headers={"x-functions-key": runtime.key, "content-type": "application/json"},
        timeout=120,
    )
    assert resp.status_code == 413, resp.text[:300]
    assert resp.json()["error"]["code"] == "RequestEntityTooLarge"
    again = requests.get(
        f"{runtime.url}/{PROVIDER}/operations?{API}", headers={"x-functions-key": runtime.key}, timeout=30
    )
    assert again.status_code == 200


def test_500_bodies_carry_no_stack_trace_or_exception_text() -> None:
    secret = "AccountKey=" + "k" * 20
    try:
        raise RuntimeError(f"boom {secret} at /srv/state/keys.json")
    except RuntimeError as exc:
        resp = _arm._error_response(exc)
    body = resp.get_body().decode()
    assert resp.status_code == 500
    assert json.loads(body)["error"]["code"] == "InternalServerError"
    for leak in ("Traceback", "boom", secret, "keys.json", 'File "'):
        assert leak not in body
    assert "Correlation id" in body
