"""The build root: the source's root tree extracted once into the cache (the read-only lower layer) and a
copy-on-write root per run (overlayfs; a plain extract where overlayfs is unavailable), remounted when the
host lost the mount; `env_ok` is the check every later phase makes first."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from imagebuilder.pipeline.messages import (
    BuildEnv,
    ErrorInfo,
    PrepareResult,
    SourceInfo,
    StepResult,
)
from imagebuilder.providers.base import LogSink, ProviderError
from imagebuilder.providers.local import (
    catalog,
    deprovision,
    mounts,
    proc,
    sandbox,
)
from imagebuilder.providers.local.context import (
    RunContext,
)
from imagebuilder.providers.local.fsutil import locked_file
from imagebuilder.providers.local.layout import (
    RunLayout,
    safe_name,
    short_hash,
)


def source_tarball(ctx: RunContext, source: SourceInfo, log: LogSink) -> Path:
    if source.type == "PlatformImage":
        d = source.details
        base = catalog.resolve(
            str(d["publisher"]), str(d["offer"]), str(d["sku"]), str(source.exact_version),
            extra=ctx.settings.catalog_extra(),
        )  # fmt: skip
        return catalog.ensure_base(base, ctx.settings.cache_dir, log=log)
    rootfs = Path(str(source.details.get("rootfs") or ""))
    if not rootfs.is_file():
        raise ProviderError(
            f"the root tree of source {source.id} is missing from the local store ({rootfs})",
            hint="publish the source image again",
        )
    return rootfs


def extracted(ctx: RunContext, tarball: Path) -> Path:
    """The tarball extracted once into the cache (read-only lower layer of build roots). Concurrent
    callers (threads or processes) wait on a lock file and reuse the first one's result."""
    st = tarball.stat()
    key = f"{safe_name(tarball.name.removesuffix('.tar.zst'), limit=60)}-" + short_hash(
        str(tarball.resolve()), str(st.st_size), str(st.st_mtime_ns)
    )
    dest = ctx.settings.cache_dir / "extracted" / key
    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked_file(dest.parent / f".{key}.lock"):
        if (dest / ".complete").is_file():
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=dest.parent))
        try:
            catalog.extract_base(tarball, tmp / "tree")
            (tmp / ".complete").write_text(str(tarball))
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def create_build_env(ctx: RunContext, prepared: PrepareResult, log: LogSink) -> BuildEnv:
    layout = ctx.layout
    layout.logs.mkdir(parents=True, exist_ok=True)
    log = ctx.log(log, "build")
    if layout.env_record.is_file():
        recorded: dict[str, Any] = json.loads(layout.env_record.read_text())
        if root_ready(recorded):
            return BuildEnv(provider="local", handle=recorded)
    if prepared.source is None:
        raise ProviderError("create_build_env needs a succeeded PrepareResult with a source")
    source = prepared.source
    start = time.monotonic()
    tarball = source_tarball(ctx, source, log)
    lower = extracted(ctx, tarball) / "tree"
    mode = make_root(layout, lower, tarball, log)
    policy = deprovision.install_policy_rc_d(layout.root)
    sandbox.prepare_inbox(layout.inbox)
    handle: dict[str, Any] = {
        "run_dir": str(layout.run_dir),
        "root": str(layout.root),
        "mode": mode,
        "lower": str(lower),
        "upper": str(layout.upper),
        "work": str(layout.overlay_work),
        "tarball": str(tarball),
        "inbox": str(layout.inbox),
        "artifacts": str(layout.artifacts),
        "network": ctx.network,
        "bootable": bool(source.details.get("bootable", False)),
        "generation": source.hyper_v_generation,
        "source": source.model_dump(mode="json"),
        "policy_rc_d": policy,
    }
    layout.env_record.write_text(json.dumps(handle, indent=2))
    log.write(f"build root ready ({mode}) at {layout.root} in {time.monotonic() - start:.2f} s\n")
    return BuildEnv(provider="local", handle=handle)


def root_ready(handle: dict[str, Any]) -> bool:
    root = Path(handle["root"])
    if handle.get("mode") == "overlay":
        if not mounts.mounted(root):
            if not (Path(handle["lower"]).is_dir() and Path(handle["upper"]).is_dir()):
                return False
            mount_overlay(Path(handle["lower"]), Path(handle["upper"]), Path(handle["work"]), root, None)
        return True
    return root.is_dir() and (root / "bin").exists()


def mount_overlay(lower: Path, upper: Path, work: Path, root: Path, log: LogSink | None) -> None:
    for d in (upper, work, root):
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    proc.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(root)], log=log, timeout=60)


def make_root(layout: RunLayout, lower: Path, tarball: Path, log: LogSink) -> str:
    """Overlay (lower = the extracted base, upper = the run) or, where that fails, a plain extract."""
    for point in sorted(mounts.mounts_under(layout.build), key=len, reverse=True):
        proc.run(["umount", point], log=log, timeout=60)
    if mounts.mounts_under(layout.build):
        raise ProviderError(f"cannot unmount what is mounted under {layout.build}")
    shutil.rmtree(layout.build, ignore_errors=True)
    layout.build.mkdir(parents=True, exist_ok=True)
    if not any(c in str(p) for p in (lower, layout.build) for c in ",:"):
        try:
            mount_overlay(lower, layout.upper, layout.overlay_work, layout.root, log)
            return "overlay"
        except ProviderError as exc:
            log.write(f"overlayfs unavailable ({str(exc).splitlines()[0]}); extracting a full copy\n")
            shutil.rmtree(layout.build, ignore_errors=True)
            layout.build.mkdir(parents=True, exist_ok=True)
    catalog.extract_base(tarball, layout.root)
    return "copy"


def env_ok(env: BuildEnv, step: str, log: LogSink) -> StepResult | None:
    root = Path(str(env.handle.get("root", "")))
    with contextlib.suppress(ProviderError, KeyError, OSError):
        root_ready(env.handle)  # remounts the overlay if the host lost it (a reboot)
    if root.is_dir() and (root / "bin").exists():
        return None
    return StepResult(
        status="failed",
        step=step,
        error=ErrorInfo(
            code="BuildEnvMissing",
            message=f"the build root {root} does not exist (cleanup ran, or create_build_env did not)",
            step=step,
            log_uri=log.uri or None,
        ),
    )
