"""The build root: the source's root tree extracted once into the cache (the read-only lower layer) and a
copy-on-write root per run (overlayfs; a plain extract where overlayfs is unavailable), remounted when the
host lost the mount; `env_ok` is the check every later phase makes first.

The overlay is a stack of layers: the extracted source, then one upper layer per customize step,
`build/layers/0`, `1`, ... Steps whose results are cached (the longest prefix of the
chain of step ids, see `stepcache`) are linked in from the cache as lower layers when the root is made;
each step that runs writes into a fresh upper layer, which is stored in the cache and stacked under the
next one (`advance`). `build/layers.json` names the base and the current upper layer, so a remount after
a host restart rebuilds the same stack."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
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
    bases,
    catalog,
    customizers,
    deprovision,
    earlydisk,
    mounts,
    proc,
    sandbox,
    stepcache,
)
from imagebuilder.providers.local.context import (
    RunContext,
)
from imagebuilder.providers.local.layout import (
    RunLayout,
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
    """The tarball extracted once into the cache (read-only lower layer of build roots); see
    `bases.extracted_tree`."""
    return bases.extracted_tree(tarball, ctx.settings.cache_dir)


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
    ids = step_ids(ctx, prepared, tarball)
    cache = ctx.step_cache
    hits = find_hits(ctx, cache, ids, log)
    mode, hits = make_root(layout, lower, tarball, log, hits=hits)
    policy = deprovision.install_policy_rc_d(layout.root)
    early_job = _start_early_disk(ctx, source, lower, mode, hits, log)
    if hits and early_job is None:
        # capture then writes the whole tree: the cached layers are read ahead while the customizers run
        # (with an early disk nothing reads them all: it would only compete with the early disk's reads)
        from imagebuilder.providers.local.capture import read_ahead

        read_ahead(layout.root)
    sandbox.prepare_inbox(layout.inbox)
    handle: dict[str, Any] = {
        "run_dir": str(layout.run_dir),
        "root": str(layout.root),
        "mode": mode,
        "lower": str(lower),
        "upper": str(layout.upper),
        "work": str(layout.overlay_work),
        "layered": mode == "overlay",
        "tarball": str(tarball),
        "inbox": str(layout.inbox),
        "artifacts": str(layout.artifacts),
        "network": ctx.network,
        "bootable": bool(source.details.get("bootable", False)),
        "generation": source.hyper_v_generation,
        "source": source.model_dump(mode="json"),
        "policy_rc_d": policy,
        "step_ids": ids,
        "early_disk": early_job,
        "cache": {
            "enabled": cache is not None and mode == "overlay",
            "reuse": ctx.cache_reuse,
            "hits": [{"id": h.id, "seconds": round(h.seconds, 3)} for h in hits],
        },
    }
    layout.env_record.write_text(json.dumps(handle, indent=2))
    reused = f", {len(hits)} cached step(s) reused" if hits else ""
    log.write(f"build root ready ({mode}{reused}) at {layout.root} in {time.monotonic() - start:.2f} s\n")
    return BuildEnv(provider="local", handle=handle)


def _start_early_disk(
    ctx: RunContext, source: SourceInfo, lower: Path, mode: str, hits: list[LayerHit], log: LogSink
) -> str | None:
    """Begin the run's disk from the source and the reused layers while the customizers run
    (earlydisk.py; a disk kept in the step cache entry of the last reused step is copied instead of
    made); returns the job's id, or None when it was not started."""
    if mode != "overlay" or not ctx.settings.early_disk:
        return None
    profile = ctx.template.properties.vm_profile
    gb = (profile.os_disk_size_gb or 0) if profile else 0
    generation = source.hyper_v_generation
    bootable = bool(source.details.get("bootable", False))
    size_mib = gb * 1024 if gb > 0 else None
    cache = ctx.step_cache
    slot = None
    if cache is not None and hits:
        slot = earlydisk.disk_slot(cache.entry(hits[-1].id), generation=generation, bootable=bootable,
                                   size_mib=size_mib)  # fmt: skip
    job = earlydisk.new_job_id()
    started = earlydisk.start(
        ctx.layout,
        job=job,
        base=Path(os.path.realpath(lower)),
        prefix=[layers_dir(ctx.layout.build) / str(i) for i in range(len(hits))],
        generation=generation,
        bootable=bootable,
        size_mib=size_mib,
        env={sandbox.RUN_MARKER_ENV: ctx.marker},
        log=log,
        slot=slot,
    )
    return job if started else None


