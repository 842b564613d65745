"""The distribute phase of the Azure provider: gallery image versions (regions once each, in the
definition's region), managed images (a copied snapshot for another region) and VHD exports.
"""

from __future__ import annotations

import re
from typing import Any

from imagebuilder.pipeline.messages import (
    CaptureResult,
    ReplicationResult,
)
from imagebuilder.providers.azure.clients import ArmFailure, redact
from imagebuilder.providers.azure.context import (
    TAG_RUN,
    Ctx,
    NotYet,
    disk_read_sas,
    ensure,
    later,
    run_tags,
    version_key,
)
from imagebuilder.providers.azure.context import (
    region as _region,
)
from imagebuilder.providers.azure.handles import CapturedImage
from imagebuilder.providers.azure.names import ArmId
from imagebuilder.template.models import (
    DistributeVersionerSource,
    ManagedImageDistributor,
    SharedImageDistributor,
    VhdDistributor,
)


def distribute(ctx: Ctx) -> ReplicationResult | NotYet:
    captured = CaptureResult.model_validate(ctx.args["captured"])
    index, region = int(ctx.args["target_index"]), str(ctx.args["region"])
    targets = ctx.template.properties.distribute
    if index >= len(targets):
        raise ArmFailure("InvalidDistributor", f"properties.distribute[{index}] does not exist")
    target = targets[index]
    if captured.status != "succeeded":
        raise ArmFailure("CaptureFailed", "nothing to distribute: the capture failed")
    if isinstance(target, SharedImageDistributor):
        return to_gallery(ctx, CapturedImage.of(captured), target, index, region)
    if isinstance(target, ManagedImageDistributor):
        return to_managed_image(ctx, CapturedImage.of(captured), target, index, region)
    if isinstance(target, VhdDistributor):
        return to_vhd(ctx, CapturedImage.of(captured), target, index, region)
    raise ArmFailure(
        "InvalidDistributor", f"properties.distribute[{index}].type {target.type!r} is not supported"
    )


def target_regions(target: SharedImageDistributor, home: str) -> list[dict[str, Any]]:
    """The publishing regions of a SharedImage target, each once (ARM refuses a version whose
    targetRegions name a region twice: "Duplicate regions are not allowed"); the first mention wins,
    and the version's own region is always one of them."""
    regions: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(entry: dict[str, Any]) -> None:
        key = _region(entry["name"])
        if key not in seen:
            seen.add(key)
            regions.append(entry)

    for r in target.target_regions or []:
        add(
            {
                "name": r.name,
                "regionalReplicaCount": r.replica_count or 1,
                "storageAccountType": r.storage_account_type or "Standard_LRS",
            }
        )
    for name in target.replication_regions or []:
        add(
            {
                "name": name,
                "regionalReplicaCount": 1,
                "storageAccountType": target.storage_account_type or "Standard_LRS",
            }
        )
    if _region(home) not in seen:
        regions.insert(0, {"name": home, "regionalReplicaCount": 1, "storageAccountType": "Standard_LRS"})
    return regions


def next_version(
    ctx: Ctx, target: SharedImageDistributor, existing: list[dict[str, Any]], image: CapturedImage
) -> str:
    versioning = target.versioning  # None: Latest, any major
    if isinstance(versioning, DistributeVersionerSource):
        source = image.source
        version = str(source.exact_version or "") if source else ""
        if source is None or source.type == "ManagedImage" or not re.fullmatch(r"\d+\.\d+\.\d+", version):
            raise ArmFailure(
                "InvalidVersioning",
                "versioning scheme Source needs a PlatformImage or SharedImageVersion source "
                "with an x.y.z version",
            )
        return version
    major = versioning.major if versioning is not None and versioning.major is not None else -1
    # Ignore versions this run made, so concurrent region activities compute the same name.
    others = [
        version_key(str(v["name"]))
        for v in existing
        if (v.get("tags") or {}).get(TAG_RUN) != ctx.build.run.run_id
    ]
    others = [v for v in others if len(v) == 3 and (major < 0 or v[0] == major)]
    if not others:
        return f"{max(major, 0)}.0.1"
    top = max(others)
    return f"{top[0]}.{top[1]}.{top[2] + 1}"


