"""The build environment of the Azure provider: the staging group, network (NSG, VNet, NIC, or the user's
subnet), the build VM's body and its security type chosen from the source and every target.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from imagebuilder.pipeline.messages import (
    BuildEnv,
    PrepareResult,
    SourceInfo,
    TemplateRef,
)
from imagebuilder.providers.azure import staging as staging_group
from imagebuilder.providers.azure.clients import ArmFailure, as_json
from imagebuilder.providers.azure.context import (
    ADMIN_USER,
    TAG_RUN,
    Ctx,
    NotYet,
    ensure,
    run_tags,
)
from imagebuilder.providers.azure.context import (
    region as _region,
)
from imagebuilder.providers.azure.handles import BuildHandle
from imagebuilder.providers.azure.names import ArmId
from imagebuilder.template.models import (
    ImageTemplateVmProfile,
    ManagedImageDistributor,
    SharedImageDistributor,
)

DEFAULT_VM_SIZE = {"V1": "Standard_D1_v2", "V2": "Standard_D2ds_v4"}


def ensure_staging(ctx: Ctx) -> dict[str, Any]:
    names = ctx.names
    template_group = staging_group.of_build(ctx.build)
    if template_group is not None:  # the template's own group: made at create, shared by its runs
        run = ctx.build.run
        ref = TemplateRef(
            subscription_id=run.subscription_id,
            resource_group=run.resource_group,
            template_name=run.template_name,
        )
        tags = dict(ctx.template.properties.managed_resource_tags or {})
        return staging_group.ensure(ctx.arm, ref, template_group, ctx.location, tags, ctx.log.write)
    groups = ctx.arm.resources.resource_groups
    group = ctx.arm.get("read staging resource group", lambda: groups.get(names.resource_group))
    if group is None:
        tags = run_tags(
            ctx,
            {
                "createdBy": "AzureVMImageBuilder",
                "imageTemplateName": ctx.build.run.template_name,
                "imageTemplateResourceGroupName": ctx.build.run.resource_group,
            },
        )
        ctx.log.write(f"creating staging resource group {names.resource_group}\n")
        created: dict[str, Any] = ctx.arm.call(
            "create staging resource group",
            lambda: as_json(
                groups.create_or_update(names.resource_group, {"location": ctx.location, "tags": tags})
            ),
        )
        return created
    if group.get("tags", {}).get(TAG_RUN) == ctx.build.run.run_id:
        return group  # ours, from an earlier attempt
    if not names.resource_group_given:
        raise ArmFailure(
            "StagingResourceGroupConflict",
            f"resource group {names.resource_group} exists and was not made by this run",
        )
    if _region(group.get("location")) != _region(ctx.location):
        raise ArmFailure(
            "InvalidStagingResourceGroup",
            f"properties.stagingResourceGroup {names.resource_group} is in {group.get('location')}, "
            f"the template in {ctx.location}; use an empty group in the template's region",
        )
    if not ctx.state.get("staging_checked"):
        contents = ctx.arm.call(
            "list staging resource group",
            lambda: [
                dict(r) for r in ctx.arm.resources.resources.list_by_resource_group(names.resource_group)
            ],
        )
        foreign = [r["id"] for r in contents if (r.get("tags") or {}).get(TAG_RUN) != ctx.build.run.run_id]
        if foreign:
            raise ArmFailure(
                "InvalidStagingResourceGroup",
                f"properties.stagingResourceGroup {names.resource_group} is not empty "
                f"({len(foreign)} resources, e.g. {foreign[0]}); give an empty resource group or omit it",
            )
        ctx.state["staging_checked"] = True
    return group


def create_build_env(ctx: Ctx) -> BuildEnv | NotYet:
    prepared = PrepareResult.model_validate(ctx.args["prepared"])
    if prepared.status != "succeeded" or prepared.source is None:
        raise ArmFailure("PrepareFailed", "create_build_env needs a successful prepare result")
    source = prepared.source
    names = ctx.names
    rg = names.resource_group
    sub = ctx.build.run.subscription_id
    if "security" not in ctx.state:  # decided before anything exists: a conflict costs nothing
        ctx.state["security"] = security_type(ctx, source)
    ensure_staging(ctx)
    profile = ctx.template.properties.vm_profile or ImageTemplateVmProfile()
    subnet_id = (profile.vnet_config.subnet_id if profile.vnet_config else None) or ""
    network = ctx.arm.network
    tags = run_tags(ctx)
    if not subnet_id:
        nsg = ensure(
            ctx,
            f"network security group {names.nsg}",
            lambda: network.network_security_groups.get(rg, names.nsg),
            lambda body, p: network.network_security_groups.begin_create_or_update(
                rg, names.nsg, body, polling=p
            ),
            # No inbound rules: Run Command needs no inbound port; Azure's defaults deny inbound.
            lambda: {"location": ctx.location, "tags": tags, "properties": {"securityRules": []}},
        )
        if isinstance(nsg, NotYet):
            return nsg
        vnet = ensure(
            ctx,
            f"virtual network {names.vnet}",
            lambda: network.virtual_networks.get(rg, names.vnet),
            lambda body, p: network.virtual_networks.begin_create_or_update(rg, names.vnet, body, polling=p),
            lambda: {
                "location": ctx.location,
                "tags": tags,
                "properties": {
                    "addressSpace": {"addressPrefixes": ["10.0.0.0/24"]},
                    "subnets": [
                        {
                            "name": "build",
                            "properties": {
                                "addressPrefix": "10.0.0.0/24",
                                "networkSecurityGroup": {"id": nsg["id"]},
                                # outbound for script downloads and package mirrors, no public IP
                                "defaultOutboundAccess": True,
                            },
                        }
                    ],
                },
            },
        )
        if isinstance(vnet, NotYet):
            return vnet
        subnet_id = (
            f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network"
            f"/virtualNetworks/{names.vnet}/subnets/build"
        )
    nic = ensure(
        ctx,
        f"network interface {names.nic}",
        lambda: network.network_interfaces.get(rg, names.nic),
        lambda body, p: network.network_interfaces.begin_create_or_update(rg, names.nic, body, polling=p),
        lambda: {
            "location": ctx.location,
            "tags": tags,
            "properties": {
                "ipConfigurations": [
                    {
                        "name": "ipconfig1",
                        "properties": {
                            "subnet": {"id": subnet_id},
                            "privateIPAllocationMethod": "Dynamic",
                        },
                    }
                ]
            },
        },
    )
    if isinstance(nic, NotYet):
        return nic
    compute = ctx.arm.compute
    vm = ensure(
        ctx,
        f"build VM {names.vm}",
        lambda: compute.virtual_machines.get(rg, names.vm),
        lambda body, p: compute.virtual_machines.begin_create_or_update(rg, names.vm, body, polling=p),
        lambda: vm_body(ctx, source, nic["id"], tags),
    )
    if isinstance(vm, NotYet):
        return vm
    return BuildHandle(
        subscription=sub,
        resource_group=rg,
        vm=names.vm,
        vm_id=str(vm.get("id") or ""),
        os_disk=names.os_disk,
        os_type=str(source.details.get("os_type", "Linux")),
        location=ctx.location,
        hyper_v_generation=source.hyper_v_generation,
        security_type=ctx.state["security"],
        source=source,
        artifacts={a.uri: a.sha256 for a in prepared.artifacts},
        identities=list(profile.user_assigned_identities or []),
    ).as_env()


def gallery_image(ctx: Ctx, parsed: ArmId, where: str) -> dict[str, Any] | None:
    arm = ctx.settings.clients(parsed.subscription, ctx.build)
    images = arm.compute.gallery_images
    return arm.get(
        f"read gallery image of {where}",
        lambda: images.get(parsed.resource_group, parsed.name("galleries"), parsed.name("images")),
    )


def security_type(ctx: Ctx, source: SourceInfo) -> str:
    """The build VM's security type, from the source and every target (ARM's rules, not the source's
    alone): a TrustedLaunch gallery definition takes only a Trusted Launch source; a Standard one, a
    TrustedLaunchSupported one (which refuses a Trusted Launch VM as source) and a managed image take
    only a Standard one; a TrustedLaunch gallery source boots only as Trusted Launch."""
    trusted: list[str] = []
    standard: list[str] = []
    if source.details.get("security_type") == "TrustedLaunch":
        trusted.append("properties.source (a TrustedLaunch gallery image)")
    for index, target in enumerate(ctx.template.properties.distribute):
        where = f"properties.distribute[{index}]"
        if isinstance(target, ManagedImageDistributor):
            standard.append(f"{where} (a managed image)")
        elif isinstance(target, SharedImageDistributor):
            parsed = ArmId.parse(target.gallery_image_id, f"{where}.galleryImageId")
            definition = gallery_image(ctx, parsed, where)
            features = {
                str(f.get("name")): str(f.get("value"))
                for f in ((definition or {}).get("properties") or {}).get("features") or []
            }
            kind = features.get("SecurityType", "Standard")
            if kind == "TrustedLaunch":
                trusted.append(f"{where} (a TrustedLaunch image definition)")
            elif definition is not None:
                standard.append(f"{where} (a {kind} image definition)")
    if trusted and standard:
        raise ArmFailure(
            "SecurityTypeConflict",
            f"{', '.join(trusted)} needs a Trusted Launch build VM but {', '.join(standard)} needs a "
            "Standard one; build them from two templates, or make the image definitions agree",
        )
    if trusted and source.hyper_v_generation != "V2":
        raise ArmFailure(
            "TrustedLaunchNeedsGen2",
            f"{trusted[0]} needs Trusted Launch, which needs a Gen2 (hyperVGeneration V2) source",
        )
    return "TrustedLaunch" if trusted else "Standard"


def vm_body(ctx: Ctx, source: SourceInfo, nic_id: str, tags: dict[str, str]) -> dict[str, Any]:
    import secrets

    profile = ctx.template.properties.vm_profile or ImageTemplateVmProfile()
    generation = source.hyper_v_generation
    os_type = str(source.details.get("os_type", "Linux"))
    os_disk: dict[str, Any] = {
        "name": ctx.names.os_disk,
        "createOption": "FromImage",
        "caching": "ReadWrite",
        "managedDisk": {"storageAccountType": "StandardSSD_LRS"},
        "deleteOption": "Delete",
    }
    if (profile.os_disk_size_gb or 0) > 0:
        os_disk["diskSizeGB"] = profile.os_disk_size_gb
    data_disks = [
        {
            "lun": lun,
            "name": ctx.names.data_disk(lun),
            "createOption": "Empty",
            "diskSizeGB": disk.size_gb or 0,
            "managedDisk": {"storageAccountType": "StandardSSD_LRS"},
            "deleteOption": "Delete",
        }
        for lun, disk in enumerate(ctx.template.properties.additional_data_disks or [])
    ]
    # Nobody signs in (no inbound port, Run Command only). Linux gets a throwaway SSH key whose private
    # half is never kept; Windows needs a password, made here, never stored or logged. Deprovisioning
    # removes the account either way.
    os_profile: dict[str, Any] = {"computerName": ctx.names.computer, "adminUsername": ADMIN_USER}
    if os_type == "Linux":
        os_profile["linuxConfiguration"] = {
            "disablePasswordAuthentication": True,
            "provisionVMAgent": True,
            "ssh": {
                "publicKeys": [
                    {"path": f"/home/{ADMIN_USER}/.ssh/authorized_keys", "keyData": _throwaway_ssh_key()}
                ]
            },
        }
    else:
        os_profile["adminPassword"] = secrets.token_urlsafe(24) + "aA1!"
        os_profile["windowsConfiguration"] = {"provisionVMAgent": True, "enableAutomaticUpdates": False}
    body: dict[str, Any] = {
        "location": ctx.location,
        "tags": tags,
        "properties": {
            "hardwareProfile": {"vmSize": profile.vm_size or DEFAULT_VM_SIZE[generation]},
            "storageProfile": {
                "imageReference": dict(source.details.get("image_reference") or {}),
                "osDisk": os_disk,
                "dataDisks": data_disks,
            },
            "osProfile": os_profile,
            "networkProfile": {
                "networkInterfaces": [
                    {"id": nic_id, "properties": {"primary": True, "deleteOption": "Delete"}}
                ]
            },
            "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
        },
    }
    if ctx.state.get("security") == "TrustedLaunch":
        body["properties"]["securityProfile"] = {
            "securityType": "TrustedLaunch",
            "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True},
        }
    else:
        # Explicit: newer API versions default Gen2 VMs to Trusted Launch, which cannot be captured
        # into a managed image.
        body["properties"]["securityProfile"] = {"securityType": "Standard"}
    plan = source.details.get("plan")
    if plan:
        body["plan"] = plan
    identities = list(profile.user_assigned_identities or [])
    if identities:
        body["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {i: {} for i in identities}}
    return body


@cache
def _throwaway_ssh_key() -> str:
    """An OpenSSH RSA public key whose private key is dropped at once (Azure requires some credential).
    One per worker process: with no private half anywhere, sharing it between build VMs grants nothing."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode("ascii") + " imagebuilder-throwaway"
