"""Phase capture: the generalized root tree as a GPT disk, a fixed VHD (and a qcow2 on request), its
sha256, and a root tree tarball for images built on top of this one. One disk per run: the run's early
disk (earlydisk.py: begun in the background when the build root was made) is finished with the paths
written since, or, where it cannot be used, the whole tree is written; the raw disk becomes the VHD by
appending the footer in place (no second full copy); it is hashed once (holes not read) while it is
written back, the digest remembered on the file, and distribute's replicas are verified against that
hash. The build root's layers are read ahead into the page cache when the whole tree is written (and
from the moment a warm build's root is made, `read_ahead`); the SBOM inventory is read meanwhile.

Bootable images then pass the shipped-image boot check: the VHD itself boots read-only (`snapshot=on`)
through its own firmware and bootloader and must reach its first-boot target (`boot.boot_to_target`);
IMAGEBUILDER_LOCAL_BOOT_CHECK=off turns it off. A failure names the check (code ShippedImageBootFailed)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagebuilder.pipeline.messages import (
    BuildEnv,
    CaptureResult,
    ErrorInfo,
)
from imagebuilder.providers.base import LogSink, MemoryLog, ProviderError, TransientProviderError
from imagebuilder.providers.local import (
    buildroot,
    earlydisk,
    mounts,
    proc,
    sbom,
)
from imagebuilder.providers.local.context import (
    LOG_TAIL,
    RunContext,
)
from imagebuilder.providers.local.fsutil import remember_sha256, sha256_cached, sha256_file
from imagebuilder.template.models import ManagedImageDistributor, SharedImageDistributor

BOOT_CHECK = "shipped-image boot check"
BOOT_CHECK_CODE = "ShippedImageBootFailed"
FIRST_BOOT_TIMEOUT = 600.0


def capture(ctx: RunContext, env: BuildEnv, log: LogSink) -> CaptureResult:
    from imagebuilder.providers.local import disk

    layout = ctx.layout
    record = layout.capture / "capture.json"
    if record.is_file():
        with contextlib.suppress(ValueError, OSError):
            done = CaptureResult.model_validate_json(record.read_text())
            if Path(str(done.image.get("vhd"))).is_file():
                return done
    root = Path(str(env.handle.get("root", "")))
    with contextlib.suppress(ProviderError, KeyError, OSError):
        buildroot.root_ready(env.handle)
    if not (root.is_dir() and (root / "bin").exists()):
        return CaptureResult(
            status="failed",
            error=ErrorInfo(
                code="BuildEnvMissing", message=f"the build root {root} does not exist", step="capture"
            ),
        )
    clog = ctx.log(log, "capture")
    start = time.monotonic()
    shutil.rmtree(layout.capture, ignore_errors=True)
    layout.capture.mkdir(parents=True, exist_ok=True)
    free_at_start = shutil.disk_usage(layout.capture).free
    generation = str(env.handle.get("generation", "V1"))
    bootable = bool(env.handle.get("bootable", False))
    raw = layout.capture / "disk.raw"
    vhd = layout.capture / "disk.vhd"
    rootfs = layout.capture / "rootfs.tar.zst"
    timings: dict[str, float] = {}
    # The root tree tarball (for layering: a later template's ManagedImage / SharedImageVersion source)
    # is written while the disk is built, two cores, two jobs; only when a target keeps an image.
    tar_argv = ["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*",
                "-I", "zstd -T0 -1", "-cf", str(rootfs), "."]  # fmt: skip
    layering = keeps_image(ctx)
    if layering:
        clog.write(f"$ {proc.format_argv(tar_argv)}\n")
    sbom_log = MemoryLog()
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        tar_job = pool.submit(
            _timed, lambda: (proc.run(tar_argv, timeout=1800), sha256_cached(rootfs)) if layering else None
        )
        # The SBOM inventory is read while the disk is made (its log lines are kept in order).
        sbom_job = pool.submit(_timed_value, lambda: sbom.describe(root, sbom_log))
        ahead_stop = threading.Event()
        readahead: threading.Thread | None = None
        try:
            t0 = time.monotonic()
            early = _take_early(ctx, env, clog, timings)
            if early is None:  # the whole tree is written: its files are read ahead (page cache) meanwhile
                readahead = read_ahead(root, stop=ahead_stop)
            size_mib = _size(ctx, root, generation, bootable, early)
            timings["size_walk"] = time.monotonic() - t0 - timings.get("early_wait", 0.0)
            t0 = time.monotonic()
            info = _finish_early(ctx, early, root, raw, size_mib, clog, timings) if early else None
            if info is None:
                info = disk.build_disk(
                    root, raw, generation=generation, bootable=bootable, size_mib=size_mib, log=clog
                )
            timings["build_disk"] = time.monotonic() - t0
            ahead_stop.set()
            if ctx.qcow2:
                t0 = time.monotonic()
                qcow2 = layout.capture / "disk.qcow2"
                disk.to_qcow2(raw, qcow2, log=clog)
                timings["to_qcow2"] = time.monotonic() - t0
            # One disk: the raw file becomes the fixed VHD (footer appended in place), hashed once.
            t0 = time.monotonic()
            disk.raw_to_vhd_in_place(raw, vhd, sync=False)  # written back while it is hashed (below)
            synced = pool.submit(_fsync, vhd)
            timings["to_vhd"] = time.monotonic() - t0
            image: dict[str, Any] = {
                "format": "vhd",
                "vhd": str(vhd),
                "generation": generation,
                "bootable": bootable,
                "disk": {**_plain(info), "path": str(vhd), "raw_removed": True},
            }
            if ctx.qcow2:
                image["qcow2"] = str(layout.capture / "disk.qcow2")
            t0 = time.monotonic()
            image["sha256"] = sha256_file(vhd)
            synced.result()
            remember_sha256(vhd, image["sha256"])
            timings["sha256"] = time.monotonic() - t0
            timings["rootfs_tar"] = tar_job.result()
            timings["sbom"], described = sbom_job.result()
        except (ProviderError, OSError) as exc:
            ahead_stop.set()
            tar_job.cancel()
            with contextlib.suppress(Exception):
                tar_job.result()
            with contextlib.suppress(Exception):
                sbom_job.result()
            if isinstance(exc, TransientProviderError):
                raise
            tail = list(getattr(exc, "tail", []) or [])[-LOG_TAIL:]
            if _no_space(exc, tail):
                return _disk_full(ctx, root, free_at_start, exc, clog, log, tail)
            if not isinstance(exc, ProviderError):
                raise
            clog.write(f"! capture failed: {exc}\n")
            unbootable = bootable and "has no kernel" in str(exc)
            code = BOOT_CHECK_CODE if unbootable else "CaptureFailed"
            if isinstance(exc, DiskSizeError):
                code = "OsDiskTooSmall"
            return CaptureResult(
                status="failed",
                error=ErrorInfo(
                    code=code,
                    message=f"{BOOT_CHECK} failed: the image cannot boot: {exc}"
                    if unbootable
                    else str(exc)
                    if isinstance(exc, DiskSizeError)
                    else f"capture failed: {exc}",
                    step="capture",
                    exit_code=getattr(exc, "returncode", None),
                    log_tail=tail,
                    log_uri=log.uri or None,
                ),
            )
        ahead_stop.set()
        if readahead is not None:
            readahead.join()
    clog.write(sbom_log.text)
    if bootable and ctx.settings.boot_check:
        failed = _first_boot(ctx, vhd, generation, clog, log, timings, image)
        if failed is not None:
            return failed
    if layering:
        image["rootfs"] = str(rootfs)
    image["size"] = vhd.stat().st_size
    image["source"] = env.handle.get("source")
    image.update(described)  # SBOM inventory + freshness: providers/local/sbom.py
    image["seconds"] = round(time.monotonic() - start, 3)
    image["timings"] = {k: round(v, 3) for k, v in timings.items()}
    clog.write(
        f"[capture] {vhd} ({image['size']} bytes, sha256 {image['sha256']}) in {image['seconds']} s "
        f"{image['timings']}\n"
    )
    result = CaptureResult(status="succeeded", image=image)
    record.write_text(result.model_dump_json())
    return result


def _take_early(
    ctx: RunContext, env: BuildEnv, log: LogSink, timings: dict[str, float]
) -> earlydisk.EarlyDisk | None:
    """The run's early disk (earlydisk.py) once its job ended, or None (the log says why)."""
    job = env.handle.get("early_disk")
    if not job:
        return None
    early = earlydisk.take(ctx.layout, job=str(job), stack=buildroot.layer_stack(env.handle), log=log)
    if early is None:
        earlydisk.discard(ctx.layout)
    else:
        timings["early_wait"] = early.waited
    return early


