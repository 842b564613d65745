"""Shared fixtures for the local provider's image-making tests: the warm base cache, scratch dirs that are
removed afterwards, cached base tarballs, and a leak check (qemu processes, mounts, loop devices).

`image_cache`: IMAGEBUILDER_TEST_CACHE or /var/tmp/imagebuilder-test-cache, shared across runs (warm re-runs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagebuilder.providers.local import bases, catalog, disk

DEFAULT_TEST_CACHE = "/var/tmp/imagebuilder-test-cache"


@pytest.fixture(scope="session")
def image_cache() -> Path:
    """The base-image cache shared by test runs (built once, then warm)."""
    path = Path(os.environ.get("IMAGEBUILDER_TEST_CACHE", DEFAULT_TEST_CACHE))
    path.mkdir(parents=True, exist_ok=True)
    return path


def leaks(under: Path) -> list[str]:
    """qemu processes, mounts and loop devices that refer to paths under `under`."""
    needle = str(under)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            )
        except OSError:
            continue
        if "qemu-system" in cmdline and needle in cmdline:
            found.append(f"process {entry}: {cmdline[:200]}")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if needle in line:
            found.append(f"mount: {line}")
    out = subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True, check=False).stdout
    if out.strip():
        for dev in json.loads(out).get("loopdevices", []):
            if needle in str(dev.get("back-file", "")):
                found.append(f"loop device: {dev}")
    return found


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A scratch dir for disks and trees, checked for leaks and removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="ib-img-test-"))
    try:
        yield path
        assert leaks(path) == []
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def session_scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ib-img-session-"))
    try:
        yield path
        assert leaks(path) == []
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def busybox_tarball(image_cache: Path) -> Path:
    base = catalog.resolve("ImageBuilderLocal", "busybox", "stable", "latest")
    return bases.ensure_base(base, image_cache)


@pytest.fixture
def busybox_rootfs(busybox_tarball: Path, scratch: Path) -> Path:
    tree = scratch / "bbroot"
    bases.extract_base(busybox_tarball, tree)
    return tree


@pytest.fixture(scope="session")
def debian_tarball(image_cache: Path) -> Path:
    """The Debian base (mmdebstrap, ~40 s cold, then cached)."""
    base = catalog.resolve("Debian", "debian-12", "12", "latest", cache_dir=image_cache, refresh_hours=None)
    return bases.ensure_base(base, image_cache)


@dataclass(frozen=True)
class DebianDisks:
    tree: Path
    gen1: disk.DiskInfo
    gen2: disk.DiskInfo


@pytest.fixture(scope="session")
def debian_disks(debian_tarball: Path, session_scratch: Path) -> DebianDisks:
    """The Debian base as bootable Gen1 (BIOS) and Gen2 (UEFI) raw disks, built once per session."""
    tree = session_scratch / "debian-root"
    bases.extract_base(debian_tarball, tree)
    gen1 = disk.build_disk(tree, session_scratch / "debian-gen1.raw", generation="V1", bootable=True)
    gen2 = disk.build_disk(tree, session_scratch / "debian-gen2.raw", generation="V2", bootable=True)
    return DebianDisks(tree, gen1, gen2)
