"""Fixtures of the event-driven build tests: a private Azurite and the real local runtime hosting this
repository's function_app.py with the local provider and short trigger schedules (every 2-3 seconds),
the REST client, storage helpers (uploads, the event queue) and BusyBox templates that build in seconds.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from examples.demo import ImageBuilderApi, LocalRuntime
from imagebuilder.store import Store, open_store
from imagebuilder.store.events import open_events
from local_runtime.azurite import start_azurite

ROOT = Path(__file__).resolve().parents[2]
SUB = "00000000-0000-0000-0000-000000000000"
RG = "imagebuilder-demo"
IDENTITY = {
    "type": "UserAssigned",
    "userAssignedIdentities": {
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ManagedIdentity/"
        "userAssignedIdentities/imagebuilder": {}
    },
}
BUSYBOX = {
    "type": "PlatformImage",
    "publisher": "ImageBuilderLocal",
    "offer": "busybox",
    "sku": "stable",
    "version": "latest",
}


def template(
    *,
    customize: list[dict[str, Any]] | None = None,
    distribute: list[dict[str, Any]] | None = None,
    **props: Any,
) -> dict[str, Any]:
    """A small BusyBox template (one inline Shell step, a VHD output) that builds in seconds."""
    return {
        "location": "westeurope",
        "identity": IDENTITY,
        "properties": {
            "buildTimeoutInMinutes": 30,
            "source": dict(BUSYBOX),
            "customize": customize
            if customize is not None
            else [{"type": "Shell", "name": "motd", "inline": ["echo hello | sudo tee /etc/motd"]}],
            "distribute": distribute if distribute is not None else [{"type": "VHD", "runOutputName": "vhd"}],
            **props,
        },
    }


@dataclass
class Env:
    api: ImageBuilderApi
    store: Store
    runtime: LocalRuntime
    blobs: BlobServiceClient
    connection: str
    provider_state: Path
    events: list[dict[str, Any]] = field(default_factory=list)

    def upload(self, container: str, name: str, data: bytes | str, *, public: bool = False) -> str:
        client = self.blobs.get_container_client(container)
        try:
            client.create_container(public_access="blob" if public else None)
        except ResourceExistsError:
            pass
        blob = client.get_blob_client(name)
        blob.upload_blob(data.encode() if isinstance(data, str) else data, overwrite=True)
        return str(blob.url)

    def read_blob(self, container: str, name: str, timeout: float = 60) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return bytes(self.blobs.get_blob_client(container, name).download_blob().readall())
            except ResourceNotFoundError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{container}/{name} never appeared") from None
                time.sleep(0.3)

    def runs(self, name: str) -> list[dict[str, Any]]:
        return self.api.runs(name)

    def wait_runs(
        self, name: str, check: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = 120
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            resp = self.api.request("GET", self.api.template_path(name) + "/runs")
            runs = list((resp.body or {}).get("value", [])) if resp.status == 200 else []
            if check(runs):
                return runs
            time.sleep(0.5)
        states = [(r["name"], r["properties"]["runState"], r["properties"]["message"][:200]) for r in runs]
        raise AssertionError(
            f"{what}: not after {timeout}s; runs of {name}: {states}\n{self.runtime.tail(40)}"
        )

    def wait_done(self, name: str, run_id: str, timeout: float = 120) -> dict[str, Any]:
        runs = self.wait_runs(
            name,
            lambda rs: any(
                r["name"] == run_id and r["properties"]["runState"] not in ("Running", "Canceling")
                for r in rs
            ),
            f"run {run_id} to end",
            timeout,
        )
        run = next(r for r in runs if r["name"] == run_id)
        assert run["properties"]["runState"] == "Succeeded", json.dumps(run["properties"], indent=1)[:3000]
        return run

    def trigger(self, name: str, trigger: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.api.request("PUT", self.api.template_path(name) + f"/triggers/{trigger}", body)
        assert resp.status in (200, 201), resp.body
        return dict(resp.body)

    def get_trigger(self, name: str, trigger: str) -> dict[str, Any]:
        resp = self.api.request("GET", self.api.template_path(name) + f"/triggers/{trigger}")
        assert resp.status == 200, resp.body
        return dict(resp.body)

    def drain_events(self) -> list[dict[str, Any]]:
        """Every event published so far (kept in arrival order across calls)."""
        queue = open_events(self.connection)
        while True:
            got = queue.receive(max_messages=32)
            if not got:
                break
            self.events.extend(got)
        return self.events


@pytest.fixture(scope="package")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("triggers")
    with start_azurite(base / "azurite") as az:
        cache = Path(os.environ.get("IMAGEBUILDER_TEST_CACHE_DIR", ROOT / ".state" / "cache"))
        settings = {
            "IMAGEBUILDER_PROVIDER": "local",
            "AzureWebJobsStorage": az.connection_string,
            "IMAGEBUILDER_STATE_DIR": str(base / "provider"),
            "IMAGEBUILDER_CACHE_DIR": str(cache),
            "IMAGEBUILDER_STEP_CACHE_DIR": str(base / "steps"),  # per package: the base cache is shared
            "IMAGEBUILDER_SOURCE_TRIGGER_SCHEDULE": "*/2 * * * * *",
            "IMAGEBUILDER_SCHEDULE_TRIGGER_SCHEDULE": "*/2 * * * * *",
            "IMAGEBUILDER_SWEEP_SCHEDULE": "*/3 * * * * *",
            "IMAGEBUILDER_SWEEP_GRACE_SECONDS": "60",
            "IMAGEBUILDER_TRIGGER_MAX_FAILURES": "3",
        }
        runtime = LocalRuntime(state_dir=base / "runtime", env=settings).start()
        try:
            yield Env(
                api=ImageBuilderApi(runtime.base_url, runtime.key),
                store=open_store(az.connection_string),
                runtime=runtime,
                blobs=BlobServiceClient.from_connection_string(az.connection_string),
                connection=az.connection_string,
                provider_state=base / "provider",
            )
        finally:
            runtime.stop()