def _size(
    ctx: RunContext, root: Path, generation: str, bootable: bool, early: earlydisk.EarlyDisk | None
) -> int:
    """The disk's size (`disk_size_mib`). With an early disk the usage is first
    bounded from above without walking the whole tree (its tree's usage plus the later layers': deletions
    are not subtracted); the tree is walked only when that bound asks for a larger disk or one larger than
    osDiskSizeGB."""
    from imagebuilder.providers.local import disk

    if early is not None:
        more = [disk.tree_usage(layer) for layer in early.diff]
        bound = (early.used[0] + sum(u[0] for u in more), early.used[1] + sum(u[1] for u in more))
        with contextlib.suppress(DiskSizeError):
            size = disk_size_mib(ctx, root, generation=generation, bootable=bootable, usage=bound)
            if size <= early.plan.size_mib:
                return size
    return disk_size_mib(ctx, root, generation=generation, bootable=bootable, usage=disk.tree_usage(root))


def _finish_early(
    ctx: RunContext,
    early: earlydisk.EarlyDisk,
    root: Path,
    raw: Path,
    size_mib: int,
    log: LogSink,
    timings: dict[str, float],
) -> Any:
    """The disk finished from the early disk, or None (the log says why: the whole tree is written)."""
    try:
        info, stats = earlydisk.finish(early, root, raw, size_mib=size_mib, log=log)
    except earlydisk.EarlyDiskUnusable as exc:
        log.write(f"[early disk] not used: {exc}\n")
        return None
    finally:
        earlydisk.discard(ctx.layout)
    timings["early_patch"] = stats.seconds
    how = "copied from the step cache" if early.origin == "kept" else "made"
    log.write(
        f"[early disk] {how} in the background "
        f"in {early.seconds:.2f} s (waited {early.waited:.2f} s); "
        f"{stats.paths} changed path(s): {stats.written} written, {stats.removed} removed, "
        f"{stats.bytes} bytes copied in {stats.seconds:.2f} s\n"
    )
    return info


