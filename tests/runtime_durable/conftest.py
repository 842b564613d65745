"""Fixtures: the sample durable app mounted on a real aiohttp server (port 0) in a background thread.

The app is imported under a fresh module name (get_functions() may run once per app object), indexed
with local_runtime.indexing, and hosted by DurableHost. Client calls run on one persistent event loop
in the test thread, because the SDK keeps one global aiohttp session.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import threading
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import azure.durable_functions as df
import azure.functions as func
import pytest
from aiohttp import web

from local_runtime.durable import DurableHost
from local_runtime.indexing import FunctionInfo, index_functions

APPS = Path(__file__).parent / "apps"
T = TypeVar("T")


def import_app(app_dir: Path) -> list[FunctionInfo]:
    """Import app_dir/function_app.py under a unique module name and index it like the worker."""
    name = f"durable_app_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, app_dir / "function_app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    (app,) = [v for v in vars(module).values() if isinstance(v, func.FunctionRegister)]
    return index_functions(app)


@dataclass
class Server:
    host: DurableHost
    base_url: str
    loop: asyncio.AbstractEventLoop
    functions: dict[str, FunctionInfo]
    state_dir: Path

    def client(self) -> df.DurableOrchestrationClient:
        return df.DurableOrchestrationClient(self.host.client_binding_json({"type": "durableClient"}))

    def on_server(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


class ServerThread:
    def __init__(self, app_dir: Path, state_dir: Path, host_json: dict[str, Any], settings: dict[str, str]):
        self.app_dir, self.state_dir, self.host_json, self.settings = app_dir, state_dir, host_json, settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    def start(self, functions: list[FunctionInfo]) -> Server:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(functions), self.loop).result(30)

    async def _start(self, functions: list[FunctionInfo]) -> Server:
        app = web.Application()
        self.runner = web.AppRunner(app)
        # the port is only known after binding, so bind a socket first, then build the host
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        self.durable = DurableHost(
            functions=functions,
            state_dir=self.state_dir,
            host_json=self.host_json,
            app_settings=self.settings,
            base_url=base,
        )
        self.durable.add_routes(app)
        app.router.add_route("*", "/test/async-pattern/{n}", _async_pattern)
        await self.runner.setup()
        site = web.SockSite(self.runner, sock)
        await site.start()
        await self.durable.start()
        return Server(self.durable, base, self.loop, {f.name: f for f in functions}, self.state_dir)

    def stop(self) -> None:
        async def _stop() -> None:
            await self.durable.stop()
            assert self.runner is not None
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


_polls: dict[str, int] = {}


async def _async_pattern(request: web.Request) -> web.Response:
    """A test endpoint in the HTTP async pattern: 202 + Location + Retry-After n times, then 200."""
    token = request.query.get("t", "")
    left = int(request.match_info["n"]) - _polls.get(token, 0)
    _polls[token] = _polls.get(token, 0) + 1
    if left > 0:
        return web.Response(status=202, headers={"Location": str(request.url), "Retry-After": "0.05"})
    return web.json_response({"polls": _polls[token], "method": request.method})


@pytest.fixture(scope="session")
def client_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def sample_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sample app's activities append to this file (it reads DURABLE_SAMPLE_LOG when they run)."""
    import os

    path = tmp_path_factory.mktemp("durable-log") / "activities.log"
    old = os.environ.get("DURABLE_SAMPLE_LOG")
    os.environ["DURABLE_SAMPLE_LOG"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DURABLE_SAMPLE_LOG", None)
    else:
        os.environ["DURABLE_SAMPLE_LOG"] = old


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, sample_log: Path) -> Iterator[Server]:
    app_dir = APPS / "durable_sample"
    host_json = json.loads((app_dir / "host.json").read_text())
    st = ServerThread(
        app_dir, tmp_path_factory.mktemp("durable-state"), host_json, {"SAMPLE_HUB": "SampleHub"}
    )
    srv = st.start(import_app(app_dir))
    yield srv
    st.stop()


@pytest.fixture()
def run(client_loop: asyncio.AbstractEventLoop):
    def _run(coro: Coroutine[Any, Any, T]) -> T:
        return client_loop.run_until_complete(coro)

    return _run
