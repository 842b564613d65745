"""The local sweeper: transient run folders (build roots, overlays, staging, scratch disks) under
`<state>/local/runs` whose run is over or gone, with the processes, mounts and loop devices in them.

`sweep(state_dir, runs, *, grace_seconds)`: `runs` maps every run the store knows to (terminal, kept)
where `kept` means its cleanup kept the build root on purpose (errorHandling `abort`). A kept folder is
marked (`debug.mark_kept`) and never removed by the sweeper: `aib cleanup` (`debug.cleanup`) or the
deletion of its template (`staging.delete_template`) removes it; the sweeper only makes sure no mount or
process holds it.
A run still active is never touched; a folder no known run owns is removed only once it is older than
`grace_seconds`. Errors are reported, not raised.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.providers.base import NullLog, ProviderError
from imagebuilder.providers.local import debug, proc, sandbox
from imagebuilder.providers.local.layout import RunLayout, StateLayout
from imagebuilder.providers.local.mounts import loops_under, mounts_under


@dataclass(frozen=True)
class RunFacts:
    """What the store says about a run: over or not, and whether its build root is kept on purpose."""

    terminal: bool
    kept: bool = False


@dataclass
class SweepReport:
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def run_folders(state_dir: Path) -> list[Path]:
    """The run folders present now (list them BEFORE reading runs from the store: a run is recorded
    before its folder exists, so a folder seen first always has its run in a later read)."""
    runs = StateLayout(state_dir).runs
    return sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a killed child its parent has not reaped yet)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return bool(fields) and fields[0] != "Z"


def release(folder: Path, report: SweepReport) -> bool:
    """Kill the folder's processes, unmount its mounts, detach its loop devices. True when nothing is
    left holding it."""
    pids = sandbox.kill_processes(sandbox.find_processes(folder.name, [folder]))
    for pid in pids:
        report.removed.append(f"process {pid} of {folder.name}")
    deadline = time.monotonic() + 5
    while pids and any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for loop in loops_under(folder):
        try:
            proc.run(["losetup", "-d", loop], log=NullLog(), timeout=60)
            report.removed.append(f"loop device {loop}")
        except ProviderError as exc:
            report.errors.append(f"cannot detach {loop}: {exc}")
    mounts = mounts_under(folder)
    for mount in sorted(mounts, key=len, reverse=True):
        try:
            proc.run(["umount", mount], log=NullLog(), timeout=120)
        except ProviderError:
            try:
                proc.run(["umount", "-l", mount], log=NullLog(), timeout=60)
            except ProviderError as exc:
                report.errors.append(f"cannot unmount {mount}: {exc}")
                continue
        report.removed.append(f"mount {mount}")
    return not mounts_under(folder)


def _age(folder: Path) -> float:
    try:
        return time.time() - folder.stat().st_mtime
    except OSError:
        return 0.0


def sweep(
    state_dir: Path,
    runs: Mapping[RunRef, RunFacts],
    *,
    folders: list[Path] | None = None,
    grace_seconds: float = 300.0,
) -> SweepReport:
    """Remove what finished or vanished runs left under `state_dir` (see the module docstring)."""
    report = SweepReport()
    present = run_folders(state_dir) if folders is None else folders
    owners: dict[str, tuple[RunRef, RunFacts]] = {}
    for ref, facts in runs.items():
        try:
            owners[RunLayout.for_run(state_dir, ref).run_dir.name] = (ref, facts)
        except ProviderError as exc:  # a name no run folder can have (see layout.check_name)
            report.errors.append(f"run {ref.run_id!r} of {ref.template_name!r}: {exc}")
    with contextlib.suppress(ProviderError):
        sandbox.sweep_steps()  # step namespaces, staged roots, cgroups of steps killed mid-way
    for folder in present:
        owner = owners.get(folder.name)
        if owner is not None and not owner[1].terminal:
            continue  # a running run's resources are never touched
        if owner is None and _age(folder) < grace_seconds:
            continue  # maybe a run recorded after our listing: look again next time
        what = (
            f"run folder {folder} (run {owner[0].run_id} of {owner[0].template_name}, finished)"
            if owner is not None
            else f"run folder {folder} (no run or template owns it)"
        )
        if not release(folder, report):
            report.errors.append(f"mounts remain under {folder}; not deleting it")
            continue
        if (owner is not None and owner[1].kept) or debug.is_kept(folder):
            debug.mark_kept(folder)
            report.kept.append(f"{what}: kept on purpose (errorHandling abort) until `aib cleanup`")
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            report.errors.append(f"cannot remove {folder}")
        else:
            report.removed.append(what)
    return report
