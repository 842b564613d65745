"""Resource limits of one sandbox step, read from the environment when a step starts (app settings):

    IMAGEBUILDER_STEP_MEMORY_MB     memory of the step (default 4096): a cgroup memory limit where the
                                    host lets us make cgroups, and RLIMIT_AS per process in every case
    IMAGEBUILDER_STEP_PIDS          processes/threads of the step (default 1024): a cgroup pids limit,
                                    and RLIMIT_NPROC of the step's own host uid (root inside is a fresh
                                    unprivileged uid per step, so the count is the step's alone)
    IMAGEBUILDER_STEP_CPUS          CPUs' worth of time per second (default: all; e.g. 1.5): cgroup only
    IMAGEBUILDER_STEP_FILE_SIZE_MB  largest file a step may write (default 16384): RLIMIT_FSIZE
    IMAGEBUILDER_STEP_DISK_MB       bytes a step may add to the build root in all (default 16384; the
                                    template tag imagebuilder.local.stepDiskMB overrides it per
                                    template): RLIMIT_FSIZE is at most this, and `DiskWatch` measures the
                                    step's writable layer while it runs and stops the step beyond it
    IMAGEBUILDER_SANDBOX_CONFINE    on (default) / off: user namespace, idmapped root and seccomp filter

The rlimits are applied with util-linux `prlimit` in the step's argv; the cgroup (v2 when the unified
hierarchy has the controllers, else the v1 memory/pids/cpu hierarchies) is one directory per step made
under this process's own cgroup and removed after the step.

Why a watcher and not a filesystem quota for the disk limit: the step's writable layer (its overlay
upper) must stay on the state directory's filesystem, because the step cache hard-links it (a
size-limited filesystem per step would turn every cache store into a copy), and project quotas need a
filesystem mounted with them, which a host may not have. The watcher rescans the layer at most every
`DiskWatch.MAX_INTERVAL` seconds (more often while a scan is cheap, its cost kept under ~5 % of a core)
and once more when the step ends: a step can overshoot by what it writes between two scans (then it is
stopped), a step that ended past the limit fails all the same, and no single file can pass the limit
(RLIMIT_FSIZE).
"""

from __future__ import annotations

import contextlib
import os
import resource
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.providers.base import ProviderConfigError, ProviderError
from imagebuilder.providers.local.fsutil import walk_stat

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "imagebuilder-step-"
DISK_SETTING = "IMAGEBUILDER_STEP_DISK_MB"
DISK_TAG = "imagebuilder.local.stepDiskMB"


@dataclass(frozen=True)
class StepLimits:
    memory_mb: int = 4096
    pids: int = 1024
    cpus: float | None = None
    file_size_mb: int = 16384
    disk_mb: int = 16384
    confine: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StepLimits:
        env = os.environ if environ is None else environ
        cpus_raw = env.get("IMAGEBUILDER_STEP_CPUS", "").strip()
        confine_raw = env.get("IMAGEBUILDER_SANDBOX_CONFINE", "on").strip().lower()
        if confine_raw not in ("on", "off", "true", "false", "1", "0"):
            raise ProviderConfigError(
                f"IMAGEBUILDER_SANDBOX_CONFINE is {confine_raw!r}", hint="set it to on or off"
            )
        return cls(
            memory_mb=_positive(env, "IMAGEBUILDER_STEP_MEMORY_MB", cls.memory_mb),
            pids=_positive(env, "IMAGEBUILDER_STEP_PIDS", cls.pids),
            cpus=_cpus(cpus_raw) if cpus_raw else None,
            file_size_mb=_positive(env, "IMAGEBUILDER_STEP_FILE_SIZE_MB", cls.file_size_mb),
            disk_mb=_positive(env, DISK_SETTING, cls.disk_mb),
            confine=confine_raw in ("on", "true", "1"),
        )

    def prlimit_argv(self) -> list[str]:
        """`prlimit` options for the step (RLIMIT_AS, NPROC, FSIZE; no core dumps), each at most this
        process's hard limit (raising one would need CAP_SYS_RESOURCE, which a container may lack)."""
        mib = 1024 * 1024
        return [
            "prlimit",
            f"--as={_capped(resource.RLIMIT_AS, self.memory_mb * mib)}",
            f"--nproc={_capped(resource.RLIMIT_NPROC, self.pids)}",
            f"--fsize={_capped(resource.RLIMIT_FSIZE, min(self.file_size_mb, self.disk_mb) * mib)}",
            "--core=0",
            "--",
        ]


