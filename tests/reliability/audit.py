"""The one leak audit every reliability test ends with: what a run (or a crash in one) can leave on the
host, counted. Mounts, loop devices and processes under the provider's state folder or the sandbox staging
folder, step network namespaces, staged sandbox roots, step cgroups, run folders, cache temp files, and
blobs of runs the store no longer knows. The goal for every count is zero."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from imagebuilder.providers.local import confine, limits, mounts, sandbox


@dataclass
class Leaks:
    mounts: list[str] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    sandbox_roots: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    run_folders: list[str] = field(default_factory=list)
    cache_temp: list[str] = field(default_factory=list)

    def total(self) -> int:
        return sum(len(v) for v in vars(self).values())

    def summary(self) -> dict[str, int]:
        return {k: len(v) for k, v in vars(self).items()}


def _processes(folders: list[Path]) -> list[str]:
    needles = [str(f).encode() for f in folders]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            root = os.readlink(f"/proc/{entry}/root")
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        inside = sandbox.RUN_MARKER_ENV.encode() + b"=" in environ
        if inside or any(n in cmdline for n in needles) or any(root.startswith(str(f)) for f in folders):
            found.append(f"{entry}: {cmdline.replace(bytes(1), b' ').decode(errors='replace')[:160]}")
    return found


def _loops(folders: list[Path]) -> list[str]:
    out = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            text = backing.read_text().strip()
        except OSError:
            continue
        if any(text.startswith(str(f)) for f in folders):
            out.append(f"{backing.parent.parent.name}: {text}")
    return out


def _mine(name: str, prefix: str) -> bool:
    """A host-wide object (netns, staging folder, cgroup) whose name carries a pid that is dead."""
    pid = name[len(prefix) :].split("-", 1)[0] if name.startswith(prefix) else ""
    return pid.isdigit() and not Path(f"/proc/{pid}").exists()


def audit(provider_state: Path, cache_dir: Path | None = None) -> Leaks:
    """Count what is left. Host-wide objects (netns, staging, cgroups) count when their owner is dead:
    other helpers' live builds on a shared machine are not ours to judge."""
    leaks = Leaks()
    folders = [provider_state, confine.STAGING]
    leaks.mounts = [m for m in mounts.mount_points() if any(m.startswith(str(f)) for f in folders)]
    leaks.loops = _loops([provider_state])
    leaks.processes = _processes([provider_state])
    if sandbox.NETNS_DIR.is_dir():
        leaks.netns = [n for n in os.listdir(sandbox.NETNS_DIR) if _mine(n, sandbox.NETNS_PREFIX)]
    if confine.STAGING.is_dir():
        leaks.sandbox_roots = [p.name for p in confine.STAGING.iterdir() if _mine(p.name, "")]
    for parent in [limits.CGROUP_ROOT / c for c in ("memory", "pids", "cpu", "unified")]:
        if parent.is_dir():
            leaks.cgroups += [
                str(p)
                for p in parent.rglob(f"{limits.CGROUP_PREFIX}*")
                if _mine(p.name, limits.CGROUP_PREFIX)
            ]
    runs = provider_state / "local" / "runs"
    if runs.is_dir():
        leaks.run_folders = sorted(p.name for p in runs.iterdir())
    if cache_dir is not None and (cache_dir / "extracted").is_dir():
        leaks.cache_temp = [
            p.name
            for p in (cache_dir / "extracted").iterdir()
            if p.name.startswith(".") and not p.name.endswith(".lock")
        ]
    return leaks


def wait_clean(provider_state: Path, cache_dir: Path | None = None, timeout: float = 20.0) -> Leaks:
    """The audit, retried for `timeout` seconds while processes exit and cleanup finishes."""
    deadline = time.monotonic() + timeout
    while True:
        leaks = audit(provider_state, cache_dir)
        if leaks.total() == 0 or time.monotonic() > deadline:
            return leaks
        time.sleep(0.5)