def to_gallery(
    ctx: Ctx, image: CapturedImage, target: SharedImageDistributor, index: int, region: str
) -> ReplicationResult | NotYet:
    gallery_image_id = target.gallery_image_id
    parsed = ArmId.parse(gallery_image_id, f"properties.distribute[{index}].galleryImageId")
    arm = ctx.settings.clients(parsed.subscription, ctx.build)
    rg, gallery, name = parsed.resource_group, parsed.name("galleries"), parsed.name("images")
    output = target.run_output_name
    versions = arm.compute.gallery_image_versions
    definition = arm.get("read gallery image", lambda: arm.compute.gallery_images.get(rg, gallery, name))
    if definition is None:
        raise ArmFailure(
            "GalleryImageNotFound",
            f"properties.distribute[{index}].galleryImageId {gallery_image_id} does not exist",
        )
    regions = target_regions(target, str(definition.get("location")))
    if not any(_region(r["name"]) == _region(region) for r in regions):
        raise ArmFailure(
            "InvalidRegion", f"{region} is not a target region of properties.distribute[{index}]"
        )
    version = ctx.state.get("version")
    if version is None:
        existing = arm.call(
            "list gallery image versions",
            lambda: [dict(v) for v in versions.list_by_gallery_image(rg, gallery, name)],
        )
        mine = [
            v
            for v in existing
            if (v.get("tags") or {}).get(TAG_RUN) == ctx.build.run.run_id
            and (v.get("tags") or {}).get("imagebuilder-output") == output
        ]
        version = str(mine[0]["name"]) if mine else next_version(ctx, target, existing, image)
        ctx.state["version"] = version
    current = arm.get(
        f"read image version {version}",
        lambda: versions.get(rg, gallery, name, version, expand="ReplicationStatus"),
    )
    if current is None:
        publishing: dict[str, Any] = {
            "targetRegions": regions,
            "excludeFromLatest": bool(target.exclude_from_latest),
        }
        if target.replication_mode:
            publishing["replicationMode"] = target.replication_mode
        home = str(definition.get("location"))
        storage: dict[str, Any]
        if _region(home) != _region(image.location):
            # ARM takes a version's source only from the version's own region (the definition's):
            # the generalized OS disk goes there as a copied snapshot first.
            snapshot_id = snapshot_in(ctx, image, home)
            if isinstance(snapshot_id, NotYet):
                return snapshot_id
            storage = {"osDiskImage": {"source": {"id": snapshot_id}}}
        elif image.managed_image_id:
            storage = {"source": {"id": image.managed_image_id}}
        else:
            storage = {"source": {"virtualMachineId": image.vm_id}}
        body = {
            "location": home,
            "tags": run_tags(ctx, {**(target.artifact_tags or {}), "imagebuilder-output": output}),
            "properties": {"publishingProfile": publishing, "storageProfile": storage},
        }
        ctx.log.write(f"creating gallery image version {version} in {len(regions)} regions\n")
        arm.start(
            f"create image version {version}",
            lambda p: versions.begin_create_or_update(rg, gallery, name, version, body, polling=p),
        )
        return later(ctx)
    if (current.get("tags") or {}).get(TAG_RUN) != ctx.build.run.run_id:
        raise ArmFailure(
            "GalleryImageVersionExists",
            f"{gallery_image_id}/versions/{version} already exists and was not made by this run; "
            "change properties.distribute[{index}].versioning (e.g. scheme Latest)".replace(
                "{index}", str(index)
            ),
        )
    props = current.get("properties") or {}
    summary = (props.get("replicationStatus") or {}).get("summary") or []
    mine_region = next((s for s in summary if _region(s.get("region")) == _region(region)), None)
    artifact = str(current.get("id"))
    if mine_region is not None:
        state = mine_region.get("state")
        if state == "Completed":
            ctx.log.write(f"{artifact} replicated to {region}\n")
            return ReplicationResult(
                run_output_name=output, region=region, status="succeeded", artifact_id=artifact
            )
        if state == "Failed":
            raise ArmFailure(
                "ReplicationFailed",
                f"replication of {version} to {region} failed: {mine_region.get('details')}",
            )
        ctx.log.write(f"replicating {version} to {region}: {mine_region.get('progress', 0)}%\n")
    if props.get("provisioningState") == "Failed":
        raise ArmFailure("ImageVersionFailed", f"gallery image version {version} failed to provision")
    return later(ctx)


