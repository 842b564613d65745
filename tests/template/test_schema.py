"""What the schema accepts and how it normalizes: older api-versions, deprecated fields, read-only fields,
PATCH bodies, triggers and the input fingerprint."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from imagebuilder.template import (
    SUPPORTED_API_VERSIONS,
    ImageTemplate,
    PlatformImageSource,
    SharedImageDistributor,
    SharedImageVersionSource,
    TemplateError,
    apply_update,
    input_fingerprint,
    parse_template,
    parse_template_update,
    parse_trigger,
    validate_resource_name,
)
from tests.template.conftest import DELETE, FULL_TEMPLATE, GALLERY_IMAGE, IDENTITY, SHA, SUB, mutate

MINIMAL_2019: dict[str, Any] = {
    "location": "westus2",
    "properties": {
        "source": {
            "type": "PlatformImage",
            "publisher": "Canonical",
            "offer": "UbuntuServer",
            "sku": "18.04-LTS",
            "version": "18.04.201903060",
        },
        "customize": [
            {"type": "Shell", "name": "RunScript", "scriptUri": "https://example.com/customizeScript.sh"}
        ],
        "distribute": [
            {
                "type": "SharedImage",
                "galleryImageId": GALLERY_IMAGE,
                "runOutputName": "aibLinuxSIG",
                "artifactTags": {"source": "azVmImageBuilder"},
                "replicationRegions": ["westus2", "eastus"],
                "storageAccountType": "Standard_ZRS",
            }
        ],
        "vmProfile": {
            "vmSize": "Standard_D1_v2",
            "vnetConfig": {"name": "vnet", "subnetName": "build", "resourceGroupName": "net"},
        },
    },
}


def test_supported_api_versions() -> None:
    assert SUPPORTED_API_VERSIONS == (
        "2019-05-01-preview",
        "2020-02-14",
        "2021-10-01",
        "2022-02-14",
        "2022-07-01",
        "2023-07-01",
        "2024-02-01",
        "2025-10-01",
    )


@pytest.mark.parametrize("api_version", SUPPORTED_API_VERSIONS)
def test_full_template_parses_on_every_api_version(api_version: str) -> None:
    template = parse_template(FULL_TEMPLATE, api_version=api_version)
    assert template.to_arm() == FULL_TEMPLATE


def test_2019_preview_template_without_identity_and_legacy_fields() -> None:
    template = parse_template(MINIMAL_2019, api_version="2019-05-01-preview")
    assert template.identity is None
    assert template.to_arm() == MINIMAL_2019  # kept as given
    dist = template.properties.distribute[0]
    assert isinstance(dist, SharedImageDistributor)
    regions = dist.effective_target_regions(template.location)
    assert [(r.name, r.replica_count, r.storage_account_type) for r in regions] == [
        ("westus2", 1, "Standard_ZRS"),
        ("eastus", 1, "Standard_ZRS"),
    ]
    vnet = template.properties.vm_profile.vnet_config  # type: ignore[union-attr]
    assert vnet is not None
    assert vnet.effective_subnet_id("sub1") == (
        "/subscriptions/sub1/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/build"
    )
    # the same body needs an identity and subnetId from 2020-02-14 on
    with pytest.raises(TemplateError) as info:
        parse_template(MINIMAL_2019, api_version="2020-02-14")
    assert info.value.target == "properties.vmProfile.vnetConfig.name"
    with pytest.raises(TemplateError) as info:
        parse_template(mutate(MINIMAL_2019, "properties.vmProfile.vnetConfig", {}), api_version="2020-02-14")
    assert (info.value.code, info.value.target) == ("MissingRequiredProperty", "identity")


def test_effective_target_regions_defaults_to_template_location() -> None:
    body = mutate(FULL_TEMPLATE, "properties.distribute[1].targetRegions", DELETE)
    dist = parse_template(body).properties.distribute[1]
    assert isinstance(dist, SharedImageDistributor)
    assert [(r.name, r.replica_count) for r in dist.effective_target_regions("westus2")] == [("westus2", 1)]
    dist = parse_template(FULL_TEMPLATE).properties.distribute[1]
    assert isinstance(dist, SharedImageDistributor)
    assert [
        (r.name, r.replica_count, r.storage_account_type) for r in dist.effective_target_regions("x")
    ] == [
        ("westus2", 2, "Standard_ZRS"),
        ("eastus", None, None),
    ]


def test_gallery_image_id_with_or_without_version() -> None:
    body = mutate(FULL_TEMPLATE, "properties.distribute[1].versioning", DELETE)
    body = mutate(body, "properties.distribute[1].galleryImageId", GALLERY_IMAGE + "/versions/1.2.3")
    dist = parse_template(body).properties.distribute[1]
    assert isinstance(dist, SharedImageDistributor)
    assert dist.pinned_version == "1.2.3"
    assert dist.gallery_image_definition_id == GALLERY_IMAGE
    dist = parse_template(FULL_TEMPLATE).properties.distribute[1]
    assert isinstance(dist, SharedImageDistributor)
    assert dist.pinned_version is None and dist.gallery_image_definition_id == GALLERY_IMAGE


def test_read_only_fields_are_ignored() -> None:
    body = copy.deepcopy(FULL_TEMPLATE)
    body.update(
        id="/x",
        name="t",
        type="Microsoft.VirtualMachineImages/imageTemplates",
        systemData={"createdBy": "me"},
    )
    body["identity"]["userAssignedIdentities"][IDENTITY] = {"principalId": "p", "clientId": "c"}
    body["properties"].update(
        provisioningState="Succeeded",
        provisioningError={"provisioningErrorCode": "Other", "message": "x"},
        lastRunStatus={"runState": "Running"},
        exactStagingResourceGroup="/subscriptions/x/resourceGroups/IT_x",
    )
    body["properties"]["source"]["exactVersion"] = "22.04.202401010"
    assert parse_template(body).to_arm() == FULL_TEMPLATE


def test_read_only_fields_are_ignored_by_the_models_too() -> None:
    body = {**FULL_TEMPLATE, "id": "/x", "name": "t", "type": "Microsoft.VirtualMachineImages/imageTemplates"}
    body = mutate(body, "properties.lastRunStatus", {"runState": "Failed"})
    body["identity"] = {
        "type": "UserAssigned",
        "userAssignedIdentities": {IDENTITY: {"clientId": "c", "principalId": "p"}},
    }
    assert ImageTemplate.model_validate(body).to_arm() == FULL_TEMPLATE


def test_member_names_match_case_insensitively() -> None:
    body = mutate(
        FULL_TEMPLATE,
        "properties.source",
        {"type": "SharedImageVersion", "imageVersionID": GALLERY_IMAGE + "/versions/latest"},
    )
    source = parse_template(body).properties.source
    assert isinstance(source, SharedImageVersionSource)
    assert source.is_latest and source.version == "latest"
    assert parse_template(body).to_arm()["properties"]["source"] == {
        "type": "SharedImageVersion",
        "imageVersionId": GALLERY_IMAGE + "/versions/latest",
    }


def test_windows_steps_with_a_linux_source_are_left_to_the_provider() -> None:
    template = parse_template(FULL_TEMPLATE)
    assert [c.type for c in template.properties.customizers] == [
        "Shell",
        "Shell",
        "File",
        "PowerShell",
        "WindowsRestart",
        "WindowsUpdate",
    ]
    assert [v.type for v in template.properties.validators] == ["Shell", "File", "PowerShell"]


@pytest.mark.parametrize(("given", "effective"), [(None, 240), (0, 240), (6, 6), (90, 90), (960, 960)])
def test_effective_build_timeout(given: int | None, effective: int) -> None:
    body = mutate(FULL_TEMPLATE, "properties.buildTimeoutInMinutes", DELETE if given is None else given)
    assert parse_template(body).properties.effective_build_timeout_minutes == effective


def test_platform_image_latest_and_windows_destination() -> None:
    body = mutate(FULL_TEMPLATE, "properties.source.version", "Latest")
    body = mutate(body, "properties.customize[2].destination", "C:\\buildArtifacts\\index.html")
    template = parse_template(body)
    source = template.properties.source
    assert isinstance(source, PlatformImageSource) and source.is_latest
    assert source.urn == "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:Latest"


def test_identity_none_is_accepted() -> None:
    body = mutate(FULL_TEMPLATE, "identity", {"type": "None"})
    assert parse_template(body).to_arm()["identity"] == {"type": "None"}


def test_models_are_frozen() -> None:
    template = parse_template(FULL_TEMPLATE)
    with pytest.raises(Exception, match="frozen"):
        template.location = "eastus"  # type: ignore[misc]


def test_model_validate_round_trip_across_the_durable_boundary() -> None:
    template = parse_template(FULL_TEMPLATE)
    assert ImageTemplate.model_validate(template.model_dump(mode="json", by_alias=True)) == template


@pytest.mark.parametrize("name", ["a", "my-template_1.0", "x" * 64])
def test_good_names(name: str) -> None:
    assert validate_resource_name(name) == name


# ------------------------------------------------------------------------------------------------ PATCH


def test_patch_tags_identity_vmprofile_distribute() -> None:
    template = parse_template(FULL_TEMPLATE)
    update = parse_template_update(
        {
            "tags": {"new": "tag"},
            "identity": {"type": "None"},
            "properties": {
                "vmProfile": {"vmSize": "Standard_D4s_v3"},
                "distribute": [{"type": "VHD", "runOutputName": "only-vhd"}],
            },
        },
        api_version="2025-10-01",
    )
    after = apply_update(template, update).to_arm()
    expected = copy.deepcopy(FULL_TEMPLATE)
    expected["tags"] = {"new": "tag"}
    expected["identity"] = {"type": "None"}
    expected["properties"]["vmProfile"] = {"vmSize": "Standard_D4s_v3"}
    expected["properties"]["distribute"] = [{"type": "VHD", "runOutputName": "only-vhd"}]
    assert after == expected
    assert template.to_arm() == FULL_TEMPLATE  # the original is untouched


def test_patch_only_tags_keeps_everything_else() -> None:
    template = parse_template(FULL_TEMPLATE)
    after = apply_update(template, parse_template_update({"tags": {}}, api_version="2025-10-01"))
    assert after.to_arm() == {**FULL_TEMPLATE, "tags": {}}


@pytest.mark.parametrize(
    ("body", "target"),
    [
        ({"location": "eastus"}, "location"),
        ({"properties": {"customize": []}}, "properties.customize"),
        ({"properties": {"source": FULL_TEMPLATE["properties"]["source"]}}, "properties.source"),
        ({"properties": {"buildTimeoutInMinutes": 60}}, "properties.buildTimeoutInMinutes"),
    ],
)
def test_patch_refuses_immutable_properties(body: dict[str, Any], target: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_template_update(body, api_version="2025-10-01")
    assert (info.value.code, info.value.target) == ("PropertyChangeNotAllowed", target)


def test_patch_validates_what_it_sets() -> None:
    with pytest.raises(TemplateError) as info:
        parse_template_update(
            {"properties": {"distribute": [{"type": "Blob", "runOutputName": "x"}]}}, api_version="2025-10-01"
        )
    assert (info.value.code, info.value.target) == ("BadDistributeType", "properties.distribute[0].type")
    with pytest.raises(TemplateError) as info:
        parse_template_update({"unknown": 1}, api_version="2025-10-01", strict_members=True)
    assert (info.value.code, info.value.target) == ("InvalidRequestContent", "unknown")
    # rules spanning the whole template are checked when the update is applied
    update = parse_template_update(
        {
            "properties": {
                "distribute": [{"type": "VHD", "runOutputName": "a"}, {"type": "VHD", "runOutputName": "A"}]
            }
        },
        api_version="2025-10-01",
    )
    with pytest.raises(TemplateError) as info:
        apply_update(parse_template(FULL_TEMPLATE), update)
    assert (info.value.code, info.value.target) == (
        "InvalidParameter",
        "properties.distribute[1].runOutputName",
    )


# --------------------------------------------------------------------------------------------- triggers


def test_schedule_trigger() -> None:
    body = {
        "properties": {
            "kind": "Schedule",
            "schedule": "0 30 2 * * Sun",
            "timeZone": "Europe/Paris",
            "onlyWhenInputsChanged": True,
        }
    }
    trigger = parse_trigger(body, api_version="2025-10-01")
    assert trigger.to_arm() == body


@pytest.mark.parametrize(
    ("body", "code", "target"),
    [
        ({"properties": {"kind": "Cron"}}, "InvalidParameter", "properties.kind"),
        ({"properties": {}}, "InvalidParameter", "properties.kind"),
        ({}, "MissingRequiredProperty", "properties"),
        ({"properties": {"kind": "Schedule"}}, "MissingRequiredProperty", "properties.schedule"),
        (
            {"properties": {"kind": "Schedule", "schedule": "0 3 * * *"}},
            "InvalidParameter",
            "properties.schedule",
        ),
        (
            {"properties": {"kind": "Schedule", "schedule": "0 0 3 * * * *"}},
            "InvalidParameter",
            "properties.schedule",
        ),
        (
            {"properties": {"kind": "Schedule", "schedule": "0 0 3 * * *", "timeZone": "Not a zone!"}},
            "InvalidParameter",
            "properties.timeZone",
        ),
        (
            {"properties": {"kind": "Schedule", "schedule": "0 0 3 * * *", "onlyWhenInputsChanged": "yes"}},
            "InvalidRequestContent",
            "properties.onlyWhenInputsChanged",
        ),
        (
            {"properties": {"kind": "SourceImage", "schedule": "0 0 3 * * *"}},
            "InvalidRequestContent",
            "properties.schedule",
        ),
    ],
)
def test_bad_triggers(body: dict[str, Any], code: str, target: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_trigger(body, api_version="2025-10-01")
    assert (info.value.code, info.value.target) == (code, target)


# ------------------------------------------------------------------------------------------ fingerprint


def test_input_fingerprint_is_stable_and_sensitive() -> None:
    template = parse_template(FULL_TEMPLATE)
    artifacts = {"https://example.com/setup.sh": SHA, "https://example.com/app.conf": "b" * 64}
    base = input_fingerprint(template, "22.04.202401010", artifacts)
    assert len(base) == 64
    # stable: same inputs (dict order, hash case, a re-parse) give the same hash
    assert (
        input_fingerprint(
            parse_template(template.to_arm()), "22.04.202401010", dict(reversed(artifacts.items()))
        )
        == base
    )
    assert (
        input_fingerprint(template, "22.04.202401010", {k: v.upper() for k, v in artifacts.items()}) == base
    )
    # not part of the image: tags, identity, VM size, timeout
    cosmetic = mutate(FULL_TEMPLATE, "tags", {"other": "x"})
    cosmetic = mutate(cosmetic, "properties.vmProfile.vmSize", "Standard_D8s_v3")
    cosmetic = mutate(cosmetic, "properties.buildTimeoutInMinutes", 120)
    assert input_fingerprint(parse_template(cosmetic), "22.04.202401010", artifacts) == base
    # part of the image: the source version, an artifact, a customizer, the disk size
    assert input_fingerprint(template, "22.04.202402020", artifacts) != base
    assert (
        input_fingerprint(
            template, "22.04.202401010", {**artifacts, "https://example.com/app.conf": "c" * 64}
        )
        != base
    )
    changed = parse_template(mutate(FULL_TEMPLATE, "properties.customize[1].inline", ["echo bye"]))
    assert input_fingerprint(changed, "22.04.202401010", artifacts) != base
    bigger = parse_template(mutate(FULL_TEMPLATE, "properties.vmProfile.osDiskSizeGB", 128))
    assert input_fingerprint(bigger, "22.04.202401010", artifacts) != base


def test_sub_constant() -> None:
    assert SUB.startswith("/subscriptions/")


def test_artifacts_lists_every_fetched_file_with_its_path() -> None:
    body = mutate(
        FULL_TEMPLATE,
        "properties.optimize.workload",
        {"state": "Enabled", "scriptUri": "https://example.com/w.sh"},
    )
    refs = parse_template(body).properties.artifacts()
    assert [(r.target, r.uri, r.sha256) for r in refs] == [
        ("properties.customize[0].scriptUri", "https://example.com/setup.sh", SHA),
        ("properties.customize[2].sourceUri", "https://example.com/app.conf", None),
        ("properties.validate.inVMValidations[1].sourceUri", "https://example.com/check.sh", None),
        ("properties.validate.inVMValidations[2].scriptUri", "https://example.com/check.ps1", None),
        ("properties.optimize.workload.scriptUri", "https://example.com/w.sh", None),
    ]


@pytest.mark.parametrize(
    "schedule",
    [
        "0 0 3 * * *",
        "0 */5 * * * *",
        "0 0 9-17 * * Mon-Fri",
        "0 30 2 1,15 Jan,Jul *",
        "*/10 * * * * *",
        "0 0 0 31 12 sun",
        "5-55/10 0 0 * * 0,6",
    ],
)
def test_good_schedules(schedule: str) -> None:
    body = {"properties": {"kind": "Schedule", "schedule": schedule}}
    assert parse_trigger(body, api_version="2025-10-01").to_arm() == body


@pytest.mark.parametrize(
    "schedule",
    [
        "60 * * * * *",
        "0 0 24 * * *",
        "0 0 0 0 * *",
        "0 0 0 * 13 *",
        "0 0 0 * * 7",
        "0 0 0 * * Funday",
        "0 */0 * * * *",
        "0 5-1 * * * *",
        "0 1,,2 * * * *",
        "",
        "@daily",
    ],
)
def test_bad_schedules(schedule: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_trigger({"properties": {"kind": "Schedule", "schedule": schedule}}, api_version="2025-10-01")
    assert (info.value.code, info.value.target) == ("InvalidParameter", "properties.schedule")


@pytest.mark.parametrize("version", ["1.0", "1.0.0.0", "a.b.c", "1.0.-1", "1.0.2147483648", "latest"])
def test_pinned_gallery_version_must_be_major_minor_patch(version: str) -> None:
    body = mutate(FULL_TEMPLATE, "properties.distribute[1].versioning", DELETE)
    body = mutate(body, "properties.distribute[1].galleryImageId", f"{GALLERY_IMAGE}/versions/{version}")
    with pytest.raises(TemplateError) as info:
        parse_template(body)
    assert (info.value.code, info.value.target) == (
        "BadSharedImageDistribute",
        "properties.distribute[1].galleryImageId",
    )


@pytest.mark.parametrize(
    ("version", "ok"), [("latest", True), ("LATEST", True), ("2.1.0", True), ("2.1", False), ("v2", False)]
)
def test_source_gallery_version(version: str, ok: bool) -> None:
    body = mutate(
        FULL_TEMPLATE,
        "properties.source",
        {"type": "SharedImageVersion", "imageVersionId": f"{GALLERY_IMAGE}/versions/{version}"},
    )
    if ok:
        parse_template(body)
    else:
        with pytest.raises(TemplateError) as info:
            parse_template(body)
        assert (info.value.code, info.value.target) == (
            "BadSharedImageVersionSource",
            "properties.source.imageVersionId",
        )


def test_patch_follows_the_api_version_too() -> None:
    legacy = {
        "properties": {
            "vmProfile": {"vnetConfig": {"name": "v", "subnetName": "s", "resourceGroupName": "r"}}
        }
    }
    parse_template_update(legacy, api_version="2019-05-01-preview")
    with pytest.raises(TemplateError) as info:
        parse_template_update(legacy, api_version="2025-10-01")
    assert (info.value.code, info.value.target) == (
        "InvalidParameter",
        "properties.vmProfile.vnetConfig.name",
    )