def layer_stack(handle: dict[str, Any]) -> list[Path]:
    """A layered root's layers, bottom first (the last one is written now); [] for other roots."""
    if not handle.get("layered"):
        return []
    build = Path(handle["run_dir"]) / "build"
    try:
        upper = current_upper(build)
    except (OSError, ValueError, KeyError):
        return []
    return [layers_dir(build) / str(i) for i in range(upper + 1)]


def step_ids(ctx: RunContext, prepared: PrepareResult, tarball: Path) -> list[str]:
    """The chain of step ids of `properties.customize` (see `stepcache`), hashed over each step's JSON as
    stored (`RunContext.stored_customize`), never the model's dump: existing cache entries keep their ids."""
    assert prepared.source is not None
    st = tarball.stat()
    recipe = {
        "base": tarball.name,
        "baseSize": st.st_size,
        "baseMtimeNs": st.st_mtime_ns,
        "network": ctx.network,
        # Steps run as root or as the build user (Shell and File behave differently): part of the key.
        "buildUser": "root" if customizers.runs_as_root(ctx.tags) else customizers.BUILD_USER,
    }
    base = stepcache.base_id(prepared.source.model_dump(mode="json"), recipe)
    sha256_of = {a.uri: a.sha256 for a in prepared.artifacts}
    return stepcache.chain(base, ctx.stored_customize, sha256_of)


@dataclass(frozen=True)
class LayerHit:
    """A cached step layer used by this run: its id, its layer in the cache, the time it took."""

    id: str
    layer: Path
    seconds: float


def find_hits(
    ctx: RunContext, cache: stepcache.StepCache | None, ids: list[str], log: LogSink
) -> list[LayerHit]:
    """The longest prefix of `ids` with a verified cache entry (none when the run asked for a full
    rebuild or the cache is off)."""
    if cache is None:
        return []
    if not ctx.cache_reuse:
        log.write("[cache] full rebuild requested (cache: off): no cached step is reused\n")
        return []
    hits: list[LayerHit] = []
    for sid in ids:
        t0 = time.monotonic()
        hit = cache.lookup(sid, log)
        if hit is None:
            break
        hits.append(LayerHit(id=sid, layer=hit.layer, seconds=time.monotonic() - t0))
    return hits


def layers_dir(build: Path) -> Path:
    return build / "layers"


def current_upper(build: Path) -> int:
    """The index of the layer the overlay writes into now."""
    return int(json.loads((build / "layers.json").read_text())["upper"])


def mount_layers(build: Path, upper: int, log: LogSink | None, *, base: Path | None = None) -> None:
    """Mount build/root as the stack base, 0, ..., upper-1 (read-only) under `upper` (written), with
    absolute paths (the sandbox reads them back from the mount table). `base` defaults to the one
    recorded in build/layers.json."""
    layers = layers_dir(build)
    if base is None:
        base = Path(json.loads((build / "layers.json").read_text())["base"])
    work = build / "work"
    shutil.rmtree(work, ignore_errors=True)
    for d in (work, layers / str(upper), build / "root"):
        d.mkdir(parents=True, exist_ok=True)
    lowers = ":".join([*(str(layers / str(i)) for i in reversed(range(upper))), str(base)])
    opts = f"lowerdir={lowers},upperdir={layers / str(upper)},workdir={work}"
    proc.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(build / "root")], log=log, timeout=60)
    tmp = build / "layers.json.tmp"
    tmp.write_text(json.dumps({"upper": upper, "base": str(base)}))
    os.replace(tmp, build / "layers.json")