def _no_space(exc: BaseException, tail: list[str]) -> bool:
    """Whether a capture failure is the host filesystem filling up (ENOSPC, in any tool's words)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return any("No space left on device" in text for text in [str(exc), *tail])


def _disk_full(
    ctx: RunContext,
    root: Path,
    free_at_start: int,
    exc: BaseException,
    clog: LogSink,
    log: LogSink,
    tail: list[str],
) -> CaptureResult:
    """The failed capture of a full host filesystem: where, how much was free, about how much the disk
    image needed, and what to do (the partial disk is already gone: build_disk writes in a temp folder)."""
    from imagebuilder.providers.local import disk

    where = ctx.layout.capture
    try:
        needed = f"at least {-(-disk.tree_usage(root)[0] // (1024 * 1024))} MiB (the build root's files)"
    except OSError:
        needed = "more than that"
    message = (
        f"no space left on device: the filesystem at {mounts.mount_point_of(where)} (holding {where}) "
        "filled up while capture wrote the disk image; it had "
        f"{free_at_start // (1024 * 1024)} MiB free when capture began, the disk image needs {needed} "
        "plus filesystem metadata"
        + (", and the root tree tarball about as much again" if keeps_image(ctx) else "")
        + ". Free space on that filesystem (or set IMAGEBUILDER_STATE_DIR to a folder on a larger one) "
        "and run the build again"
    )
    clog.write(f"! {message}\n  ({exc})\n")
    with contextlib.suppress(OSError):
        shutil.rmtree(where)  # nothing half-written stays to fill the disk until cleanup
    return CaptureResult(
        status="failed",
        error=ErrorInfo(
            code="DiskFull",
            message=message,
            step="capture",
            log_tail=tail or [str(exc)[-300:]],
            log_uri=log.uri or None,
        ),
    )


def read_ahead(root: Path, *, stop: threading.Event | None = None) -> threading.Thread:
    """Start reading the build root's files into the page cache (its layer folders, see
    `disk.readahead_trees`) in a daemon thread, and return it: called when the build root is made, so
    that the cached layers are read while the customizers run, and again at capture (`stop` ends it)."""
    from imagebuilder.providers.local import disk

    thread = threading.Thread(
        target=disk.readahead_trees, args=(layer_dirs(root),), kwargs={"stop": stop}, daemon=True
    )
    thread.start()
    return thread


def layer_dirs(root: Path) -> list[Path]:
    """The folders an overlay root is made of (its upper and lower layers, from the mount table), or the
    root itself when it is not an overlay mount."""
    target = os.path.realpath(root)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return [root]
    for line in reversed(lines):  # the last mount at a point is the visible one
        left, _, right = line.partition(" - ")
        fields, super_fields = left.split(), right.split()
        if len(fields) < 5 or len(super_fields) < 3 or mounts.unescape(fields[4]) != target:
            continue
        if super_fields[0] != "overlay":
            return [root]
        dirs: list[Path] = []
        for opt in super_fields[2].split(","):
            key, _, value = opt.partition("=")
            if key in ("upperdir", "lowerdir"):
                dirs += [Path(mounts.unescape(d)) for d in value.split(":") if d]
        return [d for d in dirs if d.is_dir()] or [root]
    return [root]


def keeps_image(ctx: RunContext) -> bool:
    """Whether a distribute target keeps an image a later build can start from (ManagedImage,
    SharedImage): only then is the root tree tarball written."""
    targets = ctx.template.properties.distribute
    return any(isinstance(t, ManagedImageDistributor | SharedImageDistributor) for t in targets)


class DiskSizeError(ProviderError):
    """vmProfile.osDiskSizeGB is smaller than the image's content."""