def to_managed_image(
    ctx: Ctx, image: CapturedImage, target: ManagedImageDistributor, index: int, region: str
) -> ReplicationResult | NotYet:
    image_id = target.image_id
    parsed = ArmId.parse(image_id, f"properties.distribute[{index}].imageId")
    if image.trusted_launch:
        raise ArmFailure(
            "TrustedLaunchNotSupported",
            f"properties.distribute[{index}]: a Trusted Launch build cannot be a managed image; "
            "use a SharedImage distributor with a Trusted Launch image definition",
        )
    location = target.location or image.location
    arm = ctx.settings.clients(parsed.subscription, ctx.build)
    rg, name = parsed.resource_group, parsed.name("images")
    properties: dict[str, Any] = {
        "sourceVirtualMachine": {"id": image.vm_id},
        "hyperVGeneration": image.hyper_v_generation,
    }
    if _region(location) != _region(image.location):
        snapshot_id = snapshot_in(ctx, image, location)
        if isinstance(snapshot_id, NotYet):
            return snapshot_id
        properties = {
            "hyperVGeneration": image.hyper_v_generation,
            "storageProfile": {
                "osDisk": {
                    "osType": image.os_type,
                    "osState": "Generalized",
                    "snapshot": {"id": snapshot_id},
                }
            },
        }
    result = ensure(
        ctx,
        f"managed image {name}",
        lambda: arm.compute.images.get(rg, name),
        lambda body, p: arm.compute.images.begin_create_or_update(rg, name, body, polling=p),
        lambda: {
            "location": location,
            "tags": run_tags(ctx, target.artifact_tags or {}),
            "properties": properties,
        },
    )
    if isinstance(result, NotYet):
        return result
    return ReplicationResult(
        run_output_name=target.run_output_name,
        region=region,
        status="succeeded",
        artifact_id=str(result.get("id") or image_id),
    )


def snapshot_in(ctx: Ctx, image: CapturedImage, location: str) -> str | NotYet:
    """The generalized OS disk as a snapshot in `location`: an incremental snapshot in the build
    region copied across with CopyStart (both transient, in the staging group). Returns its id."""
    rg, snapshots = image.resource_group, ctx.arm.compute.snapshots
    sub = ctx.build.run.subscription_id
    disk_id = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{image.os_disk}"
    here, there = f"ib-{ctx.names.key}-snap", f"ib-{ctx.names.key}-snap-{_region(location)}"
    tags = run_tags(ctx)
    source = ensure(
        ctx,
        f"snapshot {here}",
        lambda: snapshots.get(rg, here),
        lambda body, p: snapshots.begin_create_or_update(rg, here, body, polling=p),
        lambda: {
            "location": image.location,
            "tags": tags,
            "properties": {
                "creationData": {"createOption": "Copy", "sourceResourceId": disk_id},
                "incremental": True,
            },
        },
    )
    if isinstance(source, NotYet):
        return source
    copy = ensure(
        ctx,
        f"snapshot {there}",
        lambda: snapshots.get(rg, there),
        lambda body, p: snapshots.begin_create_or_update(rg, there, body, polling=p),
        lambda: {
            "location": location,
            "tags": tags,
            "properties": {
                "creationData": {"createOption": "CopyStart", "sourceResourceId": source["id"]},
                "incremental": True,
            },
        },
    )
    if isinstance(copy, NotYet):
        return copy
    done = float((copy.get("properties") or {}).get("completionPercent", 100))
    if done < 100:
        ctx.log.write(f"copying the OS disk snapshot to {location}: {done:.0f}%\n")
        return later(ctx)
    return str(copy["id"])


def to_vhd(
    ctx: Ctx, image: CapturedImage, target: VhdDistributor, index: int, region: str
) -> ReplicationResult | NotYet:
    uri = target.uri or ""
    output = target.run_output_name
    if not re.match(r"^https://[^/]+/[^/]+/.+", uri):
        raise ArmFailure(
            "InvalidVhdUri",
            f"properties.distribute[{index}].uri must name a blob "
            "(https://<account>.blob.core.windows.net/<container>/<name>.vhd): this provider deletes its "
            "staging group after each run, so it cannot keep a VHD there",
        )
    rg, disk = image.resource_group, image.os_disk
    disks = ctx.arm.compute.disks
    blob = ctx.arm.blob(uri)
    if not ctx.state.get("copy_started"):
        sas = disk_read_sas(ctx, rg, disk, f"granting read access to {disk} for the VHD copy")
        if isinstance(sas, NotYet):
            return sas
        # The SAS is a secret: used right here, never logged and never put into the Pending state.
        ctx.arm.call(f"copy VHD to {redact(uri)}", lambda: blob.start_copy_from_url(sas))
        ctx.state["copy_started"] = True
        ctx.log.write(f"copying the OS disk to {redact(uri)}\n")
        return later(ctx)
    props = ctx.arm.call(f"read {redact(uri)}", blob.get_blob_properties)
    copy = props.copy
    if copy.status == "pending":
        ctx.log.write(f"VHD copy: {copy.progress}\n")
        return later(ctx)
    ctx.arm.start(f"revoke access to {disk}", lambda p: disks.begin_revoke_access(rg, disk, polling=p))
    if copy.status != "success":
        raise ArmFailure("VhdCopyFailed", f"copying the VHD ended {copy.status}: {copy.status_description}")
    return ReplicationResult(
        run_output_name=output, region=region, status="succeeded", artifact_uri=uri.split("?", 1)[0]
    )
