"""Fixtures for the conformance tests: one `python -m local_runtime start` per sample app, shared by the
whole test module (the apps under apps/ use the public samples' APIs unchanged)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.conftest import RuntimeProcess

APPS = Path(__file__).resolve().parent / "apps"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> Reply:
    """One HTTP request; no redirects followed, errors returned as replies."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = dict(headers or {})
    if data is not None and raw is None:
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def poll(fn: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start_app(name: str, state_dir: Path, env: dict[str, str] | None = None) -> Iterator[RuntimeProcess]:
    rp = RuntimeProcess(APPS / name, state_dir, env)
    try:
        rp.wait_ready()
        yield rp
    finally:
        rp.stop()


@pytest.fixture(scope="module")
def durable_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    yield from start_app("durable_patterns", tmp_path_factory.mktemp("durable_patterns_state"))


@pytest.fixture(scope="module")
def func_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    """The plain-Functions sample app on a private Azurite; CONFORMANCE_OUT is where its timer writes."""
    out = tmp_path_factory.mktemp("func_basics_out")
    rp = RuntimeProcess(
        APPS / "func_basics",
        tmp_path_factory.mktemp("func_basics_state"),
        {"CONFORMANCE_OUT": str(out)},
        "--private-storage",
    )
    rp.out_dir = out  # type: ignore[attr-defined]
    try:
        rp.wait_ready()
        yield rp
    finally:
        rp.stop()


@pytest.fixture(scope="module")
def asgi_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    yield from start_app("asgi_app", tmp_path_factory.mktemp("asgi_state"))
