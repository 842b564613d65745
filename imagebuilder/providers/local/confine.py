"""The user namespace of a sandbox step and the build root it sees: root inside the step is an unprivileged
uid outside (a fresh 65536-id range per step, `UID_BASE` + slot * 65536), while the build root's files keep
their real owners on disk. The root is shown to the step through an idmapped mount (Linux >= 5.19): files
owned by uid N on disk appear as N inside, and what the step creates as N is written as N. An overlayfs
root cannot be idmapped as a whole, so for the step it is swapped for an overlay of idmapped layers (same
lower, upper and work directories) and put back afterwards; a plain directory root gets an idmapped bind
on top. A step killed mid-way leaves the swap recorded in its staging folder (`swapped.json`); the next
`confined_root` (or the sweeper) puts the original back, unless cleanup of the run began (`stop_remounts`
leaves a marker beside the root): then the overlay stays down for cleanup to remove.

Exceptions: `ConfinementError` (a ProviderError) when the kernel cannot provide this (no user namespaces,
no idmapped mounts); the sandbox then refuses to run the step unless confinement is turned off.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.providers.base import ProviderError
from imagebuilder.providers.local import mounts, proc
from imagebuilder.providers.local.fsutil import locked_file

UID_BASE = 1_000_000_000  # far above any uid a host hands out; slots of 65536 ids up to ~2.07e9
SLOTS = 16384
RANGE = 65536

_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442  # x86_64
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 1, os.O_CLOEXEC
_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_NODEV, _MOUNT_ATTR_IDMAP = 0x4, 0x100000
_MNT_DETACH = 2


class ConfinementError(ProviderError):
    """The step's user namespace or idmapped root could not be set up."""


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise ConfinementError(
            f"{what} failed: {os.strerror(err)}",
            hint="the sandbox needs Linux >= 5.19 (user namespaces, idmapped mounts) and root; or set "
            "IMAGEBUILDER_SANDBOX_CONFINE=off to run steps as host root with reduced capabilities only",
        )
    return result


def make_userns(owner: int, uid_map: str) -> int:
    """A new user namespace owned by uid `owner` with `uid_map` for both uids and gids; returns an fd on
    it (the namespace lives as long as the fd). The helper that creates it (util-linux `unshare`, started
    as `owner`) exits as soon as the fd is open: no fork of this multi-threaded process."""
    helper = subprocess.Popen(
        ["unshare", "--user", "--", "/bin/sh", "-c", "echo ready; read _"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        user=owner if owner else None,
        group=owner if owner else None,
        extra_groups=[] if owner else None,
    )
    assert helper.stdin is not None and helper.stdout is not None
    try:
        if helper.stdout.readline().strip() != b"ready":
            raise ConfinementError(
                "could not create a user namespace (unshare --user failed)",
                hint="check /proc/sys/user/max_user_namespaces, or set IMAGEBUILDER_SANDBOX_CONFINE=off",
            )
        for name in ("uid_map", "gid_map"):
            Path(f"/proc/{helper.pid}/{name}").write_text(uid_map)
        return os.open(f"/proc/{helper.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        with contextlib.suppress(OSError):
            helper.stdin.close()
        try:
            helper.wait(10)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()


def idmapped_clone(path: Path, userns_fd: int) -> int:
    """A detached bind of `path` (not its submounts) idmapped through `userns_fd`; returns its fd."""
    fd = _check(
        _libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(path), _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC),
        f"open_tree({path})",
    )
    # nodev too: a device node in the build root (from a base or a step) never opens a host device
    attr = _MountAttr(_MOUNT_ATTR_IDMAP | _MOUNT_ATTR_NODEV, 0, 0, userns_fd)
    try:
        _check(
            _libc.syscall(
                _SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)
            ),
            f"idmapping {path}",
        )
    except BaseException:
        os.close(fd)
        raise
    return fd


def attach(fd: int, target: Path) -> None:
    _check(
        _libc.syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH),
        f"attaching a mount at {target}",
    )


