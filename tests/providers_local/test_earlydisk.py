"""The early disk (providers/local/earlydisk.py) on real overlays and real ext4 file systems: a disk made
from the lower layers in the background and patched with the layers written since holds exactly what a
disk written from the whole merged tree holds (whiteouts, opaque folders, type changes, owners, modes,
set-id bits, xattrs, file capabilities, hard links, holes, FIFOs, device nodes, odd names, times); a
symlink put over a folder never lets a path of a lower layer be written outside the disk; a final tree
larger than the early disk grows it; a job that failed or died is never used; a warm provider build takes
the early disk and says so in its log, and with the setting off writes the whole tree."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.providers.base import MemoryLog
from imagebuilder.providers.local import disk, earlydisk
from imagebuilder.providers.local.layout import RunLayout
from imagebuilder.providers.local.provider import LocalProvider
from tests.providers_local.test_provider_support import (
    RecLog,
    assert_no_leaks,
    base_cache,
    build_input,
    file_root,
    provider,
)

_FIXTURES = (base_cache, file_root, provider)  # pytest fixtures used by name in this module

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlay and loop mounts need root")

CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")  # VFS_CAP_REVISION_2, net_raw


def _mount_overlay(lowers: list[Path], upper: Path, work: Path, at: Path) -> None:
    for d in (upper, work, at):
        d.mkdir(parents=True, exist_ok=True)
    lowerdir = ":".join(str(p) for p in reversed(lowers))
    opts = f"lowerdir={lowerdir},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(at)], check=True)


def _umount(at: Path) -> None:
    subprocess.run(["umount", str(at)], check=True)


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A base tree, a prefix layer L0 and two layers written after it (L1, L2), each made by writing
    through a real overlay (the kernel makes the whiteouts and opaque folders); `merged` stays mounted
    (L2 its upper layer, as a run's root at capture)."""
    base, l0, l1, l2 = (tmp_path / n for n in ("base", "L0", "L1", "L2"))
    merged = tmp_path / "merged"
    escape = f"imagebuilder-early-escape-{secrets.token_hex(4)}"
    base.mkdir()
    for d in ("etc", "usr/bin", "var/log", "srv/old", "srv/keep", "opt/replace", "gone/deep"):
        (base / d).mkdir(parents=True)
    (base / "etc/fstab").write_text("# base\n/dev/sdb1 /data ext4 defaults 0 2\n")
    (base / "etc/hostname").write_text("base\n")
    (base / "usr/bin/tool").write_bytes(b"\x7fELF" + os.urandom(5000))
    os.link(base / "usr/bin/tool", base / "usr/bin/tool-link")
    (base / "srv/old/a").write_text("a")
    (base / "srv/keep/b").write_text("b")
    (base / "opt/replace/c").write_text("c")
    (base / "gone/deep/d").write_text("d")
    (base / "to-dir").write_text("a file that becomes a folder")
    (base / "var/log/syslog").write_text("log\n" * 100)
    os.symlink("usr/bin", base / "bin")
    for w in (tmp_path / "w0", tmp_path / "w1", tmp_path / "w2"):
        w.mkdir()
    # L0: the cached prefix
    _mount_overlay([base], l0, tmp_path / "w0", merged)
    (merged / "usr/bin/app").write_text("#!/bin/sh\necho app\n")
    os.chmod(merged / "usr/bin/app", 0o755)
    (merged / "srv/keep/more").write_text("more")
    _umount(merged)
    # L1: written after the prefix
    _mount_overlay([base, l0], l1, tmp_path / "w1", merged)
    m = merged
    (m / "srv/old/a").unlink()  # whiteout of a file
    subprocess.run(["rm", "-rf", str(m / "gone")], check=True)  # whiteout of a folder
    subprocess.run(["rm", "-rf", str(m / "opt/replace")], check=True)
    (m / "opt/replace").mkdir()  # an opaque folder
    (m / "opt/replace/new").write_text("new")
    (m / "to-dir").unlink()
    (m / "to-dir").mkdir()  # a file turned folder
    (m / "to-dir/inside").write_text("inside")
    (m / "escape").mkdir()
    (m / "escape" / escape).write_text("must never leave the disk")
    (m / "with space & 'quote'").write_text("odd name")
    (m / "usr/bin/setuid").write_text("#!/bin/sh\n")
    os.chown(m / "usr/bin/setuid", 0, 0)
    os.chmod(m / "usr/bin/setuid", 0o4755)
    (m / "usr/bin/ping").write_bytes(b"\x7fELF ping")
    os.setxattr(m / "usr/bin/ping", "security.capability", CAP_NET_RAW)
    (m / "srv/keep/b").write_text("b, changed")  # a copy-up of a base file
    os.setxattr(m / "srv/keep/b", "user.note", b"hello")
    os.chown(m / "srv/keep/b", 1234, 5678)
    with (m / "sparse").open("wb") as fh:
        fh.seek(8 << 20)
        fh.write(b"tail")
    os.mkfifo(m / "fifo", 0o640)
    os.mknod(m / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.link(m / "usr/bin/app", m / "usr/bin/app-hardlink")  # both names copied up into L1
    os.symlink("/etc/hostname", m / "abs-link")
    os.utime(m / "srv", ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))
    _umount(merged)
    # L2: the top layer (the run's generalize writes here), left mounted as the capture's root
    _mount_overlay([base, l0, l1], l2, tmp_path / "w2", merged)
    subprocess.run(["rm", "-rf", str(merged / "escape")], check=True)
    os.symlink("/", merged / "escape")  # a symlink over a folder whose child is in L1
    (merged / "var/log/syslog").write_text("")  # generalize truncates logs
    (merged / "etc/hostname").unlink()
    try:
        yield {"base": base, "layers": [l0, l1, l2], "merged": merged, "escape": escape}
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)


