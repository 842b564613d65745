"""The host's mount table and loop devices as the local provider sees them (the one copy): which mount
points and loop devices lie under a folder, so that cleanup and the sweeper release them before deleting
anything (a recursive delete must never descend into a mount)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def unescape(text: str) -> str:
    """A mountinfo field with its octal escapes (``\\040`` for a space) decoded."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def mount_points() -> list[str]:
    """Every mount point of this process's mount namespace."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    return [unescape(line.split()[4]) for line in lines if len(line.split()) > 4]


def mounted(path: Path) -> bool:
    return str(path) in mount_points()


def mounts_under(folder: Path, *, resolve: bool = False) -> list[str]:
    """Mount points at or below `folder` (`resolve`: compare with its real path)."""
    base = os.path.realpath(folder) if resolve else str(folder)
    return [m for m in mount_points() if m == base or m.startswith(base + "/")]


def loops_under(folder: Path) -> list[str]:
    """Loop devices whose backing file lies at or below `folder`."""
    out = []
    base = str(folder)
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            path = backing.read_text().strip()
            if path == base or path.startswith(base + "/"):
                out.append("/dev/" + backing.parent.parent.name)
    return out


def mount_point_of(path: Path) -> Path:
    """The mount point of the filesystem holding `path` (the nearest existing ancestor's when it does not
    exist): where a "no space left" error points the user."""
    path = Path(os.path.realpath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    dev = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == dev:
        path = path.parent
    return path
