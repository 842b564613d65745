"""The one leak audit every reliability test ends with: what a run (or a crash in one) can leave on the
host, counted. Mounts, loop devices and processes under the provider's state folder or the sandbox staging
folder, step network namespaces, staged sandbox roots, step cgroups, run folders, cache temp files, and
the app's blobs in Azurite (listed through `imagebuilder.store`): blobs whose run or template the store no
longer knows (`orphan_blobs`), and blobs with only staged blocks (an upload that never committed) of a run
that has ended (`staged_blobs`). The goal for every count is zero."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from imagebuilder.providers.local import confine, limits, mounts, sandbox
from imagebuilder.store import RunRecord, Store


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
    orphan_blobs: list[str] = field(default_factory=list)
    staged_blobs: list[str] = field(default_factory=list)

    def total(self) -> int:
        return sum(len(v) for v in vars(self).values())

    def summary(self) -> dict[str, int]:
        return {k: len(v) for k, v in vars(self).items()}


_STATE_ENV = b"IMAGEBUILDER_STATE_DIR="


def _ours(pid: str, provider_state: Path) -> bool:
    """Whether `pid` belongs to the runtime of `provider_state`: the first ancestor (itself included)
    whose environment names a provider state dir names ours. A sandboxed step's environment is cleared,
    so its bwrap's parent (the runtime's worker) decides; a process whose ancestors name no state dir
    (orphaned to init: its owner is dead) counts as ours, as a leak should."""
    want = _STATE_ENV + str(provider_state).encode() + b"\0"
    seen = 0
    while pid not in ("0", "1") and seen < 64:
        seen += 1
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes() + b"\0"
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if _STATE_ENV in environ:
            return want in environ
        pid = stat.rsplit(")", 1)[1].split()[1]
    return True


def _processes(folders: list[Path], provider_state: Path) -> list[str]:
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
        inside = sandbox.RUN_MARKER_ENV.encode() + b"=" in environ and _ours(entry, provider_state)
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


def _staged_by_us(mount: str, provider_state: Path) -> bool:
    """A mount under the sandbox staging folder (`<pid>-<hex>/...`): a leak when its stager is dead,
    ours to judge when the stager is our runtime's (another runtime's live step is not)."""
    pid = mount[len(str(confine.STAGING)) + 1 :].split("-", 1)[0]
    if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
        return True
    return _ours(pid, provider_state)


def _blobs(store: Store) -> tuple[list[str], list[str]]:
    """(orphans, staged): blobs of the run-log container whose run (or its template) the store does not
    know, and uncommitted blobs of ended runs. A blob named by no run is an orphan too."""
    runs: dict[tuple[str, str, str, str], RunRecord | None] = {}
    templates: dict[tuple[str, str, str], bool] = {}
    orphans: list[str] = []
    staged: list[str] = []
    for blob in store.runs.blobs():
        if blob.run is None:
            orphans.append(blob.name)
            continue
        ref = blob.run
        tkey = (ref.subscription_id, ref.resource_group, ref.template_name)
        if tkey not in templates:
            templates[tkey] = store.templates.get(*tkey) is not None
        rkey = (*tkey, ref.run_id)
        if rkey not in runs:
            runs[rkey] = store.runs.get(ref)
        record = runs[rkey]
        if record is None or not templates[tkey]:
            orphans.append(blob.name)
        elif not blob.committed and record.terminal:
            staged.append(blob.name)
    return orphans, staged


def audit(provider_state: Path, cache_dir: Path | None = None, store: Store | None = None) -> Leaks:
    """Count what is left. Host-wide objects (netns, staging, cgroups) count when their owner is dead:
    other helpers' live builds on a shared machine are not ours to judge. Blobs are counted when `store`
    is given (every reliability test gives its runtime's)."""
    leaks = Leaks()
    if store is not None:
        leaks.orphan_blobs, leaks.staged_blobs = _blobs(store)
    leaks.mounts = [
        m
        for m in mounts.mount_points()
        if m.startswith(str(provider_state))
        or (m.startswith(f"{confine.STAGING}/") and _staged_by_us(m, provider_state))
    ]
    leaks.loops = _loops([provider_state])
    leaks.processes = _processes([provider_state], provider_state)
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


def wait_clean(
    provider_state: Path, cache_dir: Path | None = None, store: Store | None = None, timeout: float = 20.0
) -> Leaks:
    """The audit, retried for `timeout` seconds while processes exit and cleanup finishes."""
    deadline = time.monotonic() + timeout
    while True:
        leaks = audit(provider_state, cache_dir, store)
        if leaks.total() == 0 or time.monotonic() > deadline:
            return leaks
        time.sleep(0.5)
