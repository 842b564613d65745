"""Disks from trees, asserted on the images themselves: GPT layout (sfdisk --json), ext4 at the partition
offset (e2fsck -fn), files via debugfs, the fixed-VHD footer Azure checks, qcow2, and GRUB for BIOS/UEFI."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from imagebuilder.providers.local import disk, proc
from tests.providers_local.conftest import DebianDisks

MiB = 1 << 20


def sfdisk_json(path: Path) -> dict:
    import json

    return json.loads(
        subprocess.run(["sfdisk", "--json", path], capture_output=True, text=True, check=True).stdout
    )["partitiontable"]


def e2fsck_ok(path: Path, offset: int) -> None:
    subprocess.run(["e2fsck", "-fn", f"{path}?offset={offset}"], capture_output=True, text=True, check=True)


def test_busybox_tree_to_disk_vhd_and_qcow2(busybox_rootfs: Path, scratch: Path) -> None:
    fstab_before = (busybox_rootfs / "etc/fstab").read_text()
    raw = scratch / "bb.raw"
    info = disk.build_disk(busybox_rootfs, raw, generation="V1", bootable=False)
    assert raw.stat().st_size == info.size_bytes and info.size_bytes % MiB == 0
    assert not [p for p in scratch.iterdir() if p.name.startswith(".")]  # no tmp left next to it

    table = sfdisk_json(raw)
    assert table["label"] == "gpt" and table["sectorsize"] == 512
    [part] = table["partitions"]
    assert part["node"].endswith("1") and part["start"] == 2048
    assert part["type"] == disk.GPT_ROOT_X86_64 and part["name"] == "root"
    assert part["uuid"] == info.root_part_uuid
    assert (part["size"] * 512) % MiB == 0
    subprocess.run(["sfdisk", "--verify", raw], check=True, capture_output=True)
    e2fsck_ok(raw, 2048 * 512)
    blkid = subprocess.run(
        ["blkid", "-p", "-O", str(2048 * 512), "-o", "export", raw],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"UUID={info.fs_uuid}" in blkid and "TYPE=ext4" in blkid and "LABEL=rootfs" in blkid

    # Files inside, with owners and modes, without mounting.
    assert disk.read_file_from_disk(raw, "/etc/os-release").startswith(b"ID=busybox")
    assert disk.stat_in_disk(raw, "/etc/shadow") | {"size": 0} == {
        "type": "regular", "mode": 0o600, "uid": 0, "gid": 0, "size": 0, "link": None,
    }  # fmt: skip
    assert disk.stat_in_disk(raw, "/bin/sh")["link"] == "busybox"
    assert disk.read_file_from_disk(raw, "/bin/sh")[:4] == b"\x7fELF"  # symlink followed inside the image
    fstab = disk.read_file_from_disk(raw, "/etc/fstab").decode()
    assert f"UUID={info.fs_uuid} / ext4" in fstab
    assert (busybox_rootfs / "etc/fstab").read_text() == fstab_before  # the tree is never modified
    with pytest.raises(FileNotFoundError):
        disk.read_file_from_disk(raw, "/etc/nope")
    with pytest.raises(IsADirectoryError):
        disk.read_file_from_disk(raw, "/etc")

    # Fixed VHD as Azure wants it.
    vhd = disk.to_vhd(raw, scratch / "bb.vhd")
    assert vhd.stat().st_size == info.size_bytes + 512
    tail = vhd.read_bytes()[-512:]
    assert tail[:8] == b"conectix"
    assert struct.unpack(">I", tail[60:64])[0] == 2  # fixed
    assert struct.unpack(">QQ", tail[40:56]) == (info.size_bytes, info.size_bytes)
    meta = disk.inspect_disk(vhd)
    assert meta["format"] == "vpc" and meta["virtual_size"] == info.size_bytes
    assert meta["virtual_size"] % MiB == 0 and meta["footer"]["checksum_ok"]
    assert meta["root_offset"] == 2048 * 512
    subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "vpc", raw, vhd], check=True, capture_output=True
    )
    assert disk.read_file_from_disk(vhd, "/etc/hostname") == b"localhost\n"

    # The same VHD without a second copy: the footer appended to the raw file in place, then renamed.
    twin = scratch / "twin.raw"
    subprocess.run(["cp", "--sparse=always", raw, twin], check=True)
    inode = twin.stat().st_ino
    inplace = disk.raw_to_vhd_in_place(twin, scratch / "twin.vhd")
    assert not twin.exists() and inplace.stat().st_ino == inode
    ours, theirs = disk.read_vhd_footer(inplace), disk.read_vhd_footer(vhd)
    assert ours is not None and theirs is not None and ours["checksum_ok"]
    same = ("cookie", "features", "format_version", "data_offset", "creator_application", "original_size",
            "current_size", "geometry", "disk_type")  # fmt: skip
    assert {k: ours[k] for k in same} == {k: theirs[k] for k in same}
    subprocess.run(
        ["qemu-img", "compare", "-f", "vpc", "-F", "vpc", inplace, vhd], check=True, capture_output=True
    )

    qcow = disk.to_qcow2(raw, scratch / "bb.qcow2")
    meta = disk.inspect_disk(qcow)
    assert meta["format"] == "qcow2" and meta["virtual_size"] == info.size_bytes
    subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, qcow], check=True, capture_output=True
    )
    raw_meta = disk.inspect_disk(raw)
    assert raw_meta["format"] == "raw" and raw_meta["footer"] is None
    assert raw_meta["partitions"][0]["uuid"] == info.root_part_uuid


def test_explicit_size_and_preserved_fstab_lines(busybox_rootfs: Path, scratch: Path) -> None:
    (busybox_rootfs / "etc/fstab").write_text(
        "# old\nUUID=dead / ext4 defaults 0 1\n/dev/sdb1 /data ext4 defaults,nofail 0 2\n"
    )
    out = scratch / "a dir with spaces" / "d.raw"  # paths reach debugfs quoted
    info = disk.build_disk(busybox_rootfs, out, generation="V2", bootable=False, size_mib=100)
    assert info.size_bytes == 100 * MiB and out.stat().st_size == 100 * MiB
    fstab = disk.read_file_from_disk(info.path, "/etc/fstab").decode()
    assert "UUID=dead" not in fstab and "/dev/sdb1 /data ext4 defaults,nofail 0 2" in fstab
    assert fstab.count(" / ext4 ") == 1


def test_disk_errors_say_what_to_do(busybox_rootfs: Path, scratch: Path) -> None:
    with pytest.raises(disk.DiskError, match="no kernel") as info:
        disk.build_disk(busybox_rootfs, scratch / "x.raw", generation="V1", bootable=True)
    assert "bootable=False" in (info.value.hint or "")
    with pytest.raises(disk.DiskError, match="V1 or V2"):
        disk.build_disk(busybox_rootfs, scratch / "x.raw", generation="V3", bootable=False)
    with pytest.raises(disk.DiskError, match="too small"):
        disk.build_disk(busybox_rootfs, scratch / "x.raw", generation="V1", bootable=False, size_mib=10)
    (busybox_rootfs / "big").write_bytes(b"x" * (24 * MiB))
    with pytest.raises(disk.DiskError, match="ext4") as info:
        disk.build_disk(busybox_rootfs, scratch / "x.raw", generation="V1", bootable=False, size_mib=20)
    assert "size_mib" in (info.value.hint or "")
    assert not (scratch / "x.raw").exists()
    assert [p.name for p in scratch.iterdir()] == ["bbroot"]  # nothing half-written left behind
    odd = scratch / "odd.raw"
    odd.write_bytes(b"\0" * (MiB + 512))
    with pytest.raises(disk.DiskError, match="whole number of MiB"):
        disk.to_vhd(odd, scratch / "odd.vhd")
    with pytest.raises(disk.DiskError, match="whole number of MiB"):
        disk.raw_to_vhd_in_place(odd, scratch / "odd.vhd")
    assert not (scratch / "odd.vhd").exists() and odd.stat().st_size == MiB + 512


def test_debugfs_paths_are_checked(busybox_rootfs: Path, scratch: Path) -> None:
    info = disk.build_disk(busybox_rootfs, scratch / "p.raw", generation="V1", bootable=False)
    for bad in ("etc/passwd", '/etc/"x', "/etc/a b"):
        with pytest.raises(disk.DiskError, match="cannot be used"):
            disk.read_file_from_disk(info.path, bad)


@pytest.mark.slow
def test_debian_gen1_disk_has_bios_grub(debian_disks: DebianDisks) -> None:
    info = debian_disks.gen1
    table = sfdisk_json(info.path)
    types = {int(p["node"].rsplit("raw", 1)[1]): p["type"] for p in table["partitions"]}
    assert types == {1: disk.GPT_ROOT_X86_64, 14: disk.GPT_BIOS_BOOT}
    root = info.root
    e2fsck_ok(info.path, root.offset)
    with info.path.open("rb") as f:
        mbr = f.read(512)
        bios = next(p for p in info.partitions if p.number == 14)
        f.seek(bios.offset)
        core = f.read(512)
    assert mbr[510:512] == b"\x55\xaa" and mbr[450] == 0xEE  # protective MBR entry kept
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == bios.start  # boot.img -> core.img
    assert struct.unpack_from("<Q", core, 0x1F4)[0] == bios.start + 1  # diskboot -> rest of core.img
    assert info.kernel == "/vmlinuz"
    fstab = disk.read_file_from_disk(info.path, "/etc/fstab").decode()
    assert f"UUID={info.fs_uuid} / ext4" in fstab and "/boot/efi" not in fstab
    assert disk.read_file_from_disk(info.path, "/vmlinuz")[0x202:0x206] == b"HdrS"  # a bzImage
    assert disk.read_file_from_disk(info.path, "/etc/machine-id") == b""


@pytest.mark.slow
def test_debian_gen2_disk_has_an_esp_with_grub(debian_disks: DebianDisks, scratch: Path) -> None:
    info = debian_disks.gen2
    table = sfdisk_json(info.path)
    types = {int(p["node"].rsplit("raw", 1)[1]): p["type"] for p in table["partitions"]}
    assert types == {1: disk.GPT_ROOT_X86_64, 15: disk.GPT_ESP}
    e2fsck_ok(info.path, info.root.offset)
    esp = next(p for p in info.partitions if p.number == 15)
    img = scratch / "esp.img"
    proc.run(
        [
            "dd",
            f"if={info.path}",
            f"of={img}",
            "bs=1M",
            f"skip={esp.offset // MiB}",
            f"count={esp.size_bytes // MiB}",
        ]
    )
    subprocess.run(["fsck.vfat", "-n", img], check=True, capture_output=True)
    listing = subprocess.run(
        ["mdir", "-i", img, "-b", "::/EFI/BOOT"],
        capture_output=True,
        text=True,
        check=True,
        env={"MTOOLS_SKIP_CHECK": "1"},
    ).stdout
    assert "BOOTX64.EFI" in listing
    efi = subprocess.run(
        ["mtype", "-i", img, "::/EFI/BOOT/BOOTX64.EFI"], capture_output=True, check=True
    ).stdout
    assert efi[:2] == b"MZ"  # a PE image
    fstab = disk.read_file_from_disk(info.path, "/etc/fstab").decode()
    assert f"UUID={info.esp_uuid} /boot/efi vfat" in fstab
    assert disk.stat_in_disk(info.path, "/boot/efi")["type"] == "directory"
