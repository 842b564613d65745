"""Fixtures for the local runtime tests: a private Azurite, and a driver that runs
`python -m local_runtime start APP --port 0 --state-dir DIR` as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from local_runtime.azurite import Azurite, start_azurite

ROOT = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A private Azurite on free ports for the whole session; `.connection_string` for clients."""
    with start_azurite(tmp_path_factory.mktemp("azurite")) as az:
        yield az


class RuntimeProcess:
    """One running `python -m local_runtime start`; stdout is collected line by line in `lines`."""

    def __init__(
        self, app: str | Path, state_dir: Path, env: dict[str, str] | None = None, *args: str
    ) -> None:
        self.app_dir = APPS / app if isinstance(app, str) else app
        self.state_dir = state_dir
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in ((env or {}).get("PYTHONPATH"), str(ROOT)) if p)
        argv = [sys.executable, "-m", "local_runtime", "start", str(self.app_dir), "--port", "0"]
        argv += ["--state-dir", str(state_dir), *args]
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 30.0, start: int = 0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[start:]:
                m = rx.search(line)
                if m:
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}; output:\n{self.output}")

    def wait_ready(self, timeout: float = 60.0) -> str:
        self.url = self.wait_for_line(r"^Listening on (http://\S+)$", timeout).group(1)
        self.wait_for_line(r"^Ready$", timeout)
        return self.url

    @property
    def keys(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "keys.json").read_text())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        # shown by pytest only when the test fails
        print(
            f"--- output of {self.app_dir.name} (exit {self.proc.returncode}) ---\n"
            + "\n".join(self.lines[-200:])
        )
        return self.proc.returncode


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
