"""Offline deprovision of a planted tree: what must be cleared is cleared, what must stay stays, and
symlinks planted in the image never make it touch the host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagebuilder.providers.local import deprovision


def _plant(root: Path) -> None:
    files = {
        "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "etc/ssh/ssh_host_ed25519_key": "k",
        "etc/ssh/ssh_host_ed25519_key.pub": "k",
        "etc/ssh/sshd_config": "PermitRootLogin no\n",
        "var/lib/cloud/instance/obj.pkl": "x",
        "var/lib/cloud/seed/nocloud/user-data": "x",
        "var/log/cloud-init.log": "x",
        "var/log/syslog": "lots\n",
        "var/log/syslog.1": "old",
        "var/log/apt/history.log.gz": "gz",
        "var/log/apt/term.log": "t",
        "var/log/journal/abc/system.journal": "j",
        "root/.bash_history": "secret",
        "home/alice/.bash_history": "secret",
        "home/alice/notes.txt": "keep",
        "var/lib/dhcp/dhclient.eth0.leases": "lease",
        "var/lib/systemd/random-seed": "seed",
        "tmp/build.tmp": "x",
        "var/tmp/x": "x",
        "etc/resolv.conf": "nameserver 10.0.0.1\n",
        "etc/hostname": "buildhost\n",
        "usr/sbin/policy-rc.d": "exit 101\n",
        "var/cache/apt/archives/foo.deb": "deb",
        "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease": "l",
        "etc/shadow": "root:$6$hash:19000:0:99999:7:::\nalice:$6$x:19000:0:99999:7:::\n",
        "etc/app.conf": "keep me\n",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (root / "var/lib/dbus").mkdir(parents=True)
    (root / "etc/shadow").chmod(0o640)


def test_deprovision_clears_identity_state_and_keeps_content(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _plant(root)
    report = deprovision.deprovision(root)
    assert (root / "etc/machine-id").is_file() and (root / "etc/machine-id").read_text() == ""
    assert os.readlink(root / "var/lib/dbus/machine-id") == "/etc/machine-id"
    assert list((root / "etc/ssh").iterdir()) == [root / "etc/ssh/sshd_config"]
    assert list((root / "var/lib/cloud").iterdir()) == []
    assert not (root / "var/log/cloud-init.log").exists()
    assert (root / "var/log/syslog").read_text() == "" and not (root / "var/log/syslog.1").exists()
    assert not (root / "var/log/apt/history.log.gz").exists()
    assert (root / "var/log/apt/term.log").read_text() == ""
    assert list((root / "var/log/journal").iterdir()) == []
    assert not (root / "root/.bash_history").exists() and not (root / "home/alice/.bash_history").exists()
    assert (root / "home/alice/notes.txt").read_text() == "keep"
    assert not (root / "var/lib/dhcp/dhclient.eth0.leases").exists()
    assert not (root / "var/lib/systemd/random-seed").exists()
    assert list((root / "tmp").iterdir()) == [] and list((root / "var/tmp").iterdir()) == []
    assert (root / "etc/resolv.conf").read_text() == ""
    assert (root / "etc/hostname").read_text() == "localhost\n"
    assert not (root / "usr/sbin/policy-rc.d").exists()
    assert not (root / "var/cache/apt/archives/foo.deb").exists()
    shadow = (root / "etc/shadow").read_text().splitlines()
    assert shadow[0].startswith("root:!$6$hash:") and shadow[1].startswith("alice:$6$x:")
    assert oct((root / "etc/shadow").stat().st_mode & 0o777) == "0o640"
    assert (root / "etc/app.conf").read_text() == "keep me\n"
    for key in ("machine-id emptied", "ssh host keys", "cloud-init state", "logs truncated", "shell history",
                "dhcp leases", "temp files", "resolv.conf emptied", "hostname reset", "build helpers removed",
                "root password locked"):  # fmt: skip
        assert report.get(key), key
    # Running it again is harmless.
    deprovision.deprovision(root)


def test_planted_symlinks_never_reach_the_host(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _plant(root)
    host = tmp_path / "host"
    host.mkdir()
    victim = host / "important.log"
    victim.write_text("host data\n")
    (host / "history").write_text("host history\n")
    (root / "var/log/link.log").symlink_to(victim)
    (root / "etc/machine-id").unlink()
    (root / "etc/machine-id").symlink_to(victim)
    (root / "root/.ash_history").symlink_to(host / "history")
    (root / "var/lib/dhclient").symlink_to(host)  # absolute: resolved inside the root, where it is missing
    deprovision.deprovision(root)
    assert victim.read_text() == "host data\n"
    assert (host / "history").read_text() == "host history\n"
    assert (root / "etc/machine-id").is_file() and not (root / "etc/machine-id").is_symlink()


def test_refuses_the_host_root() -> None:
    with pytest.raises(deprovision.DeprovisionError):
        deprovision.deprovision(Path("/"))


def test_policy_rc_d_is_installed_for_the_build(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    assert deprovision.install_policy_rc_d(root)
    assert (root / "usr/sbin/policy-rc.d").read_text().endswith("exit 101\n")
    assert (root / "usr/sbin/policy-rc.d").stat().st_mode & 0o111
