"""The early disk: a run's disk begun while its customizers run, finished at capture.

When the build root is made, the part of its tree that no step of this run writes is known and fixed:
the source plus the cached step layers the run reuses (the overlay's lower layers, `buildroot.make_root`).
`start` makes the disk of that tree in the background, in a thread of the calling process (GPT and
``mkfs.ext4 -d`` over a read-only overlay of those layers: `disk.write_table`, `disk.make_filesystem`),
in the run folder's ``early/``. The job holds a flock on ``early/lock`` while it runs, so a capture in
another worker process waits for it as well; the kernel drops the lock if the process dies.

Capture `take`s it and `finish`es it: grows it when the final tree needs a larger disk (`disk.grow`),
mounts its root partition (a loop mount at the partition's offset) and makes it equal to the generalized
tree by writing only the paths of the layers written since (this run's steps and generalize). Each such
path becomes what the merged root shows: absent (a whiteout) is removed, an opaque folder loses the
children the root does not show, anything else is copied with its owner, mode, xattrs and times (holes
kept, hard links kept). Then fstab and the boot loader, as `disk.build_disk` does. A warm rebuild writes a
few files instead of the whole tree (about 1.8 s of mkfs on a 425 MB Debian tree leaves the critical path).

Whatever makes it unusable means capture builds the disk from the whole tree as before, and its log says
why: the app setting IMAGEBUILDER_LOCAL_EARLY_DISK=off, a root that is not a layered overlay, the job
failed or died (killed with its process: the lock is dropped with no record), a build root made again
(another job id), a layer written with overlay redirects or metacopy, no loop device to mount it.
Paths are walked from the root down, and a path whose folder in the merged root is not a real folder
(a symlink put over it) is skipped: nothing is read or written outside the two trees.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.providers.base import LogSink, MemoryLog, ProviderError
from imagebuilder.providers.local import disk, mounts, proc
from imagebuilder.providers.local.fsutil import copy_sparse_digest, data_extents
from imagebuilder.providers.local.layout import RunLayout
from imagebuilder.providers.local.stepcache import DISKS

SETTING = "IMAGEBUILDER_LOCAL_EARLY_DISK"
DISK_FORMAT = "imagebuilder-early-disk/1"
WAIT_SECONDS = 1800.0
_OVERLAY_XATTR = "trusted.overlay."
_UNSUPPORTED_XATTRS = ("trusted.overlay.redirect", "trusted.overlay.metacopy")
_OPAQUE = "trusted.overlay.opaque"
_jobs: dict[str, threading.Thread] = {}


class EarlyDiskUnusable(ProviderError):
    """The early disk cannot be used for this capture (the disk is built from the whole tree instead)."""


@dataclass(frozen=True)
class EarlyDisk:
    """A finished early disk: its file, layout, the layers above its tree and how long it took."""

    folder: Path
    path: Path
    plan: disk.DiskPlan
    diff: list[Path]
    used: tuple[int, int]
    seconds: float
    waited: float
    origin: str = "made"


@dataclass(frozen=True)
class PatchStats:
    paths: int
    written: int
    removed: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class DiskSlot:
    """Where the disk of a cached prefix is kept for the next run with the same prefix: inside the step
    cache entry of the prefix's last step (so it is evicted with it), named by the disk's parameters.
    ``<key>.json`` (written last) holds its layout, its tree's usage and the digest it is checked
    against when copied out (`fsutil.copy_sparse_digest`)."""

    folder: Path
    key: str

    @property
    def image(self) -> Path:
        return self.folder / f"{self.key}.img"

    @property
    def meta(self) -> Path:
        return self.folder / f"{self.key}.json"


def disk_slot(step_entry: Path, *, generation: str, bootable: bool, size_mib: int | None) -> DiskSlot:
    params = {"format": DISK_FORMAT, "generation": generation, "bootable": bootable, "size_mib": size_mib}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:32]
    return DiskSlot(step_entry / DISKS, key)


def folder_of(layout: RunLayout) -> Path:
    return layout.run_dir / "early"


def new_job_id() -> str:
    return secrets.token_hex(8)


def start(
    layout: RunLayout,
    *,
    job: str,
    base: Path,
    prefix: list[Path],
    generation: str,
    bootable: bool,
    size_mib: int | None,
    env: dict[str, str],
    log: LogSink,
    slot: DiskSlot | None = None,
) -> bool:
    """Begin the disk of `base` under the `prefix` layers (bottom first) in the background; `job` names
    this build root (the capture checks it), `size_mib` the disk size when the template sets one (else
    the default for that tree), `env` is given to its commands (the run marker: cleanup kills them)."""
    folder = folder_of(layout)
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(folder / "lock", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.write("[early disk] an earlier job of this run still runs: capture builds the whole disk\n")
            return False
        finally:
            os.close(fd)
    discard(layout)  # what an earlier job of this run left
    for d in (folder, folder / "tree", folder / "mnt"):
        d.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    spec = {"job": job, "base": str(base), "prefix": [str(p) for p in prefix]}
    thread = threading.Thread(
        target=_job,
        args=(fd, folder, spec, generation, bootable, size_mib, env, slot),
        name=f"early-disk-{layout.run_dir.name}",
        daemon=True,
    )
    thread.start()
    _jobs[str(folder)] = thread
    log.write(f"[early disk] the disk of the source and {len(prefix)} cached step(s) is being made\n")
    return True


def join(layout: RunLayout, timeout: float | None = None) -> None:
    """Wait for this process's job of a run (tests; cleanup)."""
    thread = _jobs.get(str(folder_of(layout)))
    if thread is not None:
        thread.join(timeout)