def _layout(tmp_path: Path) -> RunLayout:
    run = RunRef(subscription_id="s", resource_group="g", template_name="t", run_id="r")
    return RunLayout(run=run, run_dir=tmp_path / "run")


def _early(tmp_path: Path, base: Path, prefix: list[Path], *, size_mib: int | None = None) -> RunLayout:
    layout = _layout(tmp_path)
    log = MemoryLog()
    assert earlydisk.start(
        layout, job="job-1", base=base, prefix=prefix, generation="V1", bootable=False,
        size_mib=size_mib, env={}, log=log,
    )  # fmt: skip
    earlydisk.join(layout, 300)
    return layout


class Mounted:
    """A disk's root file system mounted read-only (a loop device at the partition's offset)."""

    def __init__(self, image: Path, at: Path) -> None:
        self.image, self.at = image, at

    def __enter__(self) -> Path:
        self.at.mkdir(parents=True, exist_ok=True)
        offset = disk.root_offset(self.image)
        subprocess.run(["mount", "-t", "ext4", "-o", f"ro,loop,offset={offset}", str(self.image), str(self.at)],
                       check=True)  # fmt: skip
        return self.at

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.at)], check=True)


def _describe(root: Path) -> dict[str, Any]:
    """Every entry: type, mode, owner, size, mtime (in seconds: `mkfs.ext4 -d` keeps no more), device, link target, content digest, xattrs and
    its hard-link group (by the first name of its inode)."""
    out: dict[str, Any] = {}
    first_name: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if rel == "lost+found":
                continue
            st = os.lstat(path)
            entry: dict[str, Any] = {
                "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime_ns // 10**9,
                "xattrs": {n: os.getxattr(path, n, follow_symlinks=False)
                           for n in sorted(os.listxattr(path, follow_symlinks=False))},
            }  # fmt: skip
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                data = Path(path).read_bytes()
                entry["size"] = st.st_size
                entry["sha256"] = hashlib.sha256(data).hexdigest()
                if rel == "etc/fstab":  # names the disk's own UUID, written at capture time
                    entry["sha256"] = [ln for ln in data.decode().splitlines() if "UUID=" not in ln]
                    entry["mtime"] = None
                entry["link"] = first_name.setdefault(st.st_ino, rel)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry["rdev"] = st.st_rdev
            out[rel] = entry
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out


