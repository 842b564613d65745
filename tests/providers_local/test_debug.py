"""The local side of `aib shell/cleanup/try` (providers/local/debug.py): which folders may be entered or
removed, and the file diff of a step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagebuilder.providers.local import debug


def run_dir(tmp_path: Path, *, kept: bool) -> Path:
    folder = tmp_path / "state" / "local" / "runs" / "t-r1-abc"
    (folder / "build" / "root" / "etc").mkdir(parents=True)
    if kept:
        debug.mark_kept(folder, owner="/subscriptions/s/resourceGroups/rg/providers/X/imageTemplates/T")
    return folder


def test_only_a_kept_run_folder_can_be_entered_or_removed(tmp_path: Path) -> None:
    with pytest.raises(debug.DebugError, match="not a run folder"):
        debug.kept_run(tmp_path)
    plain = run_dir(tmp_path, kept=False)
    with pytest.raises(debug.DebugError, match="not kept on purpose"):
        debug.cleanup(plain)
    assert plain.is_dir()


def test_cleanup_removes_a_kept_folder_and_kept_of_finds_it_by_template(tmp_path: Path) -> None:
    kept = run_dir(tmp_path, kept=True)
    runs = kept.parent
    template = "/subscriptions/S/resourceGroups/RG/providers/X/imageTemplates/t"  # ids compare without case
    assert debug.kept_of(runs, template) == [kept]
    assert debug.kept_of(runs, template + "2") == []
    assert debug.kept_run(kept) == kept / "build" / "root"
    assert debug.cleanup(kept)[-1] == f"run folder {kept}"
    assert not kept.exists()
    with pytest.raises(debug.DebugError, match="no kept build root"):
        debug.kept_run(kept.parent / "gone")


def test_diff_lists_added_changed_and_removed_paths(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "a").write_text("a")
    (root / "etc" / "gone").write_text("x")
    (root / "etc" / "same").write_text("s")
    before = debug.snapshot(root)
    (root / "etc" / "a").write_text("a, longer")
    (root / "etc" / "gone").unlink()
    (root / "opt" / "app").mkdir(parents=True)
    os.symlink("/etc/a", root / "opt" / "app" / "link")
    d = debug.diff(before, debug.snapshot(root))
    assert d.added == ["/opt", "/opt/app", "/opt/app/link"]
    assert d.changed == ["/etc/a"]
    assert d.removed == ["/etc/gone"]