def _job(
    fd: int,
    folder: Path,
    spec: dict[str, object],
    generation: str,
    bootable: bool,
    size_mib: int | None,
    env: dict[str, str],
    slot: DiskSlot | None,
) -> None:
    log = MemoryLog()
    t0 = time.monotonic()
    tree = folder / "tree"
    partial = folder / "disk.img.partial"
    # The run's steps are the critical path: this thread (and the commands it starts) yields the CPU.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    try:
        base = Path(str(spec["base"]))
        prefix = [Path(p) for p in spec["prefix"]]  # type: ignore[attr-defined]
        kept = _from_slot(slot, partial, log) if slot is not None else None
        if kept is not None:
            plan, usage = kept
            origin = "kept"
        else:
            if prefix:
                lowers = ":".join([*(str(p) for p in reversed(prefix)), str(base)])
                opts = f"lowerdir={lowers}"
                proc.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(tree)], timeout=60)
                source = tree
            else:
                source = base
            usage = disk.tree_usage(source)
            size = size_mib or disk.default_size_mib(
                source, generation=generation, bootable=bootable, usage=usage
            )
            plan = disk.plan_disk(generation=generation, bootable=bootable, size_mib=size)
            disk.write_table(plan, partial, log)
            disk.make_filesystem(source, partial, plan, log, env=env)
            if slot is not None:
                _to_slot(slot, partial, plan, usage, log)
            origin = "made"
        os.replace(partial, folder / "disk.img")
        seconds = round(time.monotonic() - t0, 3)
        record = {**spec, "plan": plan.as_dict(), "seconds": seconds, "used": list(usage), "origin": origin,
                  "log": log.text[-20000:]}  # fmt: skip
        tmp = folder / "record.json.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, folder / "record.json")
    except BaseException as exc:  # recorded for the capture, which builds the whole disk instead
        with contextlib.suppress(OSError):
            if folder.is_dir():
                (folder / "failed").write_text(f"{str(exc).strip()[-2000:]}\n{log.text[-2000:]}")
    finally:
        with contextlib.suppress(ProviderError, OSError):
            if mounts.mounted(tree):
                proc.run(["umount", str(tree)], timeout=60)
        os.close(fd)


def _from_slot(slot: DiskSlot, partial: Path, log: LogSink) -> tuple[disk.DiskPlan, tuple[int, int]] | None:
    """The kept disk copied to `partial` and checked against its digest, with fresh GPT GUIDs (the
    root file system's UUID stays that of the kept disk, as images made from one base image share it);
    None when there is none or it is damaged (then removed)."""
    try:
        meta = json.loads(slot.meta.read_text())
        plan = disk.DiskPlan.from_dict(meta["plan"])
        usage = (int(meta["used"][0]), int(meta["used"][1]))
        digest = copy_sparse_digest(slot.image, partial)
    except FileNotFoundError:
        partial.unlink(missing_ok=True)
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        digest, meta = f"unreadable ({exc})", {}
    if digest != meta.get("digest"):
        log.write(f"[early disk] the kept disk {slot.image} is damaged ({digest}); removed\n")
        for path in (slot.meta, slot.image, partial):
            path.unlink(missing_ok=True)
        return None
    plan = plan.with_fresh_guids()
    disk.write_table(plan, partial, log)
    return plan, usage


