"""Disk images from root trees, with no loop device and no mount: GPT + ext4 root, bootable by generation.
(earlydisk.py makes the same disk in two halves from these pieces: `plan_disk`, `write_table`,
`make_filesystem` early; `prepare_loader`, fstab and `grow` when needed at capture.)

`build_disk(rootfs, out_raw, *, generation, bootable, size_mib=None, log=None) -> DiskInfo` writes a raw disk
whose size is a whole number of MiB: partition 1 is the ext4 root (``mkfs.ext4 -E offset -d``), Gen1 (V1)
adds a BIOS boot partition (14) holding GRUB's core.img with boot.img in the protective MBR (SeaBIOS/Hyper-V
Gen1), Gen2 (V2) adds an EFI system partition (15) with GRUB as ``EFI/BOOT/BOOTX64.EFI`` (OVMF/Gen2), the
layout of Debian's cloud images. `/etc/fstab` is written into the image (the tree itself is not touched);
the boot loader is made while mkfs runs. `readahead_trees` reads trees into the page cache ahead of
`mkfs.ext4 -d`. `to_vhd` (fixed, ``force_size``, footer checked), `raw_to_vhd_in_place` (the footer
appended), `to_qcow2`, `inspect_disk` (partition table, VHD footer, sizes) and `read_file_from_disk` /
`stat_in_disk` (debugfs at the root offset) work on the results.

Exceptions::

    ProviderError (providers.base)
    └── DiskError    a disk could not be built, converted or read (names the file and the step)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imagebuilder.providers.base import LogSink, ProviderError
from imagebuilder.providers.local import proc
from imagebuilder.providers.local.fsutil import walk_stat
from imagebuilder.providers.local.layout import resolve_in_root

MiB = 1 << 20
SECTOR = 512
GPT_ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
GPT_LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
GPT_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
GPT_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_PARTNO, BIOS_PARTNO, ESP_PARTNO = 1, 14, 15
BIOS_BOOT_MIB = 1
ESP_MIB = 64
GRUB_I386_PC = Path("/usr/lib/grub/i386-pc")
GRUB_X86_64_EFI = Path("/usr/lib/grub/x86_64-efi")
KERNEL_CMDLINE = "ro console=tty0 console=ttyS0,115200n8 panic=-1"
VHD_COOKIE = b"conectix"
VHD_FIXED = 2
VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z, the VHD timestamp origin
_TIMEOUT = 900


class DiskError(ProviderError):
    """A disk image could not be built, converted or read."""


@dataclass(frozen=True)
class Partition:
    """One GPT partition; `start` and `size` in 512-byte sectors."""

    number: int
    start: int
    size: int
    type: str
    uuid: str
    name: str = ""

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size_bytes(self) -> int:
        return self.size * SECTOR


@dataclass(frozen=True)
class DiskInfo:
    """What `build_disk` made. `size_bytes` is a whole number of MiB; `fs_uuid` is the ext4 root's UUID
    (``root=UUID=…``), `root_part_uuid` the GPT PARTUUID of the root partition."""

    path: Path
    size_bytes: int
    generation: str
    bootable: bool
    root_part_uuid: str
    fs_uuid: str
    partitions: list[Partition]
    disk_uuid: str = ""
    esp_uuid: str | None = None
    kernel: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Partition:
        return next(p for p in self.partitions if p.number == ROOT_PARTNO)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON (for manifests and messages across the durable boundary)."""
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# --- building -------------------------------------------------------------------------------------


def tree_usage(rootfs: Path) -> tuple[int, int]:
    """(bytes allocated, number of entries) of a tree, without following symlinks. Walked by `find` (a
    C walk in its own process: it does not compete for this process's GIL with the threads that read
    the tree ahead and its SBOM meanwhile); in Python where find fails."""
    with contextlib.suppress(proc.CommandError, ValueError):
        done = proc.run(
            ["find", rootfs, "-mindepth", "1", "-printf", "%b\n"], timeout=_TIMEOUT, echo_output=False
        )
        blocks = done.stdout_bytes.split()
        return sum(map(int, blocks)) * 512, len(blocks)
    return _tree_usage_walk(rootfs)