def disk_size_mib(
    ctx: RunContext, root: Path, *, generation: str, bootable: bool, usage: tuple[int, int] | None = None
) -> int:
    """The disk size: what properties.vmProfile.osDiskSizeGB asks for, or (0 or absent) the default
    size, the tree plus headroom. Refused, naming the field and the size needed, when the tree does not
    fit. `usage`: the tree's `disk.tree_usage` when the caller walked it already."""
    from imagebuilder.providers.local import disk

    usage = usage or disk.tree_usage(root)
    profile = ctx.template.properties.vm_profile
    gb = (profile.os_disk_size_gb or 0) if profile else 0
    if gb <= 0:
        return disk.default_size_mib(root, generation=generation, bootable=bootable, usage=usage)
    needed = disk.min_size_mib(root, generation=generation, bootable=bootable, usage=usage)
    if gb * 1024 < needed:
        raise DiskSizeError(
            f"properties.vmProfile.osDiskSizeGB is {gb} GB, smaller than the image: it needs at least "
            f"{-(-needed // 1024)} GB ({needed} MiB)",
            hint=f"set osDiskSizeGB to {-(-needed // 1024)} or more, or to 0 for the default size",
        )
    return gb * 1024


def _first_boot(
    ctx: RunContext,
    vhd: Path,
    generation: str,
    clog: LogSink,
    log: LogSink,
    timings: dict[str, float],
    image: dict[str, Any],
) -> CaptureResult | None:
    """The shipped-image boot check: the VHD itself, read-only, must reach its first-boot target.
    None when it did; the failed CaptureResult (naming the check) when it did not."""
    from imagebuilder.providers.local import boot

    t0 = time.monotonic()
    res = boot.boot_to_target(
        vhd,
        generation=generation,
        timeout=int(min(ctx.step_timeout, FIRST_BOOT_TIMEOUT)),
        log=clog,
        workdir=ctx.layout.capture / "first-boot",
    )
    timings["first_boot"] = time.monotonic() - t0
    serial = res.serial_log_path
    kept = ctx.layout.logs / f"capture-{serial.name}"
    with contextlib.suppress(OSError):
        if serial.is_file() and ctx.layout.logs.is_dir():
            shutil.move(str(serial), kept)
    shutil.rmtree(ctx.layout.capture / "first-boot", ignore_errors=True)
    image["firstBoot"] = {"ok": res.ok, "seconds": res.seconds, "serialLog": str(kept)}
    if res.ok:
        return None
    message = (
        f"{BOOT_CHECK} failed: the captured VHD did not reach its first-boot target (a login prompt): "
        f"{res.reason}"
    )
    clog.write(f"! {message}\n")
    return CaptureResult(
        status="failed",
        error=ErrorInfo(
            code=BOOT_CHECK_CODE,
            message=message,
            step="capture",
            log_tail=res.output_tail[-LOG_TAIL:],
            log_uri=log.uri or None,
        ),
    )


def _plain(value: Any) -> Any:
    """A dataclass (or anything) as JSON-able data."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def _timed_value(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.monotonic()
    value = fn()
    return time.monotonic() - t0, value
