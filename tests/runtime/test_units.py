"""Fast unit tests of the host's pure parts: route templates, config, keys, binding expressions, encodings."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from local_runtime.blobs import pattern_regex
from local_runtime.config import (
    ConfigError,
    LocalHostSettings,
    apply_settings,
    load_host_json,
    load_local_host_settings,
    parse_timespan,
)
from local_runtime.http import RouteError, Router, compile_route, cors_middleware
from local_runtime.indexing import FunctionInfo
from local_runtime.keys import load_keys
from local_runtime.queues import decode, encode
from local_runtime.storage import BindingError, resolve_expression


def fn(
    name: str, route: str | None, methods: list[str] | None = None, auth: str = "anonymous"
) -> FunctionInfo:
    trigger: dict[str, Any] = {"type": "httpTrigger", "name": "req", "authLevel": auth, "methods": methods}
    if route is not None:
        trigger["route"] = route
    return FunctionInfo(name, "httpTrigger", "req", trigger, [trigger], lambda req: None)


def test_route_precedence_literal_before_parameter_before_catch_all() -> None:
    router = Router(
        [
            fn("catch", "things/{*rest}"),
            fn("param", "things/{id}"),
            fn("literal", "things/new"),
            fn("typed", "things/{id:int}"),
        ],
        "api",
    )

    def name(path: str) -> str | None:
        found = router.resolve("GET", path)
        return found[0].function.name if found else None

    assert name("/api/things/new") == "literal"
    assert name("/api/things/42") == "typed"
    assert name("/api/things/abc") == "param"
    assert name("/api/things/a/b") == "catch"
    assert name("/api/things") == "catch"  # a catch-all may be empty
    assert name("/things/new") is None  # routePrefix is required


def test_route_constraints_defaults_and_regex() -> None:
    r = compile_route(fn("f", "v/{ver:regex(^v\\d+$)}/{size:range(1,10)}/{fmt=json}"), "")
    assert r.match("GET", "/v/v2/5") == {"ver": "v2", "size": "5", "fmt": "json"}
    assert r.match("GET", "/v/v2/5/xml") == {"ver": "v2", "size": "5", "fmt": "xml"}
    assert r.match("GET", "/v/x2/5") is None
    assert r.match("GET", "/v/v2/11") is None
    g = compile_route(fn("g", "obj/{id:guid}/{flag:bool}/{name:minlength(3):maxlength(5)}"), "")
    assert g.match("GET", "/obj/0f8fad5b-d9cb-469f-a165-70867728950e/TRUE/abcd") is not None
    assert g.match("GET", "/obj/nope/true/abcd") is None
    assert g.match("GET", "/obj/0f8fad5b-d9cb-469f-a165-70867728950e/true/ab") is None
    assert compile_route(fn("h", None), "api").display == "api/h"  # route defaults to the function name
    m = compile_route(fn("m", "files/{name}.{ext}"), "")
    assert m.match("GET", "/files/report.final.pdf") == {"name": "report.final", "ext": "pdf"}


@pytest.mark.parametrize("bad", ["a/{id:nosuch}", "a/{", "a/{*rest}/b", "a/{x}/{x}"])
def test_bad_routes_name_the_function(bad: str) -> None:
    with pytest.raises(RouteError, match="function 'f'"):
        compile_route(fn("f", bad), "api")


def test_methods_are_route_constraints() -> None:
    r = compile_route(fn("f", "x", ["GET"]), "api")
    assert r.match("GET", "/api/x") == {}
    assert r.match("HEAD", "/api/x") is None  # HEAD is not implied by GET on the host either
    assert r.match("POST", "/api/x") is None


def test_timespan_and_host_json(tmp_path: Path) -> None:
    assert parse_timespan("00:00:05") == timedelta(seconds=5)
    assert parse_timespan("1.02:03:04.5") == timedelta(days=1, hours=2, minutes=3, seconds=4.5)
    with pytest.raises(ConfigError, match="TimeSpan"):
        parse_timespan("5s")
    (tmp_path / "host.json").write_text(
        json.dumps(
            {
                "version": "2.0",
                "functions": ["a"],
                "extensions": {
                    "http": {"routePrefix": "/v1/"},
                    "queues": {
                        "maxDequeueCount": 3,
                        "visibilityTimeout": "00:00:10",
                        "messageEncoding": "None",
                    },
                },
            }
        )
    )
    cfg = load_host_json(tmp_path)
    assert cfg.route_prefix == "v1" and cfg.functions == ("a",)
    assert (cfg.queues.max_dequeue_count, cfg.queues.message_encoding) == (3, "none")
    assert cfg.queues.visibility_timeout == timedelta(seconds=10)
    (tmp_path / "host.json").write_text(
        '{"version": "2.0", "extensions": {"queues": {"maxDequeueCount": 0}}}'
    )
    with pytest.raises(ConfigError, match=r"\$.extensions.queues.maxDequeueCount"):
        load_host_json(tmp_path)
    (tmp_path / "host.json").write_text('{"version": "1.0"}')
    with pytest.raises(ConfigError, match=r"\$.version"):
        load_host_json(tmp_path)


def test_local_settings_host_section_and_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_local_host_settings(tmp_path) == LocalHostSettings()
    (tmp_path / "local.settings.json").write_text(
        '{"Values": {}, "Host": {"LocalHttpPort": 7080, "CORS": "http://a.test, http://b.test/"}}'
    )
    s = load_local_host_settings(tmp_path)
    assert s.local_http_port == 7080 and s.cors == ("http://a.test", "http://b.test")
    monkeypatch.setenv("LR_UNIT_A", "from-env")
    monkeypatch.delenv("LR_UNIT_B", raising=False)
    apply_settings({"LR_UNIT_A": "from-file", "LR_UNIT_B": "from-file"})
    assert (os.environ["LR_UNIT_A"], os.environ["LR_UNIT_B"]) == ("from-env", "from-file")
    monkeypatch.delenv("LR_UNIT_B")


def test_keys_auth_levels(tmp_path: Path) -> None:
    keys = load_keys(tmp_path)
    assert load_keys(tmp_path) == keys
    assert keys.authorized("anonymous", None)
    assert keys.authorized("function", keys.default) and keys.authorized("function", keys.master)
    assert not keys.authorized("function", None) and not keys.authorized("function", "x")
    assert not keys.authorized("function", "clé")  # non-ASCII keys are just wrong, not an error
    assert keys.authorized("admin", keys.master) and not keys.authorized("admin", keys.default)


def test_binding_expressions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LR_CONTAINER", "outbox")
    meta = {"name": "a.json", "Properties": {"Length": 3}, "body": '{"order": {"id": 7}}'}
    assert resolve_expression("%LR_CONTAINER%/{name}", meta, "x") == "outbox/a.json"
    assert resolve_expression("r/{body.order.id}", meta, "x") == "r/7"
    assert len(resolve_expression("{rand-guid}", {}, "x")) == 36
    with pytest.raises(BindingError, match=r"\{missing\}"):
        resolve_expression("c/{missing}", meta, "blob output 'out'")
    with pytest.raises(BindingError, match="%LR_NOPE%"):
        resolve_expression("%LR_NOPE%", meta, "x")


def test_blob_patterns_and_queue_encodings() -> None:
    rx = pattern_regex("in/{name}.json")
    m = rx.fullmatch("in/sub/a.json")
    assert m is not None and m.group("name") == "sub/a"
    assert rx.fullmatch("in/a.txt") is None
    assert decode(encode("héllo".encode(), "base64"), "base64") == "héllo".encode()
    assert encode(b"plain", "none") == "plain"


def test_cors_middleware() -> None:
    async def run() -> None:
        app = web.Application(middlewares=[cors_middleware(LocalHostSettings(cors=("http://a.test",)))])

        async def ok(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app.router.add_route("*", "/{tail:.*}", ok)
        async with TestClient(TestServer(app)) as client:
            r = await client.get("/x", headers={"Origin": "http://a.test"})
            assert r.headers["Access-Control-Allow-Origin"] == "http://a.test"
            r = await client.get("/x", headers={"Origin": "http://evil.test"})
            assert "Access-Control-Allow-Origin" not in r.headers
            r = await client.options(
                "/x", headers={"Origin": "http://a.test", "Access-Control-Request-Method": "PUT"}
            )
            assert r.status == 204 and r.headers["Access-Control-Allow-Methods"] == "PUT"

    asyncio.run(run())


def test_log_level_categories() -> None:
    import logging

    from local_runtime.invoke import FunctionLogFilter, current_function

    f = FunctionLogFilter({"default": "Warning", "Function": "Information", "Function.noisy.User": "Error"})

    def shown(logger: str, level: int, fn: str) -> bool:
        token = current_function.set(fn)
        try:
            return f.filter(logging.LogRecord(logger, level, __file__, 1, "m", None, None))
        finally:
            current_function.reset(token)

    assert shown("local_runtime.host", logging.INFO, "hello")  # Function.hello: Executing/Executed
    assert shown("root", logging.INFO, "hello")  # Function.hello.User inherits Function
    assert not shown("root", logging.WARNING, "noisy") and shown("root", logging.ERROR, "noisy")
    assert not shown("local_runtime.timers", logging.INFO, "") and shown("x", logging.WARNING, "")
    assert f.lowest == logging.INFO