def _tree_usage_walk(rootfs: Path) -> tuple[int, int]:
    used, entries = 0, 0
    stack = [str(rootfs)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                entries += 1
                st = entry.stat(follow_symlinks=False)
                used += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return used, entries


def readahead_trees(trees: list[Path], *, threads: int = 2, stop: threading.Event | None = None) -> int:
    """Ask the kernel to read every regular file of `trees` into the page cache (POSIX_FADV_WILLNEED,
    from a few threads: many requests in flight), so that `mkfs.ext4 -d` finds a tree that was not in
    the page cache there instead of reading it one file at a time. Returns the number of files. For an
    overlay root, pass its layer folders (plain directories: cheaper to walk than the union). `stop`:
    set once the reads are no longer wanted (the disk is built)."""
    stop = stop or threading.Event()
    files = [
        path
        for tree in trees
        for path, st in walk_stat(tree, stop=stop.is_set)
        if stat.S_ISREG(st.st_mode) and st.st_blocks
    ]

    def one(path: str) -> None:
        if not stop.is_set():
            _readahead(path)

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(one, files, chunksize=64):
            pass
    return len(files)


def _readahead(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def default_size_mib(
    rootfs: Path, *, generation: str, bootable: bool, usage: tuple[int, int] | None = None
) -> int:
    """A disk size with room for the tree plus headroom: a whole number of MiB, rounded up. `usage`: the
    tree's `tree_usage` when the caller has it (else the tree is walked).

    Headroom: 256 MiB free for a bootable image (its first boots write logs, keys, caches; a VM's disk is
    grown to its own size by cloud-init's growpart anyway, and vmProfile.osDiskSizeGB asks for more), 32
    MiB otherwise; rounded up to 64 MiB (bootable) or 16 MiB. Every MiB here is hashed, copied and
    uploaded with the image (it was 512 MiB rounded to 256 MiB: a 1280 MiB disk for a 425 MB tree, now
    1024 MiB)."""
    used, entries = usage or tree_usage(rootfs)
    # ext4 overhead: inodes (256 B each, with slack), journal, reserved blocks; then free space.
    root_mib = (used * 5 // 4 + entries * 1024) // MiB + (256 if bootable else 32)
    total = _root_start_mib(generation, bootable) + root_mib + 1
    step = 64 if bootable else 16
    return -(-total // step) * step


def min_size_mib(
    rootfs: Path, *, generation: str, bootable: bool, usage: tuple[int, int] | None = None
) -> int:
    """The smallest disk the tree fits on (ext4 overhead and a journal, no free space to speak of)."""
    used, entries = usage or tree_usage(rootfs)
    root_mib = (used * 5 // 4 + entries * 1024) // MiB + 64
    return _root_start_mib(generation, bootable) + root_mib + 1


def _root_start_mib(generation: str, bootable: bool) -> int:
    if not bootable:
        return 1
    return 1 + (BIOS_BOOT_MIB if generation == "V1" else ESP_MIB)


def _find_kernel(rootfs: Path) -> tuple[str, str]:
    """Paths (inside the image) GRUB loads: the /vmlinuz and /initrd.img symlinks Debian maintains
    (so kernel upgrades inside the image keep booting), else the newest /boot/vmlinuz-*."""
    link, ilink = rootfs / "vmlinuz", rootfs / "initrd.img"
    if link.is_symlink() and ilink.is_symlink():
        target = rootfs / os.readlink(link).lstrip("/")
        itarget = rootfs / os.readlink(ilink).lstrip("/")
        if target.is_file() and itarget.is_file():
            return "/vmlinuz", "/initrd.img"
    kernels = sorted(
        (p for p in (rootfs / "boot").glob("vmlinuz-*") if p.is_file()),
        key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p.name)],
    )
    for k in reversed(kernels):
        ver = k.name.removeprefix("vmlinuz-")
        if (rootfs / "boot" / f"initrd.img-{ver}").is_file():
            return f"/boot/vmlinuz-{ver}", f"/boot/initrd.img-{ver}"
    raise DiskError(
        f"{rootfs} has no kernel (/boot/vmlinuz-* with a matching initrd.img), so it cannot be made bootable",
        hint="install a kernel in the image (linux-image-cloud-amd64) or build the disk with bootable=False",
    )


def find_kernel(rootfs: Path) -> tuple[str, str]:
    """The kernel and initrd (paths inside the image) a boot of `rootfs` uses; DiskError if none."""
    return _find_kernel(rootfs)


def _grub_cfg(fs_uuid: str, kernel: str, initrd: str) -> str:
    return (
        f"search --no-floppy --fs-uuid --set=root {fs_uuid}\n"
        f"linux {kernel} root=UUID={fs_uuid} {KERNEL_CMDLINE}\n"
        f"initrd {initrd}\n"
        "boot\n"
    )


def fstab_text(rootfs: Path, fs_uuid: str, esp_volid: str | None) -> str:
    """Our root (and ESP) lines, then whatever else the image's fstab mounts (kept as it was). The
    image's fstab is read inside the image (a symlink to a host path reads the image's file)."""
    ours = {"/", "/boot/efi"}
    kept: list[str] = []
    with contextlib.suppress(OSError, UnicodeDecodeError, ProviderError):
        for line in resolve_in_root(rootfs, "etc/fstab").read_text().splitlines():
            fields = line.split()
            if not fields or fields[0].startswith("#") or (len(fields) > 1 and fields[1] in ours):
                continue
            kept.append(line)
    lines = [
        "# /etc/fstab: root and ESP lines written by imagebuilder when the image was captured",
        f"UUID={fs_uuid} / ext4 rw,discard,errors=remount-ro 0 1",
    ]
    if esp_volid:
        lines.append(f"UUID={esp_volid[:4]}-{esp_volid[4:]} /boot/efi vfat umask=0077,nofail 0 2")
    return "\n".join([*lines, *kept]) + "\n"


def debugfs_host_path(path: Path) -> str:
    """A host file path quoted for a debugfs command (``write SRC …``)."""
    text = str(path)
    if any(c in text for c in '"\n\r'):
        raise DiskError(f"path {text!r} cannot be passed to debugfs", hint="use a path without quotes")
    return f'"{text}"'


def _debugfs_path(path: str) -> str:
    if not path.startswith("/") or any(c in path for c in '"\n\r\t '):
        raise DiskError(
            f"path {path!r} cannot be used inside a disk image",
            hint="use an absolute path without spaces or quotes",
        )
    return f'"{path}"'


@dataclass(frozen=True)
class DiskPlan:
    """A disk's layout, decided before a byte of it is written: its size (whole MiB), partitions, GUIDs
    and the root file system's UUID. `build_disk` makes one and writes it at once; the early disk
    (earlydisk.py) writes the table and file system when the build root is made and the rest at capture."""

    size_mib: int
    generation: str
    bootable: bool
    fs_uuid: str
    disk_uuid: str
    partitions: tuple[Partition, ...]

    @property
    def root(self) -> Partition:
        return next(p for p in self.partitions if p.number == ROOT_PARTNO)

    @property
    def esp_volid(self) -> str | None:
        """The ESP's FAT volume id (from the fs UUID), for V2 bootable disks."""
        if not (self.bootable and self.generation == "V2"):
            return None
        return f"{uuid.UUID(self.fs_uuid).int & 0xFFFFFFFF:08X}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiskPlan:
        parts = tuple(Partition(**p) for p in data["partitions"])
        return cls(**{**data, "partitions": parts})

    def resized(self, size_mib: int) -> DiskPlan:
        """The same disk (GUIDs, UUIDs) with the root partition spanning a new size."""
        root_mib = size_mib - _root_start_mib(self.generation, self.bootable) - 1
        parts = tuple(
            dataclasses.replace(p, size=root_mib * 2048) if p.number == ROOT_PARTNO else p
            for p in self.partitions
        )
        return dataclasses.replace(self, size_mib=size_mib, partitions=parts)

    def with_fresh_guids(self) -> DiskPlan:
        """The same layout and file system with new GPT disk and partition GUIDs (a copy of a kept disk)."""
        parts = tuple(dataclasses.replace(p, uuid=str(uuid.uuid4()).upper()) for p in self.partitions)
        return dataclasses.replace(self, disk_uuid=str(uuid.uuid4()).upper(), partitions=parts)

    def info(self, path: Path, kernel: str | None) -> DiskInfo:
        esp_volid = self.esp_volid
        cmdline = f"root=UUID={self.fs_uuid} {KERNEL_CMDLINE}" if self.bootable else None
        return DiskInfo(
            path=path,
            size_bytes=self.size_mib * MiB,
            generation=self.generation,
            bootable=self.bootable,
            root_part_uuid=self.root.uuid,
            fs_uuid=self.fs_uuid,
            partitions=sorted(self.partitions, key=lambda p: p.number),
            disk_uuid=self.disk_uuid,
            esp_uuid=f"{esp_volid[:4]}-{esp_volid[4:]}" if esp_volid else None,
            kernel=kernel,
            details={"kernel_cmdline": cmdline},
        )


def plan_disk(*, generation: str, bootable: bool, size_mib: int, fs_uuid: str | None = None) -> DiskPlan:
    """The layout of a new disk (fresh GUIDs; the fs UUID given or fresh). DiskError for a bad
    generation or a size below the partitions' minimum."""
    if generation not in ("V1", "V2"):
        raise DiskError(f"generation {generation!r} is not V1 or V2", hint="hyperVGeneration is V1 or V2")
    root_start = _root_start_mib(generation, bootable)
    if size_mib < root_start + 16:
        raise DiskError(f"size_mib={size_mib} is too small", hint=f"use at least {root_start + 16} MiB")
    root_mib = size_mib - root_start - 1  # the last MiB holds the backup GPT
    parts = [Partition(ROOT_PARTNO, root_start * 2048, root_mib * 2048, GPT_ROOT_X86_64,
                       str(uuid.uuid4()).upper(), "root")]  # fmt: skip
    if bootable and generation == "V1":
        parts.append(Partition(BIOS_PARTNO, 2048, BIOS_BOOT_MIB * 2048, GPT_BIOS_BOOT,
                               str(uuid.uuid4()).upper(), "bios"))  # fmt: skip
    if bootable and generation == "V2":
        parts.append(Partition(ESP_PARTNO, 2048, ESP_MIB * 2048, GPT_ESP, str(uuid.uuid4()).upper(), "esp"))
    return DiskPlan(
        size_mib=size_mib,
        generation=generation,
        bootable=bootable,
        fs_uuid=fs_uuid or str(uuid.uuid4()),
        disk_uuid=str(uuid.uuid4()).upper(),
        partitions=tuple(parts),
    )


def write_table(plan: DiskPlan, disk: Path, log: LogSink | None) -> None:
    """Make `disk` a sparse file of the plan's size holding its GPT (fully specified: GUIDs too, so it
    need not be read back); an existing file is resized (its content kept)."""
    with disk.open("ab") as fh:
        fh.truncate(plan.size_mib * MiB)
    lines = ["label: gpt", f"label-id: {plan.disk_uuid}", "unit: sectors", ""]
    lines += [
        f"{disk.name}{p.number} : start={p.start}, size={p.size}, type={p.type}, uuid={p.uuid}, "
        f'name="{p.name}"'
        for p in plan.partitions
    ]
    proc.run(
        ["sfdisk", "-q", "--no-reread", "--no-tell-kernel", disk.name],
        input="\n".join(lines) + "\n",
        cwd=disk.parent,
        log=log,
    )


def make_filesystem(
    rootfs: Path, disk: Path, plan: DiskPlan, log: LogSink | None, *, env: dict[str, str] | None = None
) -> None:
    """The ext4 root file system of `plan` in `disk` at its partition's offset, holding `rootfs`
    (``mkfs.ext4 -d``: the tree is read, never modified)."""
    root = plan.root
    try:
        proc.run(
            [
                "mkfs.ext4", "-q", "-F", "-L", "rootfs", "-U", plan.fs_uuid,
                "-E", f"offset={root.offset},root_owner=0:0", "-d", rootfs, disk, f"{root.size // 2}k",
            ],
            log=log,
            timeout=_TIMEOUT,
            env=env,
            die_with_parent=True,
        )  # fmt: skip
    except proc.CommandError as exc:
        raise DiskError(
            f"writing {rootfs} into an ext4 filesystem of {root.size_bytes // MiB} MiB failed\n{exc}",
            hint="if the tree does not fit, pass a larger size_mib",
        ) from exc


def grow(disk: Path, plan: DiskPlan, size_mib: int, log: LogSink | None) -> DiskPlan:
    """`disk` (made by `plan`) grown to `size_mib`: a larger file, its GPT rewritten with the root
    partition spanning the new room, and the ext4 root resized into it (resize2fs, offline)."""
    bigger = plan.resized(size_mib)
    with disk.open("ab") as fh:
        fh.truncate(size_mib * MiB)
    root = bigger.root
    proc.run(
        ["resize2fs", "-f", f"{disk}?offset={root.offset}", f"{root.size // 2}K"], log=log, timeout=_TIMEOUT
    )
    # resize2fs sets a regular file's length to the file system's size, not counting the offset: the
    # table (and its backup in the last MiB) is written after it
    write_table(bigger, disk, log)
    return bigger


def prepare_loader(
    disk: Path, plan: DiskPlan, kernel: tuple[str, str] | None, work: Path, log: LogSink | None
) -> Callable[[], None] | None:
    """Make the boot loader of a bootable `plan` (GRUB's core.img, or the ESP) for `kernel` (paths inside
    the image: kernel, initrd); returns what writes it into `disk`, or None when not bootable."""
    if not (plan.bootable and kernel):
        return None
    cfg = work / "early.cfg"
    cfg.write_text(_grub_cfg(plan.fs_uuid, *kernel))
    if plan.generation == "V1":
        bios = next(p for p in plan.partitions if p.number == BIOS_PARTNO)
        return _bios_grub(disk, bios, cfg, work, log)
    esp = next(p for p in plan.partitions if p.number == ESP_PARTNO)
    return _efi_grub(disk, esp, plan.esp_volid or "", cfg, work, log)


def build_disk(
    rootfs: Path,
    out_raw: Path,
    *,
    generation: str,
    bootable: bool,
    size_mib: int | None = None,
    log: LogSink | None = None,
    fs_uuid: str | None = None,
) -> DiskInfo:
    """Write `rootfs` into a new raw GPT disk at `out_raw` (atomically: a tmp file renamed at the end).

    `generation` "V1" (BIOS boot via GRUB core.img in a BIOS boot partition) or "V2" (UEFI via an ESP);
    `bootable=False` gives a root partition only (trees without a kernel, like the BusyBox base).
    `size_mib` defaults to the tree's size plus headroom. The tree is read, never modified.
    """
    rootfs, out_raw = Path(rootfs), Path(out_raw)
    if generation not in ("V1", "V2"):
        raise DiskError(f"generation {generation!r} is not V1 or V2", hint="hyperVGeneration is V1 or V2")
    if not rootfs.is_dir():
        raise DiskError(f"root tree {rootfs} is not a directory", hint="extract or build the root tree first")
    require_tools(bootable=bootable, generation=generation)
    kernel = _find_kernel(rootfs) if bootable else None
    if size_mib is None:
        size_mib = default_size_mib(rootfs, generation=generation, bootable=bootable)
    plan = plan_disk(generation=generation, bootable=bootable, size_mib=size_mib, fs_uuid=fs_uuid)
    out_raw.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_raw.name}.", dir=out_raw.parent))
    tmp = work / "disk.img"
    try:
        write_table(plan, tmp, log)
        # The boot loader does not depend on the root filesystem's content: it is made (grub-mkimage,
        # the ESP) while mkfs.ext4 runs, and written into the disk after it.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            loader = pool.submit(prepare_loader, tmp, plan, kernel, work, log)
            make_filesystem(rootfs, tmp, plan, log)
            install = loader.result()
        if (rootfs / "etc").is_dir():
            _write_fstab(tmp, plan.root.offset, rootfs, plan.fs_uuid, plan.esp_volid, work, log)
        if install is not None:
            install()
        os.replace(tmp, out_raw)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return plan.info(out_raw, kernel[0] if kernel else None)


def require_tools(*, bootable: bool, generation: str) -> None:
    """ProviderError naming what is missing for building such a disk."""
    proc.require_tools("sfdisk", "mkfs.ext4", "debugfs")
    if bootable:
        proc.require_tools("grub-mkimage", *(["mkfs.vfat", "mcopy", "mmd"] if generation == "V2" else []))


def _write_fstab(
    disk: Path,
    offset: int,
    rootfs: Path,
    fs_uuid: str,
    esp_volid: str | None,
    work: Path,
    log: LogSink | None,
) -> None:
    fstab = work / "fstab"
    text = fstab_text(rootfs, fs_uuid, esp_volid)
    fstab.write_text(text)
    cmds = ["rm /etc/fstab", f"write {debugfs_host_path(fstab)} /etc/fstab", "sif /etc/fstab mode 0100644",
            "sif /etc/fstab uid 0", "sif /etc/fstab gid 0"]  # fmt: skip
    if esp_volid and not (rootfs / "boot/efi").exists():
        cmds.insert(0, "mkdir /boot/efi")
    # debugfs exits 0 even when a command fails: the same session reads the file back.
    cmds.append("cat /etc/fstab")
    script = work / "debugfs.cmds"
    script.write_text("\n".join(cmds) + "\n")
    done = proc.run(["debugfs", "-w", "-f", script, f"{disk}?offset={offset}"], log=log, echo_output=False)
    if not done.stdout_bytes.endswith(b"debugfs: cat /etc/fstab\n" + text.encode()):
        raise DiskError(
            f"writing /etc/fstab into {disk} failed: {done.stderr.strip()[-300:]}",
            hint="run e2fsck -fn on the disk's root",
        )


def _bios_grub(disk: Path, bios: Partition, cfg: Path, work: Path, log: LogSink | None) -> Callable[[], None]:
    """GRUB for BIOS on GPT without grub-install: boot.img in the MBR's code area pointing at core.img,
    which sits in the BIOS boot partition (both sector pointers patched as grub-install would). Makes
    core.img; returns what writes both into `disk`."""
    core = work / "core.img"
    proc.run(
        ["grub-mkimage", "-O", "i386-pc", "-o", core, "-c", cfg, "-p", f"(hd0,gpt{ROOT_PARTNO})/boot/grub",
         "biosdisk", "part_gpt", "ext2", "search", "search_fs_uuid", "linux", "echo"],
        log=log,
    )  # fmt: skip
    data = bytearray(core.read_bytes())
    if len(data) > bios.size_bytes:
        raise DiskError(f"GRUB core.img ({len(data)} bytes) does not fit the BIOS boot partition")
    # diskboot.img (core.img's first sector) ends with a blocklist: start LBA of the rest of core.img.
    (default_start,) = struct.unpack_from("<Q", data, 0x1F4)
    if default_start != 2:
        raise DiskError(f"unexpected GRUB core.img layout (blocklist start {default_start}, expected 2)")
    struct.pack_into("<Q", data, 0x1F4, bios.start + 1)
    boot = bytearray((GRUB_I386_PC / "boot.img").read_bytes()[:440])
    struct.pack_into("<Q", boot, 0x5C, bios.start)  # GRUB_BOOT_MACHINE_KERNEL_SECTOR

    def install() -> None:
        with disk.open("r+b") as f:
            f.seek(0)
            f.write(boot)  # code only: the disk signature and protective MBR entry stay
            f.seek(bios.offset)
            f.write(data)

    return install


def _efi_grub(
    disk: Path, esp: Partition, volid: str, cfg: Path, work: Path, log: LogSink | None
) -> Callable[[], None]:
    """An ESP (mkfs.vfat + mtools, no mount) holding GRUB as the removable-media
    path EFI/BOOT/BOOTX64.EFI, which UEFI firmware boots with no NVRAM entry. Makes the ESP; returns
    what copies it into `disk`."""
    efi = work / "BOOTX64.EFI"
    proc.run(
        ["grub-mkimage", "-O", "x86_64-efi", "-o", efi, "-c", cfg, "-p", "/EFI/BOOT",
         "part_gpt", "ext2", "fat", "search", "search_fs_uuid", "linux", "echo"],
        log=log,
    )  # fmt: skip
    # Built as its own file and copied in: mtools misreads a FAT made with --offset inside a large file.
    esp_img = work / "esp.img"
    proc.run(["mkfs.vfat", "-F", "32", "-n", "ESP", "-i", volid, "-h", str(esp.start), "-C", esp_img,
              str(esp.size // 2)], log=log)  # fmt: skip
    env = {"MTOOLS_SKIP_CHECK": "1"}
    proc.run(["mmd", "-i", esp_img, "::/EFI", "::/EFI/BOOT"], log=log, env=env)
    proc.run(["mcopy", "-i", esp_img, efi, "::/EFI/BOOT/BOOTX64.EFI"], log=log, env=env)

    def install() -> None:
        with esp_img.open("rb") as src, disk.open("r+b") as dst:
            dst.seek(esp.offset)
            shutil.copyfileobj(src, dst, 4 * MiB)
        esp_img.unlink()

    return install


# --- conversions ----------------------------------------------------------------------------------


def _atomic_out(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.with_name(f".{out.name}.partial")


def to_vhd(raw: Path, out: Path, *, log: LogSink | None = None) -> Path:
    """A fixed VHD as Azure takes it: ``subformat=fixed,force_size``, virtual size = the raw size (a whole
    number of MiB), file = that + the 512-byte ``conectix`` footer. Checked after conversion."""
    raw, out = Path(raw), Path(out)
    size = raw.stat().st_size
    if size % MiB:
        raise DiskError(
            f"{raw} is {size} bytes, not a whole number of MiB; Azure rejects such a VHD",
            hint="build the disk with a size in whole MiB (build_disk does)",
        )
    tmp = _atomic_out(out)
    try:
        proc.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size", raw, tmp],
            log=log,
            timeout=_TIMEOUT,
        )
        footer = read_vhd_footer(tmp)
        problems = []
        if footer is None:
            problems.append("no conectix footer")
        else:
            if footer["disk_type"] != VHD_FIXED:
                problems.append(f"disk type {footer['disk_type']} (want 2, fixed)")
            if footer["current_size"] != size or footer["original_size"] != size:
                problems.append(f"footer size {footer['current_size']} != raw size {size}")
            if not footer["checksum_ok"]:
                problems.append("bad footer checksum")
        if tmp.stat().st_size != size + 512:
            problems.append(f"file size {tmp.stat().st_size} != {size} + 512")
        if problems:
            raise DiskError(f"qemu-img wrote a VHD Azure would reject ({out}): {'; '.join(problems)}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def vhd_footer(size: int, *, disk_id: uuid.UUID | None = None, when: float | None = None) -> bytes:
    """The 512-byte footer of a fixed VHD whose data is `size` bytes (a whole number of MiB): the one
    `qemu-img convert -O vpc -o subformat=fixed,force_size` writes (creator "qem2", the maximum CHS
    geometry, so that readers take `current_size`, as Azure and Hyper-V do)."""
    cyl, heads, spt = 65535, 16, 255
    stamp = int((when if when is not None else time.time()) - VHD_EPOCH) & 0xFFFFFFFF
    head = struct.pack(
        ">8sIIQI4sI4sQQHBBI",
        VHD_COOKIE, 2, 0x00010000, 0xFFFFFFFFFFFFFFFF, stamp, b"qem2", 0x00050003, b"Wi2k",
        size, size, cyl, heads, spt, VHD_FIXED,
    )  # fmt: skip
    tail = (disk_id or uuid.uuid4()).bytes + b"\0" * 428
    checksum = (~sum(head + b"\0\0\0\0" + tail)) & 0xFFFFFFFF
    return head + struct.pack(">I", checksum) + tail


def raw_to_vhd_in_place(raw: Path, out: Path, *, sync: bool = True) -> Path:
    """Make the raw disk `raw` a fixed VHD at `out` without a second copy: the footer is appended to the
    file itself, which is then renamed (`raw` is gone afterwards). Same rules as `to_vhd`. `sync=False`:
    the caller fsyncs the file (e.g. while it hashes it)."""
    raw, out = Path(raw), Path(out)
    size = raw.stat().st_size
    if size % MiB:
        raise DiskError(
            f"{raw} is {size} bytes, not a whole number of MiB; Azure rejects such a VHD",
            hint="build the disk with a size in whole MiB (build_disk does)",
        )
    footer = vhd_footer(size)
    with raw.open("r+b") as fh:
        fh.seek(size)
        fh.write(footer)
        fh.flush()
        if sync:
            os.fsync(fh.fileno())
    os.replace(raw, out)
    return out


def to_qcow2(raw: Path, out: Path, *, compress: bool = False, log: LogSink | None = None) -> Path:
    """A qcow2 copy of a raw disk (zstd-compressed clusters when `compress`)."""
    raw, out = Path(raw), Path(out)
    tmp = _atomic_out(out)
    opts = ["-c", "-o", "compression_type=zstd"] if compress else []
    try:
        proc.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", *opts, raw, tmp], log=log, timeout=_TIMEOUT
        )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# --- inspection -----------------------------------------------------------------------------------


def read_vhd_footer(path: Path) -> dict[str, Any] | None:
    """The parsed 512-byte VHD footer at the end of `path`, or None when there is none."""
    with Path(path).open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 512:
            return None
        f.seek(-512, os.SEEK_END)
        raw = f.read(512)
    if raw[:8] != VHD_COOKIE:
        return None
    checksum = struct.unpack_from(">I", raw, 64)[0]
    computed = (~sum(raw[:64] + b"\0\0\0\0" + raw[68:])) & 0xFFFFFFFF
    cyl, heads, spt = struct.unpack_from(">HBB", raw, 56)
    return {
        "cookie": raw[:8].decode(),
        "features": struct.unpack_from(">I", raw, 8)[0],
        "format_version": struct.unpack_from(">I", raw, 12)[0],
        "data_offset": struct.unpack_from(">Q", raw, 16)[0],
        "creator_application": raw[28:32].decode("latin-1"),
        "creator_host_os": raw[36:40].decode("latin-1"),
        "original_size": struct.unpack_from(">Q", raw, 40)[0],
        "current_size": struct.unpack_from(">Q", raw, 48)[0],
        "geometry": {"cylinders": cyl, "heads": heads, "sectors_per_track": spt},
        "disk_type": struct.unpack_from(">I", raw, 60)[0],
        "checksum": checksum,
        "checksum_ok": checksum == computed,
        "uuid": str(uuid.UUID(bytes=raw[68:84])),
    }


def _detect_format(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(8)
    if head[:4] == b"QFI\xfb":
        return "qcow2"
    if head == VHD_COOKIE or read_vhd_footer(path) is not None:
        return "vpc"
    return "raw"


def _sfdisk_json(path: Path) -> dict[str, Any]:
    done = proc.run(["sfdisk", "--json", path], timeout=60)
    table: dict[str, Any] = json.loads(done.stdout)["partitiontable"]
    return table


def _partitions(table: dict[str, Any]) -> list[Partition]:
    out = []
    for p in table.get("partitions", []):
        m = re.search(r"(\d+)$", p["node"])
        out.append(
            Partition(
                number=int(m.group(1)) if m else 0,
                start=int(p["start"]),
                size=int(p["size"]),
                type=str(p["type"]).upper(),
                uuid=str(p.get("uuid", "")),
                name=str(p.get("name", "")),
            )
        )
    return sorted(out, key=lambda p: p.number)


def inspect_disk(path: Path) -> dict[str, Any]:
    """What a disk image is: ``format`` (raw | vpc | qcow2), ``file_size``, ``virtual_size``,
    ``footer`` (VHD), ``partition_table`` (sfdisk's JSON, raw and fixed VHD), ``partitions`` and
    ``root_offset`` (byte offset of the root filesystem, or None)."""
    path = Path(path)
    fmt = _detect_format(path)
    info = json.loads(proc.run(["qemu-img", "info", "-f", fmt, "--output=json", path], timeout=60).stdout)
    out: dict[str, Any] = {
        "path": str(path),
        "format": fmt,
        "file_size": path.stat().st_size,
        "virtual_size": int(info["virtual-size"]),
        "footer": read_vhd_footer(path) if fmt == "vpc" else None,
        "partition_table": None,
        "partitions": [],
        "root_offset": None,
    }
    if fmt in ("raw", "vpc"):
        with contextlib.suppress(proc.CommandError, KeyError, ValueError):
            table = _sfdisk_json(path)
            out["partition_table"] = table
            parts = _partitions(table)
            out["partitions"] = [asdict(p) for p in parts]
            root = _root_partition(parts)
            out["root_offset"] = root.offset if root else None
    return out


def _root_partition(parts: list[Partition]) -> Partition | None:
    linux = [p for p in parts if p.type in (GPT_ROOT_X86_64, GPT_LINUX_FS, "83")]
    if not linux:
        return None
    return next((p for p in linux if p.number == ROOT_PARTNO), max(linux, key=lambda p: p.size))


def root_offset(disk: Path) -> int:
    """Byte offset of the root (ext4) partition of a raw or fixed-VHD disk."""
    disk = Path(disk)
    if _detect_format(disk) == "qcow2":
        raise DiskError(f"{disk} is qcow2; debugfs reads raw or fixed VHD", hint="convert it to raw first")
    root = _root_partition(_partitions(_sfdisk_json(disk)))
    if root is None:
        raise DiskError(f"{disk} has no Linux root partition", hint="was it made by build_disk?")
    return root.offset


def _debugfs(disk: Path, offset: int, request: str) -> proc.Completed:
    return proc.run(["debugfs", "-R", request, f"{disk}?offset={offset}"], timeout=120, echo_output=False)


def stat_in_disk(disk: Path, path_in_fs: str, *, offset: int | None = None) -> dict[str, Any]:
    """``type`` (regular | directory | symlink | …), ``mode`` (permission bits), ``uid``, ``gid``, ``size``
    and ``link`` (symlink target) of a path in the root filesystem, read with debugfs (no mount)."""
    off = root_offset(disk) if offset is None else offset
    done = _debugfs(disk, off, f"stat {_debugfs_path(path_in_fs)}")
    if "File not found" in done.stderr or not done.stdout.strip():
        raise FileNotFoundError(f"{path_in_fs} is not in the filesystem of {disk}")
    text = done.stdout
    m_type = re.search(r"Type:\s+(\S+)\s+Mode:\s+(\d+)", text)
    m_user = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", text)
    m_size = re.search(r"Size:\s+(\d+)", text)
    m_link = re.search(r'Fast link dest:\s+"(.*)"', text)
    if not (m_type and m_user and m_size):
        raise DiskError(f"cannot parse debugfs stat of {path_in_fs} in {disk}: {text[:200]!r}")
    kind = m_type.group(1)
    link = m_link.group(1) if m_link else None
    if kind == "symlink" and link is None:
        link = _debugfs(disk, off, f"cat {_debugfs_path(path_in_fs)}").stdout_bytes.decode()
    return {
        "type": kind,
        "mode": int(m_type.group(2), 8),
        "uid": int(m_user.group(1)),
        "gid": int(m_user.group(2)),
        "size": int(m_size.group(1)),
        "link": link,
    }


def read_file_from_disk(raw: Path, path_in_fs: str, *, offset: int | None = None) -> bytes:
    """The contents of a file in the root filesystem of a raw or fixed-VHD disk (debugfs, no mount).
    Symlinks are followed inside the image. Raises FileNotFoundError / IsADirectoryError."""
    off = root_offset(raw) if offset is None else offset
    path = path_in_fs
    for _ in range(16):
        st = stat_in_disk(raw, path, offset=off)
        if st["type"] == "symlink":
            target = str(st["link"])
            path = os.path.normpath(
                target if target.startswith("/") else os.path.join(os.path.dirname(path), target)
            )
            continue
        if st["type"] == "directory":
            raise IsADirectoryError(f"{path_in_fs} is a directory in {raw}")
        return _debugfs(raw, off, f"cat {_debugfs_path(path)}").stdout_bytes
    raise DiskError(f"too many symlinks resolving {path_in_fs} in {raw}")
