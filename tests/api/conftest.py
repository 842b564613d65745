"""API test fixtures: a private Azurite, and `Direct`, which calls the HTTP functions the way the worker
does (route matched, `func.HttpRequest` built, async handlers awaited) without a host."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
import pytest
import requests

from api import async_operations, operations, runs, templates, triggers
from local_runtime.azurite import Azurite, start_azurite
from local_runtime.process import HostProcess

API = "2025-10-01"
# A durable client binding whose host is unreachable: handlers that never call it work, those that do
# see a connection error (the "orchestration could not start" path).
DEAD_CLIENT = json.dumps(
    {
        "taskHubName": "TestHub",
        "creationUrls": {},
        "managementUrls": {},
        "baseUrl": "http://127.0.0.1:9/runtime/webhooks/durabletask",
        "rpcBaseUrl": "http://127.0.0.1:9/durabletask/",
        "requiredQueryStringParameters": "",
    }
)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text) if self.text else None


def _compile(route: str) -> re.Pattern[str]:
    pattern = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>[^/]+)", route)
    return re.compile(f"^/{pattern}$", re.IGNORECASE)


class Direct:
    """Dispatch `(method, url)` to the project's HTTP functions, like the host would."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Any, bool]] = []
        for bp in (operations.bp, templates.bp, runs.bp, triggers.bp, async_operations.bp):
            for fb in bp._function_builders:
                fn = fb._function
                trigger = fn.get_trigger()
                uses_client = any(b.type == "durableClient" for b in fn.get_bindings())
                for method in trigger.methods:
                    self.routes.append(
                        (str(method.value), _compile(trigger.route), fn.get_user_function(), uses_client)
                    )

    def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> Response:
        parts = urlsplit(url if "://" in url else f"http://testserver{url}")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        for m, pattern, handler, uses_client in self.routes:
            match = pattern.match(parts.path)
            if m == method and match:
                req = func.HttpRequest(
                    method,
                    f"{parts.scheme}://{parts.netloc}{parts.path}"
                    + (f"?{parts.query}" if parts.query else ""),
                    headers={"content-type": content_type},
                    params=params,
                    route_params={k: unquote(v) for k, v in match.groupdict().items()},
                    body=data,
                )
                kwargs: dict[str, Any] = {"req": req}
                if uses_client:
                    kwargs["client"] = DEAD_CLIENT
                out = handler(**kwargs)
                if asyncio.iscoroutine(out):
                    out = asyncio.run(out)
                return Response(out.status_code, dict(out.headers), out.get_body().decode())
        return Response(404, {}, "")

    def get(self, url: str) -> Response:
        return self.request("GET", url)

    def put(self, url: str, body: Any = None, **kw: Any) -> Response:
        return self.request("PUT", url, body, **kw)

    def patch(self, url: str, body: Any = None) -> Response:
        return self.request("PATCH", url, body)

    def delete(self, url: str) -> Response:
        return self.request("DELETE", url)

    def post(self, url: str, body: Any = None) -> Response:
        return self.request("POST", url, body)


@pytest.fixture(scope="session")
def api_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with start_azurite(tmp_path_factory.mktemp("api-azurite")) as az:
        yield az


# The Marketplace URNs the API tests' templates name, mapped to local bases as a user would map them: the
# local provider's create fails for a source with no local base (AIB's image-not-found).
LOCAL_CATALOG = str(Path(__file__).resolve().parents[1] / "local-catalog.json")


@pytest.fixture(scope="package")
def direct(api_azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Direct]:
    # Package scope: these settings must not leak into later packages' runtimes (they inherit os.environ).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AzureWebJobsStorage", api_azurite.connection_string)
        mp.setenv("IMAGEBUILDER_LIST_PAGE_SIZE", "3")
        mp.setenv("IMAGEBUILDER_STATE_DIR", str(tmp_path_factory.mktemp("direct-state")))
        mp.setenv("IMAGEBUILDER_LOCAL_CATALOG", LOCAL_CATALOG)
        yield Direct()


@pytest.fixture
def sub() -> str:
    """A fresh subscription id per test, so tests share one store without seeing each other."""
    return str(uuid.uuid4())


def template_url(sub: str, rg: str = "rg1", name: str = "t1", suffix: str = "", api: str = API) -> str:
    return (
        f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.VirtualMachineImages/imageTemplates/"
        f"{name}{suffix}?api-version={api}"
    )


IDENTITY = {
    "type": "UserAssigned",
    "userAssignedIdentities": {
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg1/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/identity_1": {}
    },
}


def minimal_template(**props: Any) -> dict[str, Any]:
    return {
        "location": "westus",
        "identity": IDENTITY,
        "properties": {
            "source": {
                "type": "PlatformImage",
                "publisher": "Canonical",
                "offer": "0001-com-ubuntu-server-jammy",
                "sku": "22_04-lts-gen2",
                "version": "latest",
            },
            "customize": [{"type": "Shell", "name": "hello", "inline": ["echo hello"]}],
            "distribute": [
                {
                    "type": "VHD",
                    "runOutputName": "vhd1",
                }
            ],
            **props,
        },
    }


# -- the local runtime -----------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
SDK_APP = Path(__file__).resolve().parent / "apps" / "sdk_app"


class Runtime(HostProcess):
    """`python -m local_runtime start tests/api/apps/sdk_app --port 0 --state-dir DIR` as a subprocess
    (`local_runtime.process.HostProcess`), listening once constructed; `key` is its function key."""

    def __init__(self, state_dir: Path, env: dict[str, str]) -> None:
        super().__init__(SDK_APP, state_dir, env=env, cwd=ROOT, pythonpath=ROOT)
        self.start(timeout=60)


@pytest.fixture(scope="session")
def runtime(api_azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    state = tmp_path_factory.mktemp("sdk-runtime")
    rt = Runtime(
        state,
        {
            "AzureWebJobsStorage": api_azurite.connection_string,
            "IMAGEBUILDER_STATE_DIR": str(state / "imagebuilder"),
            "IMAGEBUILDER_LIST_PAGE_SIZE": "3",
            "IMAGEBUILDER_LOCAL_CATALOG": LOCAL_CATALOG,
        },
    )
    try:
        yield rt
    finally:
        rt.stop()


class Http:
    """The same calls as `Direct`, over HTTP to the local runtime (with the function key)."""

    def __init__(self, runtime: Runtime) -> None:
        self.base = runtime.url
        self.session = requests.Session()
        self.session.headers["x-functions-key"] = runtime.key

    def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> Response:
        full = url if "://" in url else f"{self.base}{url}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        resp = self.session.request(
            method,
            full,
            data=data,
            headers={"content-type": content_type},
            timeout=60,
            allow_redirects=False,
        )
        return Response(resp.status_code, dict(resp.headers), resp.text)

    def get(self, url: str) -> Response:
        return self.request("GET", url)

    def put(self, url: str, body: Any = None, **kw: Any) -> Response:
        return self.request("PUT", url, body, **kw)

    def patch(self, url: str, body: Any = None) -> Response:
        return self.request("PATCH", url, body)

    def delete(self, url: str) -> Response:
        return self.request("DELETE", url)

    def post(self, url: str, body: Any = None) -> Response:
        return self.request("POST", url, body)


@pytest.fixture(params=["direct", "http"])
def api(request: pytest.FixtureRequest, direct: Direct) -> Direct | Http:
    """The API called handler by handler, then through the local runtime."""
    if request.param == "direct":
        return direct
    return Http(request.getfixturevalue("runtime"))
