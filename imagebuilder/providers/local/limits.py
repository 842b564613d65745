"""Resource limits of one sandbox step, read from the environment when a step starts (app settings):

    IMAGEBUILDER_STEP_MEMORY_MB     memory of the step (default 4096): a cgroup memory limit where the
                                    host lets us make cgroups, and RLIMIT_AS per process in every case
    IMAGEBUILDER_STEP_PIDS          processes/threads of the step (default 1024): a cgroup pids limit,
                                    and RLIMIT_NPROC of the step's own host uid (root inside is a fresh
                                    unprivileged uid per step, so the count is the step's alone)
    IMAGEBUILDER_STEP_CPUS          CPUs' worth of time per second (default: all; e.g. 1.5): cgroup only
    IMAGEBUILDER_STEP_FILE_SIZE_MB  largest file a step may write (default 16384): RLIMIT_FSIZE
    IMAGEBUILDER_SANDBOX_CONFINE    on (default) / off: user namespace, idmapped root and seccomp filter

The rlimits are applied with util-linux `prlimit` in the step's argv; the cgroup (v2 when the unified
hierarchy has the controllers, else the v1 memory/pids/cpu hierarchies) is one directory per step made
under this process's own cgroup and removed after the step.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.providers.base import ProviderConfigError

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "imagebuilder-step-"


@dataclass(frozen=True)
class StepLimits:
    memory_mb: int = 4096
    pids: int = 1024
    cpus: float | None = None
    file_size_mb: int = 16384
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
            f"--fsize={_capped(resource.RLIMIT_FSIZE, self.file_size_mb * mib)}",
            "--core=0",
            "--",
        ]


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