def advance(env: BuildEnv, index: int, log: LogSink) -> Path | None:
    """After customize step `index` wrote into upper layer `index`: unmount, and mount again with that
    layer stacked under a fresh one. Returns the finished layer (to be stored), or None when the stack
    cannot advance (no layers, out of order, the root is busy): the run goes on uncached."""
    if not env.handle.get("layered"):
        return None
    build = Path(env.handle["run_dir"]) / "build"
    root = build / "root"
    try:
        if current_upper(build) != index:
            log.write(f"[cache] layer {index} is not the current upper layer; not cached\n")
            return None
    except (OSError, ValueError, KeyError):
        return None
    try:
        proc.run(["umount", str(root)], log=log, timeout=120)
    except ProviderError as exc:
        log.write(f"[cache] warning: the build root is busy ({str(exc).splitlines()[0]}); not cached\n")
        return None
    # The finished layer is read-only from here on: a new upper layer receives every later change.
    mount_layers(build, index + 1, log)
    return layers_dir(build) / str(index)


def finished_layer(env: BuildEnv, index: int) -> Path | None:
    """Layer `index` when the stack already advanced past it (the step ran and succeeded, but the
    process died before its result was recorded or stored: a retried activity), else None."""
    if not env.handle.get("layered"):
        return None
    build = Path(env.handle["run_dir"]) / "build"
    try:
        return layers_dir(build) / str(index) if current_upper(build) == index + 1 else None
    except (OSError, ValueError, KeyError):
        return None


def root_ready(handle: dict[str, Any]) -> bool:
    root = Path(handle["root"])
    if handle.get("mode") == "overlay":
        if not mounts.mounted(root):
            if handle.get("layered"):
                build = Path(handle["run_dir"]) / "build"
                if not (Path(handle["lower"]).is_dir() and (build / "layers.json").is_file()):
                    return False
                mount_layers(build, current_upper(build), None)
                return True
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


def make_root(
    layout: RunLayout, lower: Path, tarball: Path, log: LogSink, *, hits: list[LayerHit]
) -> tuple[str, list[LayerHit]]:
    """A layered overlay (base = the extracted source, then the cached `hits`, then a fresh upper
    layer) or, where overlayfs fails, a plain extract (no layers: nothing cached is used)."""
    for point in sorted(mounts.mounts_under(layout.build), key=len, reverse=True):
        proc.run(["umount", point], log=log, timeout=60)
    if mounts.mounts_under(layout.build):
        raise ProviderError(f"cannot unmount what is mounted under {layout.build}")
    shutil.rmtree(layout.build, ignore_errors=True)
    layout.build.mkdir(parents=True, exist_ok=True)
    if not any(c in str(p) for p in (lower, layout.build) for c in ",:"):
        layers = layers_dir(layout.build)
        try:
            layers.mkdir(parents=True)
            linked: list[LayerHit] = []
            for i, hit in enumerate(hits):
                t0 = time.monotonic()
                try:
                    stepcache.clone_tree(hit.layer, layers / str(i))
                except OSError as exc:
                    log.write(f"[cache] warning: cached step {hit.id} could not be linked in ({exc}); "
                              "it runs again\n")  # fmt: skip
                    shutil.rmtree(layers / str(i), ignore_errors=True)
                    break
                linked.append(LayerHit(hit.id, hit.layer, hit.seconds + time.monotonic() - t0))
            mount_layers(layout.build, len(linked), log, base=Path(os.path.realpath(lower)))
            return "overlay", linked
        except ProviderError as exc:
            log.write(f"overlayfs unavailable ({str(exc).splitlines()[0]}); extracting a full copy\n")
            shutil.rmtree(layout.build, ignore_errors=True)
            layout.build.mkdir(parents=True, exist_ok=True)
    catalog.extract_base(tarball, layout.root)
    return "copy", []


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