def test_a_patched_early_disk_holds_what_a_whole_tree_disk_holds(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    base, layers, merged = stack["base"], stack["layers"], stack["merged"]
    whole = tmp_path / "whole.raw"
    disk.build_disk(merged, whole, generation="V1", bootable=False, size_mib=64)

    layout = _early(tmp_path, base, layers[:1], size_mib=64)
    log = MemoryLog()
    early = earlydisk.take(layout, job="job-1", stack=layers, log=log)
    assert early is not None, log.text
    assert early.diff == layers[1:]
    patched = tmp_path / "patched.raw"
    time.sleep(1.1)  # the patch writes fstab in a later second than the tree's /etc was written
    info, stats = earlydisk.finish(early, merged, patched, size_mib=64, log=log)
    assert info.size_bytes == 64 << 20 and patched.stat().st_size == 64 << 20
    assert stats.removed >= 3 and stats.written >= 10

    with Mounted(whole, tmp_path / "m1") as a, Mounted(patched, tmp_path / "m2") as b:
        want, got = _describe(a), _describe(b)
        assert set(got) == set(want)
        assert {k: (want[k], got[k]) for k in want if want[k] != got[k]} == {}
        # spot checks of what the patch had to do
        assert "srv/old/a" not in got and "gone" not in got and "etc/hostname" not in got
        assert sorted(k for k in got if k.startswith("opt/replace/")) == ["opt/replace/new"]
        assert stat.S_ISDIR(got["to-dir"]["mode"]) and got["to-dir/inside"]["size"] == 6
        assert got["escape"]["target"] == "/"
        assert got["usr/bin/setuid"]["mode"] & stat.S_ISUID
        assert got["usr/bin/ping"]["xattrs"]["security.capability"] == CAP_NET_RAW
        assert (got["srv/keep/b"]["uid"], got["srv/keep/b"]["gid"]) == (1234, 5678)
        assert got["usr/bin/app-hardlink"]["link"] == got["usr/bin/app"]["link"]
        assert got["srv"]["mtime"] == 1_600_000_000
        assert os.stat(b / "srv").st_mtime_ns == 1_600_000_000_987_654_321  # to the nanosecond
        assert os.stat(b / "sparse").st_blocks * 512 < (1 << 20)  # the hole stayed a hole
        assert "/data" in (b / "etc/fstab").read_text() and info.fs_uuid in (b / "etc/fstab").read_text()
    assert not Path("/", stack["escape"]).exists()
    fsck = subprocess.run(
        ["e2fsck", "-fn", f"{patched}?offset={info.root.offset}"], capture_output=True, text=True
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    dump = subprocess.run(
        ["dumpe2fs", "-h", f"{patched}?offset={info.root.offset}"], capture_output=True, text=True
    )
    assert "Last mounted on:          <not available>" in dump.stdout  # no host path left in the image


def test_a_final_tree_larger_than_the_early_disk_grows_it(stack: dict[str, Any], tmp_path: Path) -> None:
    base, layers, merged = stack["base"], stack["layers"], stack["merged"]
    (merged / "big").write_bytes(os.urandom(40 << 20))
    layout = _early(tmp_path, base, layers[:1])
    log = MemoryLog()
    early = earlydisk.take(layout, job="job-1", stack=layers, log=log)
    assert early is not None and early.plan.size_mib < 80, log.text
    size = disk.default_size_mib(merged, generation="V1", bootable=False)
    info, _ = earlydisk.finish(early, merged, tmp_path / "grown.raw", size_mib=size, log=log)
    assert info.size_bytes == size << 20 > early.plan.size_mib << 20
    assert disk.inspect_disk(tmp_path / "grown.raw")["partitions"][0]["size"] == info.root.size
    fsck = subprocess.run(["e2fsck", "-fn", f"{tmp_path / 'grown.raw'}?offset={info.root.offset}"],
                          capture_output=True, text=True)  # fmt: skip
    assert fsck.returncode == 0, fsck.stdout
    with Mounted(tmp_path / "grown.raw", tmp_path / "m") as m:
        assert (m / "big").stat().st_size == 40 << 20


def test_a_job_that_failed_died_or_belongs_to_another_root_is_not_used(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    base, layers = stack["base"], stack["layers"]
    layout = _early(tmp_path, base, layers[:1])
    log = MemoryLog()
    assert earlydisk.take(layout, job="another-root", stack=layers, log=log) is None
    assert "made for another build root" in log.text
    assert earlydisk.take(layout, job="job-1", stack=[layers[1], *layers[1:]], log=log) is None
    # The process that ran the job died before its record: the lock is free and there is no result.
    (earlydisk.folder_of(layout) / "record.json").unlink()
    log = MemoryLog()
    assert earlydisk.take(layout, job="job-1", stack=layers, log=log) is None
    assert "no result" in log.text
    # A job whose mkfs fails (a base that is not a folder) records why.
    layout2 = _layout(tmp_path / "second")
    assert earlydisk.start(layout2, job="j", base=tmp_path / "missing", prefix=[], generation="V1",
                           bootable=False, size_mib=64, env={}, log=MemoryLog())  # fmt: skip
    earlydisk.join(layout2, 60)
    log = MemoryLog()
    assert earlydisk.take(layout2, job="j", stack=[], log=log) is None
    assert "its job failed" in log.text
    earlydisk.discard(layout2)
    assert not earlydisk.folder_of(layout2).exists()


def _steps(marker: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "Shell",
            "name": "data",
            "inline": ["sudo sh -c 'mkdir -p /opt/d && seq 1 5000 > /opt/d/n'"],
        },
        {"type": "Shell", "name": "marker", "inline": [f"echo {marker} | sudo tee /marker"]},
    ]


def _capture_log(p: LocalProvider, run_id: str, marker: str) -> tuple[str, str]:
    build = build_input({"customize": _steps(marker)}, run_id=run_id)
    log = RecLog()
    prepared = p.prepare(build, log)
    env = p.create_build_env(build, prepared, log)
    assert all(p.customize(build, env, i, log).status == "succeeded" for i in range(2))
    assert p.generalize(build, env, log).status == "succeeded"
    cap = p.capture(build, env, log)
    assert cap.status == "succeeded", cap.error
    marker_read = disk.read_file_from_disk(Path(cap.image["vhd"]), "/marker").decode()
    p.cleanup(build, keep=False, log=log)
    assert_no_leaks(p, build)
    return log.text, marker_read


def test_warm_builds_finish_the_early_disk_kept_in_the_step_cache(provider: LocalProvider) -> None:
    _capture_log(provider, "r1", "one")
    text, marker = _capture_log(provider, "r2", "two")
    assert marker == "two\n"
    assert "[early disk] the disk of the source and 1 cached step(s) is being made" in text
    assert "[early disk] made in the background" in text and "[early disk] not used" not in text
    # The disk of that prefix was kept with the prefix's last step: the next warm build copies it.
    kept = list((provider.step_cache_dir).glob(f"*/{earlydisk.DISKS}/*.img"))
    assert len(kept) == 1
    cache = LocalProvider.context(provider, build_input({}, run_id="x")).step_cache
    assert cache is not None and cache.size() >= kept[0].stat().st_blocks * 512
    text, marker = _capture_log(provider, "r3", "three")
    assert marker == "three\n" and "[early disk] copied from the step cache in the background" in text

    # A damaged kept disk is never used: removed, the disk is made again (and kept again).
    with kept[0].open("r+b") as fh:
        fh.seek(disk.root_offset(kept[0]) + 1024 + 0x78)  # the superblock's volume name
        fh.write(b"tampered")
    text, marker = _capture_log(provider, "r4", "four")
    assert marker == "four\n" and "is damaged" in text and "[early disk] made in the background" in text
    text, _ = _capture_log(provider, "r5", "five")
    assert "[early disk] copied from the step cache" in text


def test_the_setting_turns_the_early_disk_off(provider: LocalProvider) -> None:
    provider.early_disk = False
    _capture_log(provider, "r1", "one")
    text, marker = _capture_log(provider, "r2", "two")
    assert marker == "two\n" and "[early disk]" not in text


def test_a_capture_killed_while_the_early_disk_was_mounted_is_retried_cleanly(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    base, layers, merged = stack["base"], stack["layers"], stack["merged"]
    layout = _early(tmp_path, base, layers[:1], size_mib=64)
    folder = earlydisk.folder_of(layout)
    plan = disk.DiskPlan.from_dict(json.loads((folder / "record.json").read_text())["plan"])
    # What a capture killed mid-patch leaves: the disk still mounted, half of the paths written.
    opts = f"loop,offset={plan.root.offset},sizelimit={plan.root.size_bytes}"
    subprocess.run(
        ["mount", "-t", "ext4", "-o", opts, str(folder / "disk.img"), str(folder / "mnt")], check=True
    )
    paths, opaque = earlydisk.layer_paths(layers[1:])
    earlydisk.apply(paths[: len(paths) // 2], opaque, merged, folder / "mnt")
    log = MemoryLog()
    early = earlydisk.take(layout, job="job-1", stack=layers, log=log)
    assert early is not None, log.text
    earlydisk.finish(early, merged, tmp_path / "retried.raw", size_mib=64, log=log)
    assert str(folder) not in Path("/proc/self/mounts").read_text()  # nothing of it left mounted
    whole = tmp_path / "whole.raw"
    disk.build_disk(merged, whole, generation="V1", bootable=False, size_mib=64)
    with Mounted(whole, tmp_path / "m1") as a, Mounted(tmp_path / "retried.raw", tmp_path / "m2") as b:
        assert _describe(b) == _describe(a)
