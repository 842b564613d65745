"""The capture phase of the Azure provider: the generalized VM as a managed image (Standard), or the VM
itself for a Trusted Launch build (galleries take it directly); the OS disk's SHA-256 (digest.py) and the
inventory the build VM listed before generalize (inventory.py).
"""

from __future__ import annotations

from typing import Any

from imagebuilder.pipeline.messages import (
    CaptureResult,
)
from imagebuilder.providers.azure import inventory
from imagebuilder.providers.azure.context import (
    Ctx,
    NotYet,
    ensure,
    run_tags,
)
from imagebuilder.providers.azure.digest import disk_digest
from imagebuilder.providers.azure.handles import BuildHandle, CapturedImage


def capture(ctx: Ctx) -> CaptureResult | NotYet:
    env = BuildHandle.of(ctx.args["env"])
    rg, vm_id = env.resource_group, env.vm_id
    compute = ctx.arm.compute
    trusted = env.security_type == "TrustedLaunch"
    image: dict[str, Any] | NotYet = {}
    if not trusted:  # a Trusted Launch VM cannot become a managed image: galleries take the VM itself
        image = ensure(
            ctx,
            f"image {ctx.names.image}",
            lambda: compute.images.get(rg, ctx.names.image),
            lambda body, p: compute.images.begin_create_or_update(rg, ctx.names.image, body, polling=p),
            lambda: {
                "location": env.location,
                "tags": run_tags(ctx),
                "properties": {
                    "sourceVirtualMachine": {"id": vm_id},
                    "hyperVGeneration": env.hyper_v_generation,
                },
            },
        )
    if isinstance(image, NotYet):
        return image
    digest = disk_digest(ctx, rg, env.os_disk)  # the provenance subject's SHA-256 (digest.py)
    if isinstance(digest, NotYet):
        return digest
    captured = CapturedImage(
        managed_image_id=image.get("id"),
        trusted_launch=trusted,
        vm_id=vm_id,
        resource_group=rg,
        os_disk=env.os_disk,
        location=env.location,
        os_type=env.os_type,
        hyper_v_generation=env.hyper_v_generation,
        source=env.source,
    )
    described = inventory.describe(ctx)  # the inventory the build VM listed before generalize
    image_ref = {**captured.model_dump(mode="json"), **described}
    image_ref.update(sha256=digest["sha256"], size=digest["size"], digestOf=digest["subject"])
    return CaptureResult(status="succeeded", image=image_ref)