def _to_slot(
    slot: DiskSlot, partial: Path, plan: disk.DiskPlan, usage: tuple[int, int], log: LogSink
) -> None:
    """Keep a copy of the just made disk for the next run with the same prefix (not when the step
    cache entry is gone, or the copy fails: a warning in the job's log)."""
    if not slot.folder.parent.is_dir():
        return
    tmp = slot.folder / f".tmp-{slot.key}-{os.getpid()}-{secrets.token_hex(4)}.img"
    try:
        slot.folder.mkdir(exist_ok=True)
        for stale in slot.folder.glob(".tmp-*"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(stale.name.split("-")[2])
                if not Path(f"/proc/{pid}").exists():
                    stale.unlink()
        digest = copy_sparse_digest(partial, tmp)
        os.replace(tmp, slot.image)
        meta = {"format": DISK_FORMAT, "plan": plan.as_dict(), "used": list(usage), "digest": digest}
        tmp.with_suffix(".json").write_text(json.dumps(meta))
        os.replace(tmp.with_suffix(".json"), slot.meta)
    except OSError as exc:
        log.write(f"[early disk] warning: the disk could not be kept in {slot.folder} ({exc})\n")
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".json").unlink(missing_ok=True)


def take(layout: RunLayout, *, job: str, stack: list[Path], log: LogSink) -> EarlyDisk | None:
    """The run's early disk once its job has ended, when it was made for this build root (`job`) and its
    tree is the bottom of `stack` (the root's layers, bottom first; the top one written last); else None,
    with the reason in `log`."""
    folder = folder_of(layout)
    try:
        fd = os.open(folder / "lock", os.O_RDONLY)
    except FileNotFoundError:
        return None
    t0 = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - t0 > WAIT_SECONDS:
                    log.write(f"[early disk] not used: its job still runs after {WAIT_SECONDS:.0f} s\n")
                    return None
                time.sleep(0.01)
        waited = time.monotonic() - t0
        try:
            record = json.loads((folder / "record.json").read_text())
            plan = disk.DiskPlan.from_dict(record["plan"])
            int(record["used"][0]), int(record["used"][1])
        except (OSError, ValueError, KeyError, TypeError):
            why = "its job ended with no result (its process stopped)"
            with contextlib.suppress(OSError):
                why = f"its job failed: {(folder / 'failed').read_text().strip().splitlines()[0]}"
            log.write(f"[early disk] not used: {why}\n")
            return None
    finally:
        os.close(fd)
    log.write(str(record.get("log") or ""))  # what the job ran (in the background) and said
    prefix = [Path(p) for p in record.get("prefix", [])]
    if record.get("job") != job or [str(p) for p in stack[: len(prefix)]] != [str(p) for p in prefix]:
        log.write("[early disk] not used: it was made for another build root of this run\n")
        return None
    if not (folder / "disk.img").is_file():
        log.write("[early disk] not used: its disk file is gone\n")
        return None
    return EarlyDisk(
        folder=folder,
        path=folder / "disk.img",
        plan=plan,
        diff=stack[len(prefix) :],
        used=(int(record["used"][0]), int(record["used"][1])),
        origin=str(record.get("origin", "made")),
        seconds=float(record.get("seconds", 0.0)),
        waited=waited,
    )