def detach(target: Path) -> None:
    """umount2(MNT_DETACH): gone from the mount table now, released when its last user lets go."""
    if _libc.umount2(os.fsencode(target), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise ConfinementError(f"could not unmount {target}: {os.strerror(err)}")


STAGING = Path("/run/imagebuilder-sandbox")  # world-traversable: bwrap runs as the step's unprivileged uid


@dataclass(frozen=True)
class Confined:
    """One step's identity and view: `base` is the host uid/gid of root inside, `userns_fd` its user
    namespace; `root`, `inbox`, `resolv_conf` are the paths bwrap binds from (in `STAGING`, which the
    unprivileged uid can reach: the state dir's own folders may be closed to it)."""

    base: int
    userns_fd: int
    root: Path
    inbox: Path | None
    resolv_conf: Path | None


def _overlay_of(root: Path) -> dict[str, str] | None:
    """lowerdir/upperdir/workdir of the overlay mounted at `root` (the topmost mount there), else None.
    Relative layer paths (the step cache mounts from `<build>/layers` to keep options short) are
    resolved against that folder, recorded as `cwd`."""
    found: dict[str, str] | None = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3 or mounts.unescape(fields[4]) != str(root):
                continue
            found = None
            if tail[0] == "overlay":
                opts: dict[str, str] = {}
                for item in _split_options(tail[2]):
                    key, _, value = item.partition("=")
                    if key in ("lowerdir", "upperdir", "workdir"):
                        opts[key] = mounts.unescape(value)
                if {"lowerdir", "upperdir", "workdir"} <= set(opts):
                    relative = not all(v.startswith("/") for v in opts.values())
                    opts["cwd"] = str(root.parent / "layers") if relative else "/"
                    found = opts
    return found


def upper_of(root: Path) -> Path | None:
    """The writable layer (overlay upperdir) of the overlay mounted at `root`; None for a plain folder."""
    opts = _overlay_of(root)
    return None if opts is None else _absolute(opts, opts["upperdir"])


def _absolute(opts: dict[str, str], path: str) -> Path:
    return Path(opts.get("cwd", "/"), path) if not path.startswith("/") else Path(path)


def _split_options(text: str) -> list[str]:
    """Overlay super options split on unescaped commas (a path may carry an escaped one)."""
    out, cur, i = [], "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            cur += text[i : i + 2]
            i += 2
            continue
        if text[i] == ",":
            out.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    out.append(cur)
    return out


def _mount_overlay(opts: dict[str, str], target: Path, *, nodev: bool = False) -> None:
    """Mount an overlay with `opts` (paths relative to `opts["cwd"]` when not absolute)."""
    layers = f"lowerdir={opts['lowerdir']},upperdir={opts['upperdir']},workdir={opts['workdir']}"
    options = ("nodev," if nodev else "") + layers
    argv = ["mount", "-t", "overlay", "overlay", "-o", options, str(target)]
    proc.run(argv, timeout=60, cwd=opts.get("cwd") or "/")


def sweep() -> list[str]:
    """Release the staging folders of steps whose process died (kill -9) and put back build roots they
    had swapped; returns the folders removed."""
    removed: list[str] = []
    with contextlib.suppress(OSError):
        for folder in STAGING.iterdir():
            if _owner_alive(folder):
                continue
            _release(folder)
            removed.append(str(folder))
    return removed


def _owner_alive(folder: Path) -> bool:
    """Whether the process that staged `folder` (its name starts with that pid) is still running."""
    pid = folder.name.split("-", 1)[0]
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def _cleanup_paths(root: Path) -> tuple[Path, Path]:
    """(marker, lock) beside a build root: the marker says cleanup of its run began; the lock orders a
    release's remount against `stop_remounts`."""
    return root.parent / f".{root.name}.cleanup-begun", root.parent / f".{root.name}.remount.lock"


def stop_remounts(root: Path) -> None:
    """Cleanup of the run whose build root is `root` begins: a confined step released from now on (its
    sandbox killed by that cleanup) leaves the run's overlay unmounted instead of putting it back under
    a folder being removed. Waits for a release remounting right now, so its mount is in the mount table
    (for cleanup to take down) when this returns. A root with no folder around it has nothing to guard."""
    marker, lock = _cleanup_paths(root)
    if not root.parent.is_dir():
        return
    with contextlib.suppress(FileNotFoundError), locked_file(lock):
        marker.touch()


def _release(folder: Path) -> None:
    record = folder / "swapped.json"
    for mount in sorted(mounts.mounts_under(folder), key=len, reverse=True):
        detach(Path(mount))
    if record.is_file():
        # Put the run's own overlay back, unless cleanup of the run began (`stop_remounts`: a cancel or a
        # timeout during the step) or removed it; if this fails the build root's next user remounts it
        # (buildroot.root_ready).
        with contextlib.suppress(ProviderError, OSError, ValueError, KeyError):
            data = json.loads(record.read_text())
            root = Path(data["root"])
            upper = _absolute(data["overlay"], data["overlay"]["upperdir"])
            marker, lock = _cleanup_paths(root)
            # the lock lives beside the root: a build folder already removed cannot get it (OSError)
            with locked_file(lock):
                if (
                    not marker.exists()
                    and root.is_dir()
                    and upper.is_dir()
                    and not mounts.mounted(root)
                    and not _swapped_by_live_step(root, other_than=folder)
                ):
                    _mount_overlay(data["overlay"], root)
    # Only empty folders and our own small files go: never a recursive delete (a mount could remain).
    left = set(mounts.mounts_under(folder))
    layers = folder / "layers"
    for path in [
        *(sorted(layers.iterdir()) if layers.is_dir() else []),
        layers,
        folder / "root",
        folder / "inbox",
        folder / "resolv.conf",
        record,
        folder,
    ]:
        if str(path) in left:
            continue
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()


def _swapped_by_live_step(root: Path, *, other_than: Path) -> bool:
    """Whether a step whose process is alive has `root` swapped out right now (its staging folder
    records the swap): then the overlay must stay down (two overlays on one upper dir must never be
    live at once); that step puts it back when it ends. The case: a step killed with its worker is
    released (by the sweeper) while the run's next attempt of that step runs."""
    with contextlib.suppress(OSError):
        for folder in STAGING.iterdir():
            if folder == other_than or not _owner_alive(folder):
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                if Path(json.loads((folder / "swapped.json").read_text())["root"]) == root:
                    return True
    return False


def _attach_clone(source: Path, target: Path, userns_fd: int | None) -> None:
    if userns_fd is None:
        fd = _check(
            _libc.syscall(
                _SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source), _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC
            ),
            f"open_tree({source})",
        )
    else:
        fd = idmapped_clone(source, userns_fd)
    try:
        if source.is_dir():
            target.mkdir()
        else:
            target.touch()
        attach(fd, target)
    finally:
        os.close(fd)


