"""The local sweeper on real folders and a real process: what it removes, keeps and never touches."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.providers.local.layout import RunLayout
from imagebuilder.providers.local.sandbox import RUN_MARKER_ENV
from imagebuilder.providers.local.sweep import RunFacts, run_folders, sweep


def _ref(name: str) -> RunRef:
    return RunRef(
        subscription_id="s", resource_group="rg", template_name=name, run_id=f"20260101000000-{name}"
    )


def _folder(state: Path, ref: RunRef | None, name: str = "", *, age: float = 3600) -> Path:
    folder = RunLayout.for_run(state, ref).run_dir if ref else state / "local" / "runs" / name
    (folder / "build" / "root").mkdir(parents=True)
    (folder / "staging" / "artifacts").mkdir(parents=True)
    (folder / "staging" / "artifacts" / "a.sh").write_text("echo hi\n")
    stamp = time.time() - age
    os.utime(folder, (stamp, stamp))
    return folder


def test_sweep_removes_finished_and_ownerless_folders_only(tmp_path: Path) -> None:
    active, done, kept = _ref("active"), _ref("done"), _ref("kept")
    folders = {
        "active": _folder(tmp_path, active),
        "done": _folder(tmp_path, done),
        "kept": _folder(tmp_path, kept),
        "orphan": _folder(tmp_path, None, "orphan-1234"),
        "young": _folder(tmp_path, None, "young-5678", age=0),
    }
    # a process left running for the finished run (marked like a sandboxed step)
    leftover = subprocess.Popen(
        ["sleep", "60"], env={**os.environ, RUN_MARKER_ENV: folders["done"].name}, cwd=folders["done"]
    )
    try:
        seen = run_folders(tmp_path)
        assert sorted(seen) == sorted(folders.values())
        report = sweep(
            tmp_path,
            {
                active: RunFacts(terminal=False),
                done: RunFacts(terminal=True),
                kept: RunFacts(terminal=True, kept=True),
            },
            folders=seen,
            grace_seconds=600,
        )
        assert leftover.wait(timeout=10) != 0, "the finished run's process was not killed"
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()
    assert not folders["done"].exists() and not folders["orphan"].exists()
    assert folders["active"].is_dir() and (folders["active"] / "staging" / "artifacts" / "a.sh").is_file()
    assert folders["kept"].is_dir() and folders["young"].is_dir()
    assert any(f"process {leftover.pid}" in line for line in report.removed), report
    assert sum("run folder" in line for line in report.removed) == 2
    assert len(report.kept) == 1 and not report.errors


def test_sweep_unmounts_what_a_vanished_run_left_mounted(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    orphan = _folder(tmp_path, None, "vanished-4321")
    root = orphan / "build" / "root"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "ib-sweep-test", str(root)], check=True)
    try:
        (root / "etc").mkdir()
        report = sweep(tmp_path, {}, grace_seconds=600)
        mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        assert str(root) not in mounted
        assert not orphan.exists()
        assert f"mount {root}" in report.removed and not report.errors
    finally:
        subprocess.run(["umount", str(root)], check=False, capture_output=True)