def discard(layout: RunLayout) -> None:
    """Remove the run's early disk (unmounting what its job left)."""
    folder = folder_of(layout)
    for point in sorted(mounts.mounts_under(folder), key=len, reverse=True):
        with contextlib.suppress(ProviderError):
            proc.run(["umount", "-l", point], timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


def finish(
    early: EarlyDisk, root: Path, out_raw: Path, *, size_mib: int, log: LogSink
) -> tuple[disk.DiskInfo, PatchStats]:
    """Bring `early` up to the merged, generalized `root`, grown to `size_mib` when that is larger, with
    fstab and the boot loader, and move it to `out_raw`. EarlyDiskUnusable: build the whole disk instead
    (the early disk is then left as it was, to be discarded); DiskError (no kernel): the capture fails."""
    plan = early.plan
    kernel = disk.find_kernel(root) if plan.bootable else None
    if size_mib > plan.size_mib:
        try:
            plan = disk.grow(early.path, plan, size_mib, log)
        except ProviderError as exc:
            raise EarlyDiskUnusable(f"growing it to {size_mib} MiB failed: {exc}") from exc
    work = Path(tempfile.mkdtemp(prefix=".work.", dir=early.folder))
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            loader = pool.submit(disk.prepare_loader, early.path, plan, kernel, work, log)
            stats = patch(early, root, plan, log)
            install = loader.result()
        if install is not None:
            install()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.replace(early.path, out_raw)
    return plan.info(out_raw, kernel[0] if kernel else None), stats


def patch(early: EarlyDisk, root: Path, plan: disk.DiskPlan, log: LogSink) -> PatchStats:
    """Mount the early disk's root file system and make it equal to `root` on every path of the diff
    layers (see the module's docstring), then write fstab; unmounted, with the mount's traces cleared."""
    t0 = time.monotonic()
    paths, opaque = layer_paths(early.diff)
    # A loop device's writes that meet a full host filesystem fail late (in writeback, the file system
    # then damaged): the patch starts only with room for what it writes, plus the journal's share.
    need = sum(disk.tree_usage(layer)[0] for layer in early.diff) + 64 * disk.MiB
    free = shutil.disk_usage(early.folder).free
    if free < need:
        raise EarlyDiskUnusable(
            f"the filesystem holding it has {free // disk.MiB} MiB free, the changed paths need about "
            f"{need // disk.MiB} MiB"
        )
    mnt = early.folder / "mnt"
    # an earlier attempt of this capture killed while it was mounted: never two mounts of one disk
    for point in sorted(mounts.mounts_under(early.folder), key=len, reverse=True):
        proc.run(["umount", point], log=log, timeout=300)
    mnt.mkdir(exist_ok=True)
    part = plan.root
    opts = f"loop,offset={part.offset},sizelimit={part.size_bytes},noatime,noinit_itable"
    try:
        proc.run(["mount", "-t", "ext4", "-o", opts, str(early.path), str(mnt)], log=log, timeout=60)
    except ProviderError as exc:
        why = str(exc).splitlines()[0]
        raise EarlyDiskUnusable(f"its file system cannot be mounted here: {why}") from exc
    try:
        counts = apply(paths, opaque, root, mnt)
        if (root / "etc").is_dir():
            _write_fstab(root, mnt, plan)
    except OSError as exc:  # the whole-tree build then says what is wrong (a full host disk, ...)
        raise EarlyDiskUnusable(f"writing the changed paths failed: {exc}") from exc
    finally:
        proc.run(["umount", str(mnt)], log=log, timeout=300)
    # the kernel's mount left its mount point's path and a mount count in the superblock (a file system
    # that is not clean now was damaged while it was mounted: not used)
    try:
        proc.run(["tune2fs", "-C", "0", "-M", "", f"{early.path}?offset={part.offset}"], log=log, timeout=60)
    except ProviderError as exc:
        raise EarlyDiskUnusable(
            f"its file system is not clean after the patch: {str(exc).splitlines()[0]}"
        ) from exc
    return PatchStats(len(paths), counts[0], counts[1], counts[2], time.monotonic() - t0)


def layer_paths(layers: list[Path]) -> tuple[list[str], set[str]]:
    """Every path (relative, "" the root) present in any of `layers`, parents before children, and the
    folders marked opaque. EarlyDiskUnusable for a layer written with redirects or metacopy."""
    paths: set[str] = {""}
    opaque: set[str] = set()
    for layer in layers:
        stack = [""]
        while stack:
            rel = stack.pop()
            with os.scandir(os.path.join(layer, rel) if rel else layer) as it:
                for entry in it:
                    sub = f"{rel}/{entry.name}" if rel else entry.name
                    paths.add(sub)
                    if not entry.is_symlink() and _overlay_folder(layer, sub, entry.path):
                        opaque.add(sub)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(sub)
    return sorted(paths, key=lambda p: p.split("/") if p else []), opaque


def _overlay_folder(layer: Path, rel: str, path: str) -> bool:
    """Whether a layer's entry is an opaque folder; EarlyDiskUnusable when it carries a redirect or
    metacopy (what another layer holds would have to be looked up)."""
    names = os.listxattr(path, follow_symlinks=False)
    if any(n.startswith(_UNSUPPORTED_XATTRS) for n in names):
        raise EarlyDiskUnusable(f"layer {layer.name} has overlay redirects or metacopy (/{rel})")
    return _OPAQUE in names and os.getxattr(path, _OPAQUE, follow_symlinks=False) == b"y"


def apply(paths: list[str], opaque: set[str], merged: Path, target: Path) -> tuple[int, int, int]:
    """Make each of `paths` in `target` what it is in `merged` (parents first); returns (written, removed,
    bytes copied). A path under something that is not a real folder in `merged` is skipped."""
    real_dirs = {""}
    links: dict[tuple[int, int], str] = {}
    folders: list[tuple[str, str, os.stat_result]] = []
    written = removed = copied = 0
    for rel in paths:
        if rel and rel.rpartition("/")[0] not in real_dirs:
            continue
        src = os.path.join(merged, rel) if rel else str(merged)
        dst = os.path.join(target, rel) if rel else str(target)
        m = _lstat(src)
        t = _lstat(dst)
        if m is None:
            if t is not None:
                _remove(dst, t)
                removed += 1
            continue
        if stat.S_ISDIR(m.st_mode):
            real_dirs.add(rel)
            if t is not None and not stat.S_ISDIR(t.st_mode):
                _remove(dst, t)
                t = None
            if t is None:
                os.mkdir(dst, 0o700)
                written += 1
            elif rel in opaque:
                shown = set(os.listdir(src))
                for name in os.listdir(dst):
                    if name not in shown:
                        _remove(os.path.join(dst, name), os.lstat(os.path.join(dst, name)))
                        removed += 1
            folders.append((src, dst, m))
            continue
        if t is not None:
            _remove(dst, t)
        written += 1
        if stat.S_ISREG(m.st_mode):
            key = (m.st_dev, m.st_ino)
            if m.st_nlink > 1 and key in links:
                os.link(links[key], dst)
                continue
            copied += _copy_file(src, dst)
            if m.st_nlink > 1:
                links[key] = dst
        elif stat.S_ISLNK(m.st_mode):
            os.symlink(os.readlink(src), dst)
        else:
            os.mknod(dst, m.st_mode, m.st_rdev)
        _metadata(src, dst, m)
    for src, dst, m in reversed(folders):
        _metadata(src, dst, m, existing=True)
    return written, removed, copied


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _remove(path: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _copy_file(src: str, dst: str) -> int:
    """Copy a regular file's bytes, holes kept (only its data ranges are written)."""
    fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            size = os.fstat(fin).st_size
            copied = 0
            for data, end in data_extents(fin, size):
                os.lseek(fout, data, os.SEEK_SET)
                offset = data
                while offset < end:
                    sent = os.sendfile(fout, fin, offset, end - offset)
                    if sent == 0:
                        break
                    offset += sent
                copied += offset - data
            os.ftruncate(fout, size)
            return copied
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def _metadata(src: str, dst: str, m: os.stat_result, *, existing: bool = False) -> None:
    """Owner, then mode (a chown clears set-id bits), then xattrs (a chown clears file capabilities),
    then times, as `src` has them."""
    link = stat.S_ISLNK(m.st_mode)
    os.chown(dst, m.st_uid, m.st_gid, follow_symlinks=False)
    if not link:
        os.chmod(dst, stat.S_IMODE(m.st_mode))
    names = [n for n in _xattrs(src) if not n.startswith(_OVERLAY_XATTR)]
    if existing:
        for stale in set(_xattrs(dst)) - set(names):
            with contextlib.suppress(OSError):
                os.removexattr(dst, stale, follow_symlinks=False)
    for name in names:
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
        except OSError as exc:
            if not (link and exc.errno in (errno.EPERM, errno.EOPNOTSUPP)):
                raise
    os.utime(dst, ns=(m.st_atime_ns, m.st_mtime_ns), follow_symlinks=False)


def _xattrs(path: str) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise


def _write_fstab(root: Path, mnt: Path, plan: disk.DiskPlan) -> None:
    """/etc/fstab as `disk.build_disk` writes it (root and ESP lines, then the image's own), and the
    ESP's mount point."""
    text = disk.fstab_text(root, plan.fs_uuid, plan.esp_volid)
    etc = mnt / "etc"
    fstab = etc / "fstab"
    times = {d: os.lstat(d) for d in (etc, mnt / "boot") if d.is_dir() and not d.is_symlink()}
    with contextlib.suppress(FileNotFoundError):
        if not fstab.is_dir() or fstab.is_symlink():
            fstab.unlink()
    fd = os.open(fstab, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, text.encode())
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    if plan.esp_volid and not os.path.lexists(mnt / "boot" / "efi"):
        (mnt / "boot").mkdir(mode=0o755, exist_ok=True)
        (mnt / "boot" / "efi").mkdir(mode=0o755)
    for d, st in times.items():  # the folders keep the tree's times, as in a disk written whole
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


__all__ = [
    "SETTING",
    "DiskSlot",
    "EarlyDisk",
    "EarlyDiskUnusable",
    "PatchStats",
    "discard",
    "disk_slot",
    "finish",
    "folder_of",
    "join",
    "new_job_id",
    "start",
    "take",
]