def disk_mb_of_tag(raw: str) -> int:
    """The template tag `DISK_TAG`'s value as MB (a positive whole number), or a config error naming it."""
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if value <= 0:
        raise ProviderConfigError(
            f"the template tag {DISK_TAG} is {raw!r}",
            hint=f"set {DISK_TAG} to a positive whole number of MB, or remove it to use {DISK_SETTING}",
        )
    return value


def _capped(which: int, value: int) -> int:
    hard = resource.getrlimit(which)[1]
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ProviderConfigError(f"{name} is {raw!r}", hint=f"set {name} to a positive whole number")
    return value


def _cpus(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ProviderConfigError(
            f"IMAGEBUILDER_STEP_CPUS is {raw!r}", hint="set it to a positive number of CPUs, e.g. 1.5"
        )
    return value


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path in a v1 hierarchy (`controller`) or v2 (`""`)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            if (controller and controller in names.split(",")) or (not controller and names == ""):
                return path
    return "/"


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


@dataclass(frozen=True)
class StepCgroup:
    """The cgroup directories of one step (one for v2, one per controller for v1); `procs` are the
    files a process writes its pid to, to join."""

    dirs: tuple[Path, ...]

    @property
    def procs(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]


def _make_v2(name: str, limits: StepLimits) -> StepCgroup | None:
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if not controllers.is_file():
        return None
    parent = CGROUP_ROOT / _own_cgroup("").lstrip("/")
    wanted = {"memory", "pids"} | ({"cpu"} if limits.cpus else set())
    available = set((parent / "cgroup.subtree_control").read_text().split()) if parent.is_dir() else set()
    if not wanted <= available or not _writable_dir(parent):
        return None
    d = parent / name
    d.mkdir()
    (d / "memory.max").write_text(str(limits.memory_mb * 1024 * 1024))
    with contextlib.suppress(OSError):
        (d / "memory.swap.max").write_text("0")
    (d / "pids.max").write_text(str(limits.pids))
    if limits.cpus:
        (d / "cpu.max").write_text(f"{int(limits.cpus * 100_000)} 100000")
    return StepCgroup((d,))


def _make_v1(name: str, limits: StepLimits) -> StepCgroup | None:
    dirs: list[Path] = []
    wanted = ["memory", "pids"] + (["cpu"] if limits.cpus else [])
    parents = {c: CGROUP_ROOT / c / _own_cgroup(c).lstrip("/") for c in wanted}
    if not all(_writable_dir(p) for p in parents.values()):
        return None
    try:
        for controller, parent in parents.items():
            d = parent / name
            d.mkdir()
            dirs.append(d)
            if controller == "memory":
                (d / "memory.limit_in_bytes").write_text(str(limits.memory_mb * 1024 * 1024))
                with contextlib.suppress(OSError):
                    (d / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_mb * 1024 * 1024))
            elif controller == "pids":
                (d / "pids.max").write_text(str(limits.pids))
            elif controller == "cpu" and limits.cpus:
                (d / "cpu.cfs_period_us").write_text("100000")
                (d / "cpu.cfs_quota_us").write_text(str(int(limits.cpus * 100_000)))
    except OSError:
        _remove(StepCgroup(tuple(dirs)))
        return None
    return StepCgroup(tuple(dirs))


