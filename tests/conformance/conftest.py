"""Conformance fixtures: ONE `python -m local_runtime start <repo root>` (the real app, with its own private
Azurite) for the whole package, its function key, raw-HTTP and official-client access, and the real-world
template data set (`templates/*.json`: provenance, apiVersion, expected outcome, template)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = Path(__file__).resolve().parent / "templates"
PAGE_SIZE = 5


@dataclass(frozen=True)
class RealWorld:
    """One file of the data set."""

    name: str
    provenance: str
    api_version: str
    expect: dict[str, Any]
    template: dict[str, Any]

    @property
    def accepted(self) -> bool:
        return self.expect.get("status") == "accepted"


def real_world_templates() -> list[RealWorld]:
    out = []
    for path in sorted(TEMPLATES.glob("*.json")):
        data = json.loads(path.read_text())
        out.append(
            RealWorld(path.stem, data["provenance"], data["apiVersion"], data["expect"], data["template"])
        )
    return out


class AppRuntime:
    """The whole app under the local runtime (private Azurite on free ports, state in a tmp dir)."""

    def __init__(self, state_dir: Path) -> None:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "IMAGEBUILDER_TASK_HUB": "ConformanceHub",
            "IMAGEBUILDER_PROVIDER": "local",
            "IMAGEBUILDER_STATE_DIR": str(state_dir / "imagebuilder"),
            "IMAGEBUILDER_LIST_PAGE_SIZE": str(PAGE_SIZE),
            # the data set's Marketplace sources mapped to local bases, as a user would map them
            "IMAGEBUILDER_LOCAL_CATALOG": str(ROOT / "tests" / "local-catalog.json"),
        }
        argv = [sys.executable, "-m", "local_runtime", "start", str(ROOT), "--port", "0"]
        argv += ["--state-dir", str(state_dir / "host"), "--private-storage"]
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.url = self._wait(r"^Listening on (http://\S+)$").group(1)
            keys = json.loads((state_dir / "host" / "keys.json").read_text())
        except BaseException:
            self.stop()
            raise
        self.key: str = keys["functionKeys"]["default"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _wait(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = rx.search(line)
                if m:
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"the runtime did not print {pattern!r}; output:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


@pytest.fixture(scope="package")
def app_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppRuntime]:
    rt = AppRuntime(tmp_path_factory.mktemp("conformance-runtime"))
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture(scope="package")
def http(app_runtime: AppRuntime) -> Iterator[requests.Session]:
    """A raw HTTP session with the function key (paths are relative to `app_runtime.url`)."""
    with requests.Session() as session:
        session.headers["x-functions-key"] = app_runtime.key
        yield session
