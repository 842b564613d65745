"""Phase distribute: the captured image published as one distribute target in one region: a managed
image, a Compute Gallery image version replica, or a VHD (state dir, an allowed `file://` folder, or a
blob URL through the provider's uploader)."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

from imagebuilder.pipeline.messages import (
    CaptureResult,
    ErrorInfo,
    ReplicationResult,
)
from imagebuilder.providers.base import LogSink, ProviderError
from imagebuilder.providers.local import (
    artifacts,
)
from imagebuilder.providers.local.context import (
    VHD_ROOT_ENV,
    RunContext,
    file_uri,
)
from imagebuilder.providers.local.fsutil import sha256_file
from imagebuilder.providers.local.gallery import GalleryError, GalleryImageId, ImageId, region_key
from imagebuilder.providers.local.layout import (
    is_within,
    safe_name,
)
from imagebuilder.template.models import (
    Distributor,
    ManagedImageDistributor,
    SharedImageDistributor,
    VhdDistributor,
)


def distribute(
    ctx: RunContext, captured: CaptureResult, target_index: int, region: str, log: LogSink
) -> ReplicationResult:
    targets = ctx.template.properties.distribute
    if not 0 <= target_index < len(targets):
        raise ProviderError(f"properties.distribute[{target_index}] does not exist ({len(targets)} targets)")
    target = targets[target_index]
    field = f"properties.distribute[{target_index}]"
    name = target.run_output_name or f"distribute{target_index}"
    typ = target.type
    step = f"distribute[{target_index}] ({typ}: {name}) {region}"
    dlog = ctx.log(log, "distribute")
    vhd = Path(str(captured.image.get("vhd", "")))
    if captured.status != "succeeded" or not vhd.is_file():
        return _failed(name, region, step, "CaptureMissing", f"{step}: no captured image at {vhd}", log)
    try:
        if isinstance(target, ManagedImageDistributor):
            return _to_managed_image(ctx, captured, target, field, name, region, dlog)
        if isinstance(target, SharedImageDistributor):
            return _to_gallery(ctx, captured, target, target_index, field, name, region, dlog)
        if isinstance(target, VhdDistributor):
            return _to_vhd(ctx, captured, target, field, name, region, dlog)
    except GalleryError as exc:
        return _failed(name, region, step, exc.code, str(exc), log)
    return _failed(
        name,
        region,
        step,
        "BadDistributeType",
        f"{field}.type {typ!r} is not ManagedImage, SharedImage or VHD",
        log,
    )


def _failed(name: str, region: str, step: str, code: str, message: str, log: LogSink) -> ReplicationResult:
    log.write(f"! {step} failed: {message}\n")
    return ReplicationResult(
        run_output_name=name,
        region=region,
        status="failed",
        error=ErrorInfo(code=code, message=message, step=step, log_uri=log.uri or None),
    )


def _owner(ctx: RunContext, target_index: int) -> dict[str, Any]:
    return {"template": ctx.build.run.template_id, "run": ctx.build.run.run_id, "target": target_index}


def _meta(captured: CaptureResult, target: Distributor) -> dict[str, Any]:
    img = captured.image
    source = img.get("source") or {}
    return {
        "generation": img.get("generation", "V1"),
        "bootable": bool(img.get("bootable", False)),
        "sha256": img["sha256"],
        "size": img.get("size"),
        "sourceVersion": source.get("exact_version"),
        "source": {
            "type": source.get("type"),
            "id": source.get("id"),
            "exactVersion": source.get("exact_version"),
            "builtFrom": (source.get("details") or {}).get("builtFrom"),
        },
        "tags": dict(target.artifact_tags or {}),
    }


def _to_managed_image(
    ctx: RunContext,
    captured: CaptureResult,
    target: ManagedImageDistributor,
    field: str,
    name: str,
    region: str,
    log: LogSink,
) -> ReplicationResult:
    image_id = target.image_id
    location = target.location or region or ctx.template.location
    meta = {
        **_meta(captured, target),
        "run": {"template": ctx.build.run.template_id, "run": ctx.build.run.run_id},
    }
    stored = ctx.settings.stores.publish_image(
        image_id,
        location,
        disk=Path(captured.image["vhd"]),
        rootfs=Path(str(captured.image.get("rootfs", ""))),
        meta=meta,
        field=f"{field}.imageId",
        log=log,
    )
    log.write(f"[distribute] managed image {image_id} in {location}: {stored.disk}\n")
    return ReplicationResult(
        run_output_name=name,
        region=location,
        status="succeeded",
        artifact_id=ImageId.parse(image_id, field).text,
        artifact_uri=file_uri(stored.disk),
    )


def target_regions(ctx: RunContext, target: SharedImageDistributor) -> list[dict[str, Any]]:
    if target.target_regions:
        return [
            {
                "name": r.name,
                "replicaCount": r.replica_count or 1,
                "storageAccountType": r.storage_account_type or "Standard_LRS",
            }
            for r in target.target_regions
        ]
    names = target.replication_regions or [ctx.template.location or "local"]
    sat = target.storage_account_type or "Standard_LRS"
    return [{"name": n, "replicaCount": 1, "storageAccountType": sat} for n in names]


def _to_gallery(
    ctx: RunContext,
    captured: CaptureResult,
    target: SharedImageDistributor,
    target_index: int,
    field: str,
    name: str,
    region: str,
    log: LogSink,
) -> ReplicationResult:
    ref = GalleryImageId.parse(target.gallery_image_id, f"{field}.galleryImageId")
    regions = target_regions(ctx, target)
    settings = next((r for r in regions if region_key(r["name"]) == region_key(region)), None)
    if settings is None:
        raise GalleryError(
            "BadSharedImageDistribute",
            f"{field}: region {region!r} is not one of its target regions "
            f"({', '.join(r['name'] for r in regions)})",
            hint="add the region to targetRegions",
        )
    generation = str(captured.image.get("generation", "V1"))
    ctx.settings.stores.ensure_definition(ref, generation=generation, field=field)
    base_meta = {
        **_meta(captured, target),
        "excludeFromLatest": bool(target.exclude_from_latest),
        "targetRegions": [region_key(r["name"]) for r in regions],
        "targetRegionSettings": regions,
    }
    source = captured.image.get("source") or {}
    version, _version_meta = ctx.settings.stores.allocate_version(
        ref,
        owner=_owner(ctx, target_index),
        versioning=target.versioning.to_json() if target.versioning is not None else None,
        source_version=source.get("exact_version"),
        base_meta=base_meta,
        field=field,
    )
    copy = ctx.settings.stores.replicate(
        ref,
        version,
        settings["name"],
        disk=Path(captured.image["vhd"]),
        rootfs=Path(str(captured.image.get("rootfs", ""))),
        sha256=str(captured.image["sha256"]),
        settings={
            "replicaCount": settings["replicaCount"],
            "storageAccountType": settings["storageAccountType"],
        },
        log=log,
    )
    log.write(f"[distribute] gallery version {ref.version_id(version)} replicated to {settings['name']}\n")
    return ReplicationResult(
        run_output_name=name,
        region=settings["name"],
        status="succeeded",
        artifact_id=ref.version_id(version),
        artifact_uri=file_uri(copy),
    )


def _to_vhd(
    ctx: RunContext,
    captured: CaptureResult,
    target: VhdDistributor,
    field: str,
    name: str,
    region: str,
    log: LogSink,
) -> ReplicationResult:
    from imagebuilder.providers.local.gallery import copy_verified

    src = Path(captured.image["vhd"])
    sha = str(captured.image["sha256"])
    uri = target.uri or ""
    parts = urllib.parse.urlsplit(uri)
    run = ctx.build.run
    if not uri:
        dest = (
            ctx.settings.stores.vhds_dir / safe_name(run.subscription_id.lower())
            / safe_name(run.resource_group.lower())
            / safe_name(run.template_name) / safe_name(run.run_id) / f"{safe_name(name)}.vhd"
        )  # fmt: skip
    elif parts.scheme == "file":
        dest = Path(os.path.realpath(urllib.parse.unquote(parts.path)))
        allowed = ctx.settings.vhd_roots
        if not any(is_within(dest.parent, a) and dest != Path(os.path.realpath(a)) for a in allowed):
            raise GalleryError(
                "BadVhdDistribute",
                f"{field}.uri {uri} is outside the folders a VHD may be written to "
                f"({', '.join(str(a) for a in allowed)})",
                hint=f"leave uri empty, or add the folder to {VHD_ROOT_ENV}",
            )
    elif parts.scheme in ("http", "https"):
        if ctx.settings.blob_uploader is None:
            raise GalleryError(
                "BadVhdDistribute",
                f"{field}.uri {artifacts.display_uri(uri)}: this provider has no blob uploader",
                hint="leave uri empty (the VHD goes to the state directory), or configure storage",
            )
        log.write(f"[distribute] uploading {src} to {artifacts.display_uri(uri)}\n")
        try:
            out = ctx.settings.blob_uploader(uri, src)
        except Exception as exc:
            raise GalleryError("VhdUploadFailed", f"{field}.uri {artifacts.display_uri(uri)}: {exc}") from exc
        return ReplicationResult(
            run_output_name=name,
            region=region,
            status="succeeded",
            artifact_id=None,
            artifact_uri=out or uri,
        )
    else:
        raise GalleryError(
            "BadVhdDistribute",
            f"{field}.uri {uri!r} has an unsupported scheme",
            hint="use a blob URL, a file:// URI or leave it empty",
        )
    if not (dest.is_file() and sha256_file(dest) == sha):
        # The default home (no uri) is the provider's own store: a hard link of the one disk. A file://
        # target is the user's to change: a copy of its own (reflinked where the filesystem can).
        copy_verified(src, dest, sha, log=log, share=not uri)
    log.write(f"[distribute] VHD {name}: {dest}\n")
    return ReplicationResult(
        run_output_name=name,
        region=region,
        status="succeeded",
        artifact_id=None,
        artifact_uri=file_uri(dest),
    )
