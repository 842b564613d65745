"""Shared helpers of the LocalProvider tests: a recording log, a tiny HTTP server, busybox templates,
and a leak check (mounts, processes, loop devices, folders). No tests of its own."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.pipeline.messages import BuildInput, RunRef
from imagebuilder.providers.base import MemoryLog
from imagebuilder.providers.local import sandbox
from imagebuilder.providers.local.provider import LocalProvider

BUSYBOX = {
    "type": "PlatformImage",
    "publisher": "ImageBuilderLocal",
    "offer": "busybox",
    "sku": "stable",
    "version": "latest",
}
SUB = "00000000-0000-0000-0000-0000000000aa"


class RecLog(MemoryLog):
    """A LogSink that keeps what was written (with a log URI, as a run's has)."""

    uri = "http://127.0.0.1:1/devstoreaccount1/logs/customization.log"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_input(
    properties: dict[str, Any], *, name: str = "tpl", run_id: str = "run1", tags: Any = None
) -> BuildInput:
    # a template as stored always has a distribute target (the model requires one): a VHD unless given
    props = {"source": dict(BUSYBOX), "distribute": [{"type": "VHD", "runOutputName": "vhd"}], **properties}
    template = {
        "id": f"/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.VirtualMachineImages/imageTemplates/{name}",
        "name": name,
        "location": "westus",
        "tags": tags or {},
        "properties": props,
    }
    return BuildInput(
        run=RunRef(subscription_id=SUB, resource_group="rg1", template_name=name, run_id=run_id),
        template=template,
    )


@pytest.fixture(scope="session")
def base_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One base cache for the session (the BusyBox base builds in well under a second)."""
    return tmp_path_factory.mktemp("base-cache")


@pytest.fixture
def provider(tmp_path: Path, base_cache: Path, file_root: Path) -> Iterator[LocalProvider]:
    """A provider on a fresh state dir; whatever a failed test left mounted is unmounted afterwards."""
    p = LocalProvider(state_dir=tmp_path / "state", cache_dir=base_cache)
    p.step_cache_dir = tmp_path / "steps"  # the base cache is shared by the session; step results are not
    yield p
    for point in sorted(mounts_under(p.state_dir), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


@pytest.fixture
def file_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder file:// URIs may read (IMAGEBUILDER_LOCAL_FILE_ROOT)."""
    root = tmp_path / "files"
    root.mkdir()
    monkeypatch.setenv("IMAGEBUILDER_LOCAL_FILE_ROOT", str(root))
    return root


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """Serve `folder` on a free port of 127.0.0.1; yields the base URL."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def mounts_under(path: Path) -> list[str]:
    base = str(path)
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == base or point.startswith(base + "/"):
            out.append(point)
    return out


def assert_no_leaks(provider: LocalProvider, build: BuildInput) -> None:
    """Nothing of the run is left: no mounts, processes, loop devices or run folder."""
    layout = provider.layout(build)
    assert mounts_under(provider.state_dir) == []
    assert sandbox.find_processes(layout.run_dir.name, [layout.run_dir]) == []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            assert not backing.read_text().startswith(str(provider.state_dir))
    assert not layout.run_dir.exists()
    runs = provider.state_dir / "local" / "runs"
    assert not runs.exists() or os.listdir(runs) == []
