"""The prepare phase of the Azure provider: the source resolved (`latest` to an exact version, the
source's region, generation and security type) and every script or file fetched once to check its SHA-256
before any build resource exists.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

from imagebuilder.pipeline.artifacts import build_artifacts
from imagebuilder.pipeline.messages import (
    ErrorInfo,
    PrepareResult,
    SourceInfo,
    StagedArtifact,
)
from imagebuilder.providers.azure.clients import ArmFailure, redact
from imagebuilder.providers.azure.context import (
    Ctx,
    version_key,
)
from imagebuilder.providers.azure.context import (
    region as _region,
)
from imagebuilder.providers.azure.names import ArmId
from imagebuilder.template.models import ManagedImageSource, PlatformImageSource


def prepare(ctx: Ctx) -> PrepareResult:
    source = resolve_source(ctx)
    ctx.log.write(f"source resolved: {source.type} {source.id} ({source.hyper_v_generation})\n")
    artifacts: dict[str, StagedArtifact] = {}
    for ref in build_artifacts(ctx.template):
        where, _, field = ref.target.rpartition(".")
        uri = ref.uri
        refuse_app_storage(ctx, uri, f"{where}.{field}")
        if uri not in artifacts:
            data = ctx.arm.fetch(uri)
            digest = hashlib.sha256(data).hexdigest()
            ctx.log.write(f"fetched {redact(uri)}: {len(data)} bytes, sha256 {digest}\n")
            artifacts[uri] = StagedArtifact(uri=uri, sha256=digest, size=len(data), location=uri)
        digest = artifacts[uri].sha256
        want = str(ref.sha256 or "").lower()
        if want and want != digest:
            return PrepareResult(
                status="failed",
                source=source,
                error=ErrorInfo(
                    code="ChecksumMismatch",
                    message=(
                        f"{where}.sha256Checksum is {want} but {where}.{field} ({redact(uri)}) has "
                        f"sha256 {digest}; fix the checksum or the file"
                    ),
                    step="prepare",
                    log_uri=ctx.log.uri or None,
                ),
            )
    return PrepareResult(status="succeeded", source=source, artifacts=list(artifacts.values()))


def refuse_app_storage(ctx: Ctx, uri: str, where: str) -> None:
    """Private blobs are read with the app's identity, which owns the app's own storage account (its
    function keys in azure-webjobs-secrets, the durable state, the run records): a template may only
    name the artifacts container there, or anything it can reach with a SAS of its own."""
    if not ctx.settings.app_account:
        return
    parts = urlsplit(uri)
    host = parts.netloc.lower()
    if host != f"{ctx.settings.app_account}.blob.core.windows.net" or "sig=" in parts.query:
        return
    container = parts.path.lstrip("/").split("/", 1)[0]
    allowed = ctx.settings.artifacts_container
    if container.lower() != allowed.lower():
        raise ArmFailure(
            "ScriptUriNotAllowed",
            f"{where} ({redact(uri)}) names the image builder's own storage account "
            f"{ctx.settings.app_account!r}, container {container!r}: only its {allowed!r} "
            "container may hold build files; upload the file there, or use another account",
        )


def resolve_source(ctx: Ctx) -> SourceInfo:
    source = ctx.template.properties.source
    if isinstance(source, PlatformImageSource):
        return resolve_platform(ctx, source)
    if isinstance(source, ManagedImageSource):
        image_id = source.image_id
        parsed = ArmId.parse(image_id, "properties.source.imageId")
        arm = ctx.settings.clients(parsed.subscription, ctx.build)
        image = arm.get(
            "read source image",
            lambda: arm.compute.images.get(parsed.resource_group, parsed.name("images")),
        )
        if image is None:
            raise ArmFailure("SourceImageNotFound", f"properties.source.imageId {image_id} does not exist")
        props = image.get("properties") or {}
        os_disk = (props.get("storageProfile") or {}).get("osDisk") or {}
        if _region(image.get("location")) != _region(ctx.location):
            raise ArmFailure(
                "SourceImageLocationMismatch",
                f"the source image is in {image.get('location')}, the template in {ctx.location}; "
                "copy the image into the template's region or use a gallery image version",
            )
        return SourceInfo(
            type="ManagedImage",
            id=image_id,
            hyper_v_generation="V2" if props.get("hyperVGeneration") == "V2" else "V1",
            details={"os_type": os_disk.get("osType", "Linux"), "image_reference": {"id": image_id}},
        )
    return resolve_gallery(ctx, source.image_version_id)  # SharedImageVersion: the model knows no other


def resolve_platform(ctx: Ctx, source: PlatformImageSource) -> SourceInfo:
    publisher, offer, sku = source.publisher, source.offer, source.sku
    if not (publisher and offer and sku):
        raise ArmFailure(
            "InvalidSource", "properties.source needs publisher, offer and sku for a PlatformImage"
        )
    version = source.version or "latest"
    images = ctx.arm.compute.virtual_machine_images
    if version.lower() == "latest":
        listed = ctx.arm.call(
            "list platform image versions", lambda: images.list(ctx.location, publisher, offer, sku)
        )
        names = [str(dict(item)["name"]) for item in listed]
        if not names:
            raise ArmFailure(
                "SourceImageNotFound", f"no versions of {publisher}:{offer}:{sku} in {ctx.location}"
            )
        version = max(names, key=version_key)
    image = ctx.arm.get(
        "read platform image", lambda: images.get(ctx.location, publisher, offer, sku, version)
    )
    if image is None:
        raise ArmFailure(
            "SourceImageNotFound", f"{publisher}:{offer}:{sku}:{version} does not exist in {ctx.location}"
        )
    props = image.get("properties") or {}
    plan_info = source.plan_info
    plan: dict[str, str] | None = None
    if plan_info is not None:
        plan = {
            "name": plan_info.plan_name,
            "product": plan_info.plan_product,
            "publisher": plan_info.plan_publisher,
        }
    elif props.get("plan"):
        p = props["plan"]
        plan = {"name": p.get("name"), "product": p.get("product"), "publisher": p.get("publisher")}
    return SourceInfo(
        type="PlatformImage",
        id=f"{publisher}:{offer}:{sku}:{version}",
        exact_version=version,
        hyper_v_generation="V2" if props.get("hyperVGeneration") == "V2" else "V1",
        details={
            "os_type": (props.get("osDiskImage") or {}).get("operatingSystem", "Linux"),
            "image_reference": {"publisher": publisher, "offer": offer, "sku": sku, "version": version},
            "plan": plan,
        },
    )


def resolve_gallery(ctx: Ctx, version_id: str) -> SourceInfo:
    parsed = ArmId.parse(version_id, "properties.source.imageVersionId")
    arm = ctx.settings.clients(parsed.subscription, ctx.build)
    rg, gallery, image = parsed.resource_group, parsed.name("galleries"), parsed.name("images")
    version = parsed.name("versions")
    versions = arm.compute.gallery_image_versions
    if version.lower() == "latest":
        listed = arm.call(
            "list gallery image versions",
            lambda: list(versions.list_by_gallery_image(rg, gallery, image)),
        )
        usable = []
        for item in listed:
            item = dict(item)
            props = item.get("properties") or {}
            if (props.get("publishingProfile") or {}).get("excludeFromLatest"):
                continue
            if props.get("provisioningState", "Succeeded") != "Succeeded":
                continue
            usable.append(str(item["name"]))
        if not usable:
            raise ArmFailure("SourceImageNotFound", f"{version_id}: the gallery image has no usable version")
        version = max(usable, key=version_key)
    definition = arm.get("read gallery image", lambda: arm.compute.gallery_images.get(rg, gallery, image))
    if definition is None:
        raise ArmFailure(
            "SourceImageNotFound", f"properties.source.imageVersionId {version_id}: no such image"
        )
    props = definition.get("properties") or {}
    if props.get("osState") == "Specialized":
        raise ArmFailure(
            "SourceImageSpecialized",
            "properties.source.imageVersionId points at a Specialized image definition; "
            "use a Generalized one",
        )
    features = {str(f.get("name")): str(f.get("value")) for f in props.get("features") or []}
    security = features.get("SecurityType", "Standard")
    exact = re.sub(r"/versions/[^/]+$", f"/versions/{version}", version_id, flags=re.IGNORECASE)
    plan = props.get("purchasePlan")
    return SourceInfo(
        type="SharedImageVersion",
        id=exact,
        exact_version=version,
        hyper_v_generation="V2" if props.get("hyperVGeneration") == "V2" else "V1",
        details={
            "os_type": props.get("osType", "Linux"),
            "image_reference": {"id": exact},
            "security_type": security if security.startswith("TrustedLaunch") else "Standard",
            "plan": (
                {
                    "name": plan.get("name"),
                    "product": plan.get("product"),
                    "publisher": plan.get("publisher"),
                }
                if plan
                else None
            ),
        },
    )
