"""func.AsgiFunctionApp (FastAPI-style apps) on the local host: one catch-all function, routePrefix "",
the ASGI app sees the path, query, body and headers and sets the status and headers."""

from __future__ import annotations

from tests.runtime.conftest import RuntimeProcess
from tests.runtime_conformance.conftest import http


def test_asgi_app_serves_every_path(asgi_app: RuntimeProcess) -> None:
    r = http("POST", f"{asgi_app.url}/items/42?x=1&y=2", raw=b"hello", headers={"User-Agent": "conf/1"})
    assert r.status == 201 and r.headers["x-asgi"] == "yes"
    assert r.json() == {
        "path": "/items/42",
        "method": "POST",
        "query": "x=1&y=2",
        "body": "hello",
        "user_agent": "conf/1",
    }
    assert http("GET", f"{asgi_app.url}/missing").status == 404
    assert http("GET", f"{asgi_app.url}/").json()["path"] == "/"