@contextlib.contextmanager
def confined_root(
    root: Path, inbox: Path | None = None, resolv_conf: Path | None = None
) -> Iterator[Confined]:
    """The step's user namespace and idmapped view of `root` (with `inbox` and `resolv_conf` reachable
    beside it) for the duration of the block (see the module docstring)."""
    sweep()
    base = UID_BASE + secrets.randbelow(SLOTS) * RANGE
    # The step's namespace: its ids 0..65535 are host ids base..base+65535, nothing else.
    step_ns = make_userns(base, f"0 {base} {RANGE}\n")
    # The layers' idmap: disk id N is seen as base+N; the host's root (overlayfs' own work files, made
    # with the mounter's credentials) is stored as 65536, an id no step can take.
    layer_ns = make_userns(0, f"0 {base} {RANGE}\n{RANGE} 0 1\n")
    opts = _overlay_of(root)
    STAGING.mkdir(mode=0o755, exist_ok=True)
    folder = STAGING / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    folder.mkdir(mode=0o755)
    view = folder / "root"
    try:
        if opts is None:
            _attach_clone(root, view, layer_ns)
        else:
            layers = folder / "layers"
            layers.mkdir(mode=0o700)
            lowers = []
            for i, lower in enumerate(opts["lowerdir"].split(":")):
                _attach_clone(_absolute(opts, lower), layers / f"l{i}", layer_ns)
                lowers.append(f"l{i}")
            upper, work = _absolute(opts, opts["upperdir"]), _absolute(opts, opts["workdir"])
            common = Path(os.path.commonpath([upper.resolve(), work.resolve()]))
            _attach_clone(common, layers / "rw", layer_ns)
            # Under the lock a release's remount takes: a dead step's release never puts the overlay
            # back between this record and the detach (it sees this live swap and leaves it down).
            with locked_file(_cleanup_paths(root)[1]):
                (folder / "swapped.json").write_text(json.dumps({"root": str(root), "overlay": opts}))
                detach(root)  # two overlays on one upper dir must never be live at once
            view.mkdir(mode=0o755)
            _mount_overlay(
                {
                    "lowerdir": ":".join(lowers),  # relative to `layers`: short options for many layers
                    "upperdir": str(Path("rw") / upper.resolve().relative_to(common)),
                    "workdir": str(Path("rw") / work.resolve().relative_to(common)),
                    "cwd": str(layers),
                },
                view,
                nodev=True,
            )
            for child in sorted(layers.iterdir()):  # the overlay holds its own clones of its layers
                detach(child)
        staged_inbox = staged_resolv = None
        if inbox is not None:
            staged_inbox = folder / "inbox"
            _attach_clone(inbox, staged_inbox, None)
        if resolv_conf is not None and resolv_conf.is_file():
            staged_resolv = folder / "resolv.conf"
            _attach_clone(resolv_conf, staged_resolv, None)
        yield Confined(base, step_ns, view, staged_inbox, staged_resolv)
    finally:
        try:
            _release(folder)
        finally:
            for fd in (step_ns, layer_ns):
                with contextlib.suppress(OSError):
                    os.close(fd)
