"""Phase cleanup: every transient thing of a run (processes, loop devices, mounts, the run folder), found
by the run's identity; with `keep` (errorHandling abort) the build root is kept as a plain folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from imagebuilder.pipeline.messages import (
    CleanupReport,
)
from imagebuilder.providers.base import LogSink, ProviderError
from imagebuilder.providers.local import (
    confine,
    debug,
    earlydisk,
    mounts,
    proc,
    sandbox,
)
from imagebuilder.providers.local.context import (
    RunContext,
)


def cleanup(ctx: RunContext, *, keep: bool, log: LogSink) -> CleanupReport:
    layout = ctx.layout
    removed: list[str] = []
    kept: list[str] = []
    errors: list[str] = []
    run_dir = layout.run_dir
    # From here on a step this cleanup kills does not put the run's overlay back as it is released.
    confine.stop_remounts(layout.root)
    pids = sandbox.find_processes(ctx.marker, [run_dir])
    for pid in sandbox.kill_processes(pids):
        removed.append(f"process {pid}")
    if pids:
        _wait_gone(pids)
    for loop in mounts.loops_under(run_dir):
        try:
            proc.run(["losetup", "-d", loop], log=log, timeout=60)
            removed.append(f"loop device {loop}")
        except ProviderError as exc:
            errors.append(f"cannot detach {loop}: {exc}")
    if keep and mounts.mounted(layout.root):
        # Kept for inspection as a plain folder, so that no mount outlives the run.
        kept_copy = layout.build / "root.kept"
        shutil.rmtree(kept_copy, ignore_errors=True)
        try:
            proc.run(
                ["cp", "-a", "--reflink=auto", f"{layout.root}/.", str(kept_copy)], log=log, timeout=1800
            )
        except ProviderError as exc:
            errors.append(f"cannot copy the build root for inspection: {exc}")
            shutil.rmtree(kept_copy, ignore_errors=True)
    for mount in sorted(mounts.mounts_under(run_dir), key=len, reverse=True):
        try:
            proc.run(["umount", mount], log=log, timeout=120)
        except ProviderError:
            try:
                proc.run(["umount", "-l", mount], log=log, timeout=60)
            except ProviderError as exc:
                errors.append(f"cannot unmount {mount}: {exc}")
                continue
        removed.append(f"mount {mount}")
    if keep and (layout.build / "root.kept").is_dir() and not mounts.mounts_under(layout.build):
        shutil.rmtree(layout.root, ignore_errors=True)
        os.replace(layout.build / "root.kept", layout.root)
        for d in (layout.upper, layout.overlay_work):
            shutil.rmtree(d, ignore_errors=True)
    if keep:
        shutil.rmtree(layout.validate_dir, ignore_errors=True)
        earlydisk.discard(layout)  # a disk begun in the background: nothing to inspect there
        if layout.root.exists():
            kept.append(f"build root {layout.root}")
        if layout.logs.exists():
            kept.append(f"logs {layout.logs}")
        if layout.staging.exists():
            kept.append(f"staging {layout.staging}")
        # the sweeper leaves it until `aib cleanup` or the template's deletion
        debug.mark_kept(run_dir, owner=ctx.build.run.template_id)
        log.write(f"[cleanup] kept for inspection: {'; '.join(kept) or 'nothing (no build root)'}\n")
        return CleanupReport(removed=removed, kept=kept, errors=errors)
    # A confined step killed above no longer puts the run's overlay back (stop_remounts), but an activity
    # of this run still running may: buildroot.advance mounts the next layer when its step ended just
    # before the kill. A mount that reappears is taken down again before the folder goes.
    existed = run_dir.exists()
    for _ in range(20):
        for mount in sorted(mounts.mounts_under(run_dir), key=len, reverse=True):
            with contextlib.suppress(ProviderError):
                proc.run(["umount", "-l", mount], log=log, timeout=60)
        if run_dir.exists() and not mounts.mounts_under(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        if not run_dir.exists():
            break
        time.sleep(0.25)
    left = mounts.mounts_under(run_dir)
    if left:
        errors.append(f"mounts remain under {run_dir}: {', '.join(left)}; not deleting it")
    elif run_dir.exists():
        errors.append(f"cannot remove {run_dir}")
    elif existed:
        removed.append(f"run folder {run_dir}")
    for e in errors:
        log.write(f"! cleanup: {e}\n")
    return CleanupReport(removed=removed, kept=kept, errors=errors)


def _wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() for p in pids):
            return
        time.sleep(0.05)