def _remove(group: StepCgroup) -> None:
    for d in group.dirs:
        for _ in range(50):  # a killed step's processes take a moment to leave
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                with contextlib.suppress(OSError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        os.kill(int(pid), 9)
                time.sleep(0.1)


@contextlib.contextmanager
def step_cgroup(limits: StepLimits) -> Iterator[StepCgroup | None]:
    """A cgroup for one step with the memory/pids/cpu limits, or None where this host lets us make none
    (the rlimits still apply). Removed afterwards, killing what is left in it."""
    sweep_cgroups()
    name = f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    group: StepCgroup | None = None
    try:
        group = _make_v2(name, limits) or _make_v1(name, limits)
    except OSError:
        group = None
    try:
        yield group
    finally:
        if group is not None:
            _remove(group)


# Joins the cgroups named as arguments, then runs the rest: a constant script, data only in argv.
JOIN_SCRIPT = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


def join_argv(group: StepCgroup | None) -> list[str]:
    if group is None:
        return []
    return ["/bin/sh", "-c", JOIN_SCRIPT, "join-cgroup", *(str(p) for p in group.procs), "--"]


def sweep_cgroups() -> list[str]:
    """Remove step cgroups left by processes killed mid-step (their names carry the pid)."""
    removed: list[str] = []
    parents = [CGROUP_ROOT / _own_cgroup("").lstrip("/")] + [
        CGROUP_ROOT / c / _own_cgroup(c).lstrip("/") for c in ("memory", "pids", "cpu")
    ]
    for parent in parents:
        with contextlib.suppress(OSError):
            for d in parent.iterdir():
                if not d.name.startswith(CGROUP_PREFIX):
                    continue
                pid = d.name[len(CGROUP_PREFIX) :].split("-", 1)[0]
                if pid.isdigit() and Path(f"/proc/{pid}").exists():
                    continue
                _remove(StepCgroup((d,)))
                if not d.exists():
                    removed.append(str(d))
    return removed


class StepDiskLimitError(ProviderError):
    """A step wrote more to the build root than `StepLimits.disk_mb` allows; it was stopped."""

    def __init__(self, written: int, limit_mb: int, returncode: int | None, tail: list[str]) -> None:
        mib = 1024 * 1024
        super().__init__(
            f"the step wrote {written // mib} MB to the build root, more than a step may write "
            f"({limit_mb} MB): it was stopped",
            hint=f"raise the limit with the template tag {DISK_TAG} or the app setting {DISK_SETTING}, "
            "or make the step write less (remove what it downloads once it is installed)",
        )
        self.written = written
        self.limit_mb = limit_mb
        self.returncode = returncode
        self.tail = tail


def tree_bytes(folder: Path) -> int:
    """What `folder` holds on its filesystem: every inode once (hard links), a file at least its
    apparent size (a sparse file counts what it would take when copied or packed); submounts skipped."""
    seen: set[int] = set()
    total = 0
    for _, st in walk_stat(folder, same_dev=True):
        if st.st_ino in seen:
            continue
        seen.add(st.st_ino)
        size = st.st_blocks * 512
        total += max(size, st.st_size) if stat.S_ISREG(st.st_mode) else size
    return total


class DiskWatch:
    """Watches what a running step adds to `folder` (its writable layer); past `limit_mb` it calls
    `stop` once and records how much was written (`exceeded`). Use as a context manager around the
    step: on exit the layer is measured once more, so a step that wrote past the limit between two
    scans and ended is refused all the same."""

    MIN_INTERVAL = 0.25
    MAX_INTERVAL = 2.0
    COST_SHARE = 0.05  # a scan may take at most this share of the time between scans

    def __init__(self, folder: Path, limit_mb: int, stop: Callable[[], None]) -> None:
        self.folder = folder
        self.limit = limit_mb * 1024 * 1024
        self.limit_mb = limit_mb
        self._stop = stop
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline = 0
        self.exceeded: int | None = None  # bytes written when the step was stopped

    def __enter__(self) -> DiskWatch:
        self.baseline = tree_bytes(self.folder)
        self._thread = threading.Thread(target=self._watch, name="step-disk-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.exceeded is None:  # what a step wrote faster than a scan (sparse files) still counts
            written = tree_bytes(self.folder) - self.baseline
            if written > self.limit:
                self.exceeded = written

    def _watch(self) -> None:
        interval = self.MIN_INTERVAL
        while not self._done.wait(interval):
            t0 = time.monotonic()
            written = tree_bytes(self.folder) - self.baseline
            took = time.monotonic() - t0
            if written > self.limit:
                self.exceeded = written
                self._stop()
                return
            interval = min(self.MAX_INTERVAL, max(self.MIN_INTERVAL, took / self.COST_SHARE))
