"""Conformance fixtures: ONE `python -m local_runtime start <repo root>` (the real app, with its own private
Azurite) for the whole package, its function key, raw-HTTP and official-client access, and the real-world
template data set (`templates/*.json`: provenance, apiVersion, expected outcome, template)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from local_runtime.process import HostProcess

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


class AppRuntime(HostProcess):
    """The whole app under the local runtime (private Azurite on free ports, state in a tmp dir), through
    `local_runtime.process.HostProcess`; listening once constructed."""

    def __init__(self, state_dir: Path) -> None:
        env = {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "IMAGEBUILDER_TASK_HUB": "ConformanceHub",
            "IMAGEBUILDER_PROVIDER": "local",
            "IMAGEBUILDER_STATE_DIR": str(state_dir / "imagebuilder"),
            "IMAGEBUILDER_LIST_PAGE_SIZE": str(PAGE_SIZE),
            # the data set's Marketplace sources mapped to local bases, as a user would map them
            "IMAGEBUILDER_LOCAL_CATALOG": str(ROOT / "tests" / "local-catalog.json"),
        }
        super().__init__(
            ROOT, state_dir / "host", env=env, args=["--private-storage"], cwd=ROOT, pythonpath=ROOT
        )
        self.start(timeout=90)


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
