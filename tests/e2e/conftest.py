"""End-to-end fixtures: a private Azurite, the real local runtime hosting this repository's
function_app.py with the local provider, the ARM REST client, and the checks every test shares
(the produced image itself, and nothing left behind).

Timeouts: AIB's minimum buildTimeoutInMinutes is 6, so the runtime runs with the app setting
IMAGEBUILDER_TIMEOUT_SCALE=0.05 (a 6-minute template times out after 18 s; 240 becomes 12 minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from examples.demo import EXAMPLES, ImageBuilderApi, LocalRuntime, load_template, serve_examples
from imagebuilder.pipeline.messages import RunRef
from imagebuilder.store import Store, open_store
from local_runtime.azurite import Azurite, start_azurite

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_SCALE = "0.05"


@dataclass
class E2E:
    """Everything a test needs: the API, the store (to read logs), and the provider's state folder."""

    api: ImageBuilderApi
    store: Store
    runtime: LocalRuntime
    provider_state: Path
    examples_url: str
    env: dict[str, str]

    def template(self, file: str, **props: Any) -> dict[str, Any]:
        data = load_template(EXAMPLES / "templates" / file, self.examples_url)
        data["properties"].update(props)
        return data

    def build(self, name: str, template: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
        self.api.put_template(name, template)
        self.api.run(name)
        return self.api.watch(name, timeout=timeout, interval=0.5)

    def latest_run(self, name: str) -> Any:
        return self.store.runs.latest(self.api.subscription, self.api.resource_group, name)

    def run_ref(self, name: str) -> RunRef:
        record = self.latest_run(name)
        assert record is not None, f"no run of {name}"
        return record.run

    def log_text(self, name: str) -> str:
        return self.store.runs.log(self.run_ref(name)).read()

    def wait_log(self, name: str, needle: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.latest_run(name)
            if record is not None:
                text = self.store.runs.log(record.run).read()
                if needle in text:
                    return text
            time.sleep(0.3)
        raise AssertionError(f"{needle!r} never appeared in the log of {name}")

    def assert_no_leaks(self) -> None:
        assert_no_leaks(self.provider_state)


@pytest.fixture(scope="session")
def e2e_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with start_azurite(tmp_path_factory.mktemp("e2e-azurite")) as az:
        yield az


@pytest.fixture(scope="session")
def e2e_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("e2e")
    # Base images are cached by recipe version, built under a lock and renamed into place, so the cache
    # is safe to share: the same one as tests/providers_local (one cold Debian base per machine).
    cache = Path(os.environ.get("IMAGEBUILDER_TEST_CACHE", "/var/tmp/imagebuilder-test-cache"))
    return {
        "runtime": base / "runtime",
        "provider": base / "provider",
        "cache": cache,
        "steps": base / "steps",
    }


def runtime_env(az: Azurite, dirs: dict[str, Path]) -> dict[str, str]:
    return {
        "IMAGEBUILDER_PROVIDER": "local",
        "AzureWebJobsStorage": az.connection_string,
        "IMAGEBUILDER_STATE_DIR": str(dirs["provider"]),
        "IMAGEBUILDER_CACHE_DIR": str(dirs["cache"]),
        "IMAGEBUILDER_STEP_CACHE_DIR": str(dirs["steps"]),  # per session: the base cache is shared
        "IMAGEBUILDER_TIMEOUT_SCALE": TIMEOUT_SCALE,
    }


@pytest.fixture(scope="session")
def e2e(e2e_azurite: Azurite, e2e_dirs: dict[str, Path]) -> Iterator[E2E]:
    env = runtime_env(e2e_azurite, e2e_dirs)
    runtime = LocalRuntime(state_dir=e2e_dirs["runtime"], env=env).start()
    try:
        api = ImageBuilderApi(runtime.base_url, runtime.key)
        with serve_examples() as url:
            yield E2E(api, open_store(e2e_azurite.connection_string), runtime, e2e_dirs["provider"], url, env)
    finally:
        runtime.stop()


# ------------------------------------------------------------------------------------ leak checks
def _mounts() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        out.append(line.split()[4].replace("\\040", " "))
    return out


def _processes_touching(folder: Path) -> list[str]:
    needle = str(folder).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            root = os.readlink(f"/proc/{entry}/root")
        except OSError:
            continue
        if needle in cmdline or root.startswith(str(folder)):
            argv = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
            found.append(f"{entry}: {argv}")
    return found


def _loops_backed_by(folder: Path) -> list[str]:
    out = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip().startswith(str(folder)):
                out.append(backing.parent.parent.name)
        except OSError:
            continue
    return out


def assert_no_leaks(provider_state: Path, *, allow_runs: bool = False, timeout: float = 10.0) -> None:
    """No mounts, loop devices or processes (sandboxes, QEMU) under the provider's state folder, and
    no run folders (build roots, staging, scratch disks) left in it."""
    deadline = time.monotonic() + timeout
    while True:
        mounts = [m for m in _mounts() if m.startswith(str(provider_state))]
        procs = _processes_touching(provider_state)
        loops = _loops_backed_by(provider_state)
        runs_dir = provider_state / "local" / "runs"
        runs = sorted(p.name for p in runs_dir.iterdir()) if runs_dir.exists() and not allow_runs else []
        if not (mounts or procs or loops or runs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not mounts, f"mounts left behind: {mounts}"
    assert not loops, f"loop devices left behind: {loops}"
    assert not procs, f"processes left behind: {procs}"
    assert not runs, f"run folders left behind in {runs_dir}: {runs}"


# -------------------------------------------------------------------------------- image inspection
@dataclass
class Vhd:
    path: Path

    def footer(self) -> bytes:
        with self.path.open("rb") as f:
            f.seek(-512, os.SEEK_END)
            return f.read(512)

    def partitions(self) -> dict[str, Any]:
        out = subprocess.run(["sfdisk", "--json", str(self.path)], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)["partitiontable"]

    def root_offset(self) -> int:
        table = self.partitions()
        sector = int(table.get("sectorsize", 512))
        # the root filesystem is the largest partition
        part = max(table["partitions"], key=lambda p: int(p["size"]))
        return int(part["start"]) * sector

    def read(self, path: str) -> bytes | None:
        """A file from the root filesystem, read with debugfs (no mount, no loop device)."""
        spec = f"{self.path}?offset={self.root_offset()}"
        out = subprocess.run(["debugfs", "-R", f"cat {path}", spec], capture_output=True, check=False)
        if b"File not found" in out.stderr or out.returncode != 0:
            return None
        return out.stdout

    def exists(self, path: str) -> bool:
        spec = f"{self.path}?offset={self.root_offset()}"
        out = subprocess.run(
            ["debugfs", "-R", f"stat {path}", spec], capture_output=True, text=True, check=False
        )
        return out.returncode == 0 and "File not found" not in out.stderr and "Inode:" in out.stdout


def check_vhd(path: Path) -> Vhd:
    """A fixed VHD Azure accepts: 'conectix' footer, disk type fixed, current size = file size - 512,
    a whole number of MiB; a GPT partition table."""
    vhd = Vhd(path)
    size = path.stat().st_size
    footer = vhd.footer()
    assert footer[:8] == b"conectix", "no VHD footer cookie"
    assert int.from_bytes(footer[60:64], "big") == 2, "disk type is not fixed (2)"
    current = int.from_bytes(footer[48:56], "big")
    assert current == size - 512, (current, size)
    assert current % (1024 * 1024) == 0, f"virtual size {current} is not a whole number of MiB"
    assert vhd.partitions()["label"] == "gpt"
    return vhd


def file_path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    from urllib.request import url2pathname

    return Path(url2pathname(uri[len("file://") :]))


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
