"""Offline Linux deprovisioning ("generalize") of a root tree, the way `waagent -deprovision` and
`cloud-init clean` leave an image: machine-id emptied (not removed), SSH host keys, cloud-init and agent
state, logs truncated, shell history, DHCP leases, temp files, build-host resolv.conf and hostname, the
build helpers (policy-rc.d) removed, root's password locked, and the build user (customizers.BUILD_USER)
removed with its home, as `waagent -deprovision+user` does. Returns what it cleared.

Every path is resolved inside the root (symlinks never lead out of it); refuses to run on `/`.
Exceptions: `DeprovisionError` (a ProviderError) for a root that is `/` or not a directory.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import stat
from pathlib import Path

from imagebuilder.providers.base import ProviderError
from imagebuilder.providers.local.customizers import BUILD_USER
from imagebuilder.providers.local.layout import resolve_in_root

HISTORY_FILES = (".bash_history", ".ash_history", ".zsh_history", ".lesshst", ".viminfo", ".python_history")
ROTATED = ("*.gz", "*.[0-9]", "*.old", "*.xz", "*.bz2", "*.zst")
POLICY_RC_D = "/usr/sbin/policy-rc.d"
POLICY_RC_D_BODY = (
    "#!/bin/sh\n# installed by the local image builder for the build; removed by generalize\nexit 101\n"
)


class DeprovisionError(ProviderError):
    """The tree cannot be deprovisioned (it is `/`, or not a directory)."""


class _Tree:
    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        self.report: dict[str, list[str]] = {}

    def rel(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.root))

    def note(self, what: str, path: Path) -> None:
        self.report.setdefault(what, []).append(self.rel(path))

    def path(self, inside: str, *, follow_final: bool = False) -> Path:
        return resolve_in_root(self.root, inside, follow_final=follow_final)

    def remove(self, what: str, inside: str) -> None:
        p = self.path(inside)
        if p.is_symlink() or p.is_file() or (p.exists() and not p.is_dir()):
            p.unlink()
            self.note(what, p)
        elif p.is_dir():
            shutil.rmtree(p)
            self.note(what, p)

    def remove_children(self, what: str, inside: str, patterns: tuple[str, ...] = ("*",)) -> None:
        d = self.path(inside, follow_final=True)
        if not d.is_dir() or d.is_symlink():
            return
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            if not any(fnmatch.fnmatch(entry.name, pat) for pat in patterns):
                continue
            p = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(p)
            else:
                p.unlink()
            self.note(what, p)

    def truncate(self, what: str, p: Path) -> None:
        """Empty a regular file in place (never through a symlink)."""
        try:
            fd = os.open(p, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode) and os.fstat(fd).st_size > 0:
                os.ftruncate(fd, 0)
                self.note(what, p)
        finally:
            os.close(fd)

    def write(self, what: str, inside: str, text: str) -> None:
        p = self.path(inside, follow_final=True)
        if not p.parent.is_dir():
            return
        if p.is_symlink() or (p.exists() and not p.is_file()):
            self.remove(what, self.rel(p))
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        self.note(what, p)


def deprovision(root: Path) -> dict[str, list[str]]:
    """Generalize the tree at `root` in place; returns {category: [paths inside the image]}."""
    real = Path(os.path.realpath(root))
    if real == Path("/"):
        raise DeprovisionError("refusing to deprovision /", hint="pass the build root of a run")
    if not real.is_dir():
        raise DeprovisionError(f"{root} is not a directory", hint="pass the build root of a run")
    t = _Tree(real)

    # 1 machine identity: an empty machine-id makes systemd run first-boot logic and generate a new one.
    mid = t.path("/etc/machine-id")
    had_id = mid.exists() or mid.is_symlink()
    if mid.is_symlink():
        mid.unlink()
    if had_id or t.path("/etc/systemd").is_dir():
        fd = os.open(mid, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o444)
        os.close(fd)
        t.note("machine-id emptied", mid)
    dbus = t.path("/var/lib/dbus", follow_final=True)
    if dbus.is_dir():
        t.remove("machine-id emptied", "/var/lib/dbus/machine-id")
        os.symlink("/etc/machine-id", dbus / "machine-id")
    for seed in (
        "/var/lib/systemd/random-seed",
        "/var/lib/urandom/random-seed",
        "/var/lib/systemd/credential.secret",
    ):
        t.remove("random seeds", seed)

    # 2 SSH host keys (cloud-init, waagent or a first-boot unit makes new ones).
    t.remove_children("ssh host keys", "/etc/ssh", ("ssh_host_*",))

    # 3 cloud-init (instance data, logs, seed) and the Azure agent's state.
    t.remove_children("cloud-init state", "/var/lib/cloud")
    t.remove_children("cloud-init state", "/var/log", ("cloud-init*.log",))
    t.remove_children("agent state", "/var/lib/waagent")
    t.remove("agent state", "/var/log/waagent.log")

    # 4 logs: rotated files and the journal removed, every other file truncated.
    logdir = t.path("/var/log", follow_final=True)
    if logdir.is_dir() and not logdir.is_symlink():
        t.remove_children("logs removed", "/var/log/journal")
        for dirpath, _dirs, files in os.walk(logdir, followlinks=False):
            for name in sorted(files):
                p = Path(dirpath) / name
                if p.is_symlink():
                    continue
                if any(fnmatch.fnmatch(name, pat) for pat in ROTATED):
                    p.unlink()
                    t.note("logs removed", p)
                else:
                    t.truncate("logs truncated", p)

    # 5 shell history of root and every user.
    homes = ["/root"]
    home_dir = t.path("/home", follow_final=True)
    if home_dir.is_dir():
        homes += [f"/home/{e.name}" for e in os.scandir(home_dir) if e.is_dir(follow_symlinks=False)]
    for home in homes:
        for name in HISTORY_FILES:
            t.remove("shell history", f"{home}/{name}")

    # 6 DHCP leases and persistent network naming.
    t.remove_children("dhcp leases", "/var/lib/dhcp", ("*.leases", "*.lease"))
    t.remove_children("dhcp leases", "/var/lib/dhclient")
    t.remove_children("dhcp leases", "/var/lib/dhcpcd", ("*.lease*",))
    t.remove_children("dhcp leases", "/var/lib/NetworkManager", ("*lease*",))
    t.remove_children("dhcp leases", "/var/lib/systemd/network")
    t.remove("dhcp leases", "/etc/udev/rules.d/70-persistent-net.rules")

    # 7 temp folders.
    t.remove_children("temp files", "/tmp")  # noqa: S108 (inside the image)
    t.remove_children("temp files", "/var/tmp")  # noqa: S108

    # 8 build-host leakage and build helpers.
    if t.path("/etc/resolv.conf").exists() or t.path("/etc/resolv.conf").is_symlink():
        rc = t.path("/etc/resolv.conf")
        if rc.is_symlink():
            pass  # a link to a resolver's runtime file (systemd-resolved) is what a fresh image has
        else:
            t.truncate("resolv.conf emptied", rc)
    if t.path("/etc").is_dir():
        current = t.path("/etc/hostname")
        if not (current.is_file() and not current.is_symlink() and current.read_text() == "localhost\n"):
            t.write("hostname reset", "/etc/hostname", "localhost\n")
    t.remove("build helpers removed", POLICY_RC_D)

    # 9 package caches (size, not identity).
    t.remove_children("package caches", "/var/cache/apt/archives", ("*.deb",))
    t.remove_children("package caches", "/var/cache/apt/archives/partial")
    t.remove_children("package caches", "/var/cache/apt", ("*.bin",))
    t.remove_children("package caches", "/var/lib/apt/lists", ("*_*",))
    t.remove_children("package caches", "/var/cache/debconf", ("*-old",))
    t.remove_children("package caches", "/var/lib/dpkg", ("*-old",))

    # 10 root's password locked (like `passwd -l root`).
    _lock_root(t)

    # 11 the build user the customizers ran as (like waagent -deprovision+user), with its home.
    _remove_user(t, BUILD_USER)
    return t.report


def _remove_user(t: _Tree, user: str) -> None:
    """Drop `user` from the account files (and group member lists), and its home."""
    for inside in ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow"):
        p = t.path(inside)
        if p.is_symlink() or not p.is_file():
            continue
        lines = p.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            fields = line.rstrip("\n").split(":")
            if fields[0] == user:
                continue
            if inside in ("/etc/group", "/etc/gshadow") and len(fields) >= 4:
                members = [m for m in fields[-1].split(",") if m and m != user]
                if ",".join(members) != fields[-1]:
                    line = ":".join([*fields[:-1], ",".join(members)]) + "\n"
            kept.append(line)
        if kept != lines:
            mode = p.stat().st_mode & 0o7777
            p.write_text("".join(kept))
            os.chmod(p, mode)
            t.note("build user removed", p)
    t.remove("build user removed", f"/home/{user}")


def _lock_root(t: _Tree) -> None:
    shadow = t.path("/etc/shadow")
    if shadow.is_symlink() or not shadow.is_file():
        return
    st = shadow.stat()
    lines = shadow.read_text().splitlines(keepends=True)
    changed = False
    out = []
    for line in lines:
        fields = line.rstrip("\n").split(":")
        if len(fields) >= 2 and fields[0] == "root" and not fields[1].startswith("!"):
            fields[1] = "!" + (fields[1] if fields[1] not in ("", "*") else "*")
            line = ":".join(fields) + ("\n" if line.endswith("\n") else "")
            changed = True
        out.append(line)
    if changed:
        tmp = shadow.with_name(".shadow.imagebuilder")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, stat.S_IMODE(st.st_mode))
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(out))
        with contextlib.suppress(PermissionError):
            os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.replace(tmp, shadow)
        t.note("root password locked", shadow)


def install_policy_rc_d(root: Path) -> bool:
    """Put /usr/sbin/policy-rc.d (exit 101: package scripts start no services) in place for the build;
    returns False when the image has no /usr/sbin."""
    sbin = resolve_in_root(root, "/usr/sbin", follow_final=True)
    if not sbin.is_dir():
        return False
    p = resolve_in_root(root, POLICY_RC_D, follow_final=False)
    if p.is_symlink():
        p.unlink()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o755)
    with os.fdopen(fd, "w") as fh:
        fh.write(POLICY_RC_D_BODY)
    os.chmod(p, 0o755)  # noqa: S103 (an executable hook inside the image)
    return True
