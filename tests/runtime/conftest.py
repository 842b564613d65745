"""Fixtures for the local runtime tests: a private Azurite, and a driver that runs
`python -m local_runtime start APP --port 0 --state-dir DIR` as a real subprocess."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from local_runtime.azurite import Azurite, start_azurite
from local_runtime.process import LISTENING, READY, HostProcess

ROOT = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A private Azurite on free ports for the whole session; `.connection_string` for clients."""
    with start_azurite(tmp_path_factory.mktemp("azurite")) as az:
        yield az


class RuntimeProcess(HostProcess):
    """One running `python -m local_runtime start` (`local_runtime.process.HostProcess`, started at once);
    stdout is collected line by line in `lines`."""

    def __init__(
        self, app: str | Path, state_dir: Path, env: dict[str, str] | None = None, *args: str
    ) -> None:
        super().__init__(
            APPS / app if isinstance(app, str) else app,
            state_dir,
            env=env,
            args=args,
            cwd=ROOT,
            pythonpath=ROOT,
        )
        self.start(wait=None)

    def wait_ready(self, timeout: float = 60.0) -> str:
        self.url = self.wait_for_line(LISTENING, timeout).group(1)
        self.wait_for_line(READY, timeout)
        return self.url

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        code = super().stop(sig, timeout)
        # shown by pytest only when the test fails
        print(f"--- output of {self.app_dir.name} (exit {code}) ---\n" + "\n".join(self.lines[-200:]))
        return -1 if code is None else code


@pytest.fixture
def runtime() -> Iterator[Callable[..., RuntimeProcess]]:
    """Factory: `runtime(app, state_dir, env)` starts a host and waits for `Ready`; all are stopped at the end."""
    started: list[RuntimeProcess] = []

    def start(
        app: str | Path, state_dir: Path, env: dict[str, str] | None = None, *args: str
    ) -> RuntimeProcess:
        rp = RuntimeProcess(app, state_dir, env, *args)
        started.append(rp)
        rp.wait_ready()
        return rp

    yield start
    for rp in started:
        rp.stop()


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
