"""Table-driven bad templates: one case per rule, asserting AIB/ARM error code and JSON path target."""

from __future__ import annotations

from typing import Any

import pytest

from imagebuilder.template import IgnoredMember, TemplateError, parse_template
from tests.template.conftest import (
    ACI_SUBNET,
    DELETE,
    FULL_TEMPLATE,
    GALLERY_IMAGE,
    IDENTITY,
    SHA,
    SUBNET,
    mutate,
)

C0 = "properties.customize[0]"
V0 = "properties.validate.inVMValidations[0]"
D0 = "properties.distribute[0]"
D1 = "properties.distribute[1]"
VNET = "properties.vmProfile.vnetConfig"

# (case id, [(path, value), ...], api-version, expected code, expected target)
BAD: list[tuple[str, list[tuple[str, Any]], str, str, str | None]] = [
    # customizers
    ("customizer-unknown-type", [(f"{C0}.type", "Bash")], "2025-10-01", "BadCustomizerType", f"{C0}.type"),
    ("customizer-missing-type", [(f"{C0}.type", DELETE)], "2025-10-01", "BadCustomizerType", f"{C0}.type"),
    (
        "customizer-type-wrong-case",
        [(f"{C0}.type", "shell")],
        "2025-10-01",
        "BadCustomizerType",
        f"{C0}.type",
    ),
    ("customizer-not-object", [(C0, "echo hi")], "2025-10-01", "InvalidRequestContent", C0),
    ("shell-no-script", [(f"{C0}.scriptUri", DELETE)], "2025-10-01", "NoCustomizerScript", f"{C0}.scriptUri"),
    (
        "shell-empty-inline",
        [(C0, {"type": "Shell", "inline": []})],
        "2025-10-01",
        "NoCustomizerScript",
        f"{C0}.scriptUri",
    ),
    ("shell-both", [(f"{C0}.inline", ["ls"])], "2025-10-01", "InvalidParameter", f"{C0}.inline"),
    (
        "shell-uri-not-http",
        [(f"{C0}.scriptUri", "file:///etc/passwd")],
        "2025-10-01",
        "InvalidParameter",
        f"{C0}.scriptUri",
    ),
    (
        "shell-uri-broken",
        [(f"{C0}.scriptUri", "http://[::1/x.sh")],
        "2025-10-01",
        "InvalidParameter",
        f"{C0}.scriptUri",
    ),
    (
        "shell-uri-no-host",
        [(f"{C0}.scriptUri", "https://:443/x.sh")],
        "2025-10-01",
        "InvalidParameter",
        f"{C0}.scriptUri",
    ),
    (
        "shell-inline-not-list",
        [(C0, {"type": "Shell", "inline": "echo hi"})],
        "2025-10-01",
        "InvalidRequestContent",
        f"{C0}.inline",
    ),
    (
        "sha256-short",
        [(f"{C0}.sha256Checksum", "abc")],
        "2025-10-01",
        "InvalidParameter",
        f"{C0}.sha256Checksum",
    ),
    (
        "sha256-not-hex",
        [(f"{C0}.sha256Checksum", "g" * 64)],
        "2025-10-01",
        "InvalidParameter",
        f"{C0}.sha256Checksum",
    ),
    (
        "powershell-no-script",
        [(C0, {"type": "PowerShell", "runElevated": True})],
        "2025-10-01",
        "NoCustomizerScript",
        f"{C0}.scriptUri",
    ),
    (
        "powershell-both",
        [(C0, {"type": "PowerShell", "inline": ["a"], "scriptUri": "https://e.com/a.ps1"})],
        "2025-10-01",
        "InvalidParameter",
        f"{C0}.inline",
    ),
    (
        "powershell-runAsSystem-without-runElevated",
        [(C0, {"type": "PowerShell", "inline": ["a"], "runAsSystem": True})],
        "2025-10-01",
        "InvalidParameter",
        f"{C0}.runAsSystem",
    ),
    (
        "powershell-runAsSystem-runElevated-false",
        [(C0, {"type": "PowerShell", "inline": ["a"], "runAsSystem": True, "runElevated": False})],
        "2025-10-01",
        "InvalidParameter",
        f"{C0}.runAsSystem",
    ),
    (
        "powershell-exit-code-not-int",
        [("properties.customize[3].validExitCodes", ["0"])],
        "2025-10-01",
        "InvalidRequestContent",
        "properties.customize[3].validExitCodes[0]",
    ),
    (
        "file-no-source",
        [("properties.customize[2].sourceUri", DELETE)],
        "2025-10-01",
        "NoCustomizerScript",
        "properties.customize[2].sourceUri",
    ),
    (
        "file-no-destination",
        [("properties.customize[2].destination", DELETE)],
        "2025-10-01",
        "MissingRequiredProperty",
        "properties.customize[2].destination",
    ),
    (
        "file-relative-destination",
        [("properties.customize[2].destination", "tmp/app.conf")],
        "2025-10-01",
        "InvalidParameter",
        "properties.customize[2].destination",
    ),
    (
        "file-windows-relative",
        [("properties.customize[2].destination", "C:app.conf")],
        "2025-10-01",
        "InvalidParameter",
        "properties.customize[2].destination",
    ),
    (
        "file-dotdot-destination",
        [("properties.customize[2].destination", "/tmp/../etc/shadow")],
        "2025-10-01",
        "InvalidParameter",
        "properties.customize[2].destination",
    ),
    (
        "restart-timeout",
        [("properties.customize[4].restartTimeout", "five minutes")],
        "2025-10-01",
        "InvalidParameter",
        "properties.customize[4].restartTimeout",
    ),
    (
        "update-limit-negative",
        [("properties.customize[5].updateLimit", -1)],
        "2025-10-01",
        "InvalidParameter",
        "properties.customize[5].updateLimit",
    ),
    # validators
    (
        "validator-unknown-type",
        [(f"{V0}.type", "WindowsRestart")],
        "2025-10-01",
        "BadValidatorType",
        f"{V0}.type",
    ),
    ("validator-no-script", [(f"{V0}.inline", DELETE)], "2025-10-01", "NoValidatorScript", f"{V0}.scriptUri"),
    (
        "validator-both",
        [(f"{V0}.scriptUri", "https://e.com/v.sh")],
        "2025-10-01",
        "InvalidParameter",
        f"{V0}.inline",
    ),
    (
        "validator-runAsSystem",
        [
            ("properties.validate.inVMValidations[2].runElevated", DELETE),
            ("properties.validate.inVMValidations[2].runAsSystem", True),
        ],
        "2025-10-01",
        "InvalidParameter",
        "properties.validate.inVMValidations[2].runAsSystem",
    ),
    (
        "file-validator-no-source",
        [("properties.validate.inVMValidations[1].sourceUri", DELETE)],
        "2025-10-01",
        "NoValidatorScript",
        "properties.validate.inVMValidations[1].sourceUri",
    ),
    (
        "file-validator-relative",
        [("properties.validate.inVMValidations[1].destination", "check.sh")],
        "2025-10-01",
        "InvalidParameter",
        "properties.validate.inVMValidations[1].destination",
    ),
    # sources
    (
        "source-missing",
        [("properties.source", DELETE)],
        "2025-10-01",
        "MissingRequiredProperty",
        "properties.source",
    ),
    (
        "source-unknown-type",
        [("properties.source.type", "Marketplace")],
        "2025-10-01",
        "BadSourceType",
        "properties.source.type",
    ),
    (
        "source-iso-retired",
        [("properties.source", {"type": "ISO", "sourceURI": "https://e.com/x.iso"})],
        "2019-05-01-preview",
        "BadSourceType",
        "properties.source.type",
    ),
    (
        "pir-missing-sku",
        [("properties.source.sku", DELETE)],
        "2025-10-01",
        "BadPIRSource",
        "properties.source.sku",
    ),
    (
        "pir-empty-publisher",
        [("properties.source.publisher", "")],
        "2025-10-01",
        "BadPIRSource",
        "properties.source.publisher",
    ),
    (
        "pir-bad-version",
        [("properties.source.version", "newest")],
        "2025-10-01",
        "BadPIRSource",
        "properties.source.version",
    ),
    (
        "pir-plan-incomplete",
        [("properties.source.planInfo", {"planName": "p", "planPublisher": "canonical"})],
        "2025-10-01",
        "BadPIRSource",
        "properties.source.planInfo.planProduct",
    ),
    (
        "managed-source-no-id",
        [("properties.source", {"type": "ManagedImage"})],
        "2025-10-01",
        "BadManagedImageSource",
        "properties.source.imageId",
    ),
    (
        "sig-source-not-a-version",
        [("properties.source", {"type": "SharedImageVersion", "imageVersionId": GALLERY_IMAGE})],
        "2025-10-01",
        "BadSharedImageVersionSource",
        "properties.source.imageVersionId",
    ),
    # distribute
    (
        "distribute-missing",
        [("properties.distribute", DELETE)],
        "2025-10-01",
        "MissingRequiredProperty",
        "properties.distribute",
    ),
    (
        "distribute-empty",
        [("properties.distribute", [])],
        "2025-10-01",
        "InvalidParameter",
        "properties.distribute",
    ),
    ("distribute-unknown-type", [(f"{D0}.type", "Blob")], "2025-10-01", "BadDistributeType", f"{D0}.type"),
    (
        "distribute-type-wrong-case",
        [(f"{D1}.type", "sharedImage")],
        "2025-10-01",
        "BadDistributeType",
        f"{D1}.type",
    ),
    (
        "runOutputName-missing",
        [(f"{D0}.runOutputName", DELETE)],
        "2025-10-01",
        "MissingRequiredProperty",
        f"{D0}.runOutputName",
    ),
    (
        "runOutputName-pattern",
        [(f"{D0}.runOutputName", "my output")],
        "2025-10-01",
        "InvalidParameter",
        f"{D0}.runOutputName",
    ),
    (
        "runOutputName-too-long",
        [(f"{D0}.runOutputName", "x" * 65)],
        "2025-10-01",
        "InvalidParameter",
        f"{D0}.runOutputName",
    ),
    (
        "runOutputName-duplicate",
        [(f"{D1}.runOutputName", "MANAGED")],
        "2025-10-01",
        "InvalidParameter",
        f"{D1}.runOutputName",
    ),
    (
        "managed-dist-no-location",
        [(f"{D0}.location", DELETE)],
        "2025-10-01",
        "MissingRequiredProperty",
        f"{D0}.location",
    ),
    (
        "sig-dist-no-gallery",
        [(f"{D1}.galleryImageId", DELETE)],
        "2025-10-01",
        "BadSharedImageDistribute",
        f"{D1}.galleryImageId",
    ),
    (
        "sig-dist-bad-gallery-id",
        [(f"{D1}.galleryImageId", "gallery/ubuntu")],
        "2025-10-01",
        "BadSharedImageDistribute",
        f"{D1}.galleryImageId",
    ),
    (
        "targetRegions-and-replicationRegions",
        [(f"{D1}.replicationRegions", ["centralus"])],
        "2025-10-01",
        "BadSharedImageDistribute",
        f"{D1}.replicationRegions",
    ),
    (
        "storageAccountType-without-replicationRegions",
        [(f"{D1}.storageAccountType", "Standard_LRS")],
        "2025-10-01",
        "BadSharedImageDistribute",
        f"{D1}.storageAccountType",
    ),
    (
        "target-region-twice",
        [(f"{D1}.targetRegions[1].name", "westus2")],
        "2025-10-01",
        "BadSharedImageDistribute",
        f"{D1}.targetRegions",
    ),
    (
        "replicaCount-zero",
        [(f"{D1}.targetRegions[0].replicaCount", 0)],
        "2025-10-01",
        "InvalidParameter",
        f"{D1}.targetRegions[0].replicaCount",
    ),
    (
        "target-storage-type",
        [(f"{D1}.targetRegions[0].storageAccountType", "Premium_ZRS")],
        "2025-10-01",
        "InvalidParameter",
        f"{D1}.targetRegions[0].storageAccountType",
    ),
    (
        "versioning-and-pinned-version",
        [(f"{D1}.galleryImageId", GALLERY_IMAGE + "/versions/1.0.0")],
        "2025-10-01",
        "BadSharedImageDistribute",
        f"{D1}.versioning",
    ),
    (
        "versioning-unknown-scheme",
        [(f"{D1}.versioning", {"scheme": "Newest"})],
        "2025-10-01",
        "InvalidParameter",
        f"{D1}.versioning.scheme",
    ),
    (
        "versioning-major-below-minus-one",
        [(f"{D1}.versioning.major", -2)],
        "2025-10-01",
        "InvalidParameter",
        f"{D1}.versioning.major",
    ),
    (
        "replicationMode",
        [(f"{D1}.replicationMode", "Deep")],
        "2025-10-01",
        "InvalidParameter",
        f"{D1}.replicationMode",
    ),
    (
        "vhd-uri-not-http",
        [("properties.distribute[2].uri", "c:/x.vhd")],
        "2025-10-01",
        "InvalidParameter",
        "properties.distribute[2].uri",
    ),
    # buildTimeoutInMinutes
    (
        "timeout-above-960",
        [("properties.buildTimeoutInMinutes", 961)],
        "2025-10-01",
        "InvalidParameter",
        "properties.buildTimeoutInMinutes",
    ),
    (
        "timeout-negative",
        [("properties.buildTimeoutInMinutes", -1)],
        "2025-10-01",
        "InvalidParameter",
        "properties.buildTimeoutInMinutes",
    ),
    (
        "timeout-below-6",
        [("properties.buildTimeoutInMinutes", 5)],
        "2025-10-01",
        "InvalidParameter",
        "properties.buildTimeoutInMinutes",
    ),
    (
        "timeout-string",
        [("properties.buildTimeoutInMinutes", "90")],
        "2025-10-01",
        "InvalidRequestContent",
        "properties.buildTimeoutInMinutes",
    ),
    # vnetConfig
    (
        "aci-without-subnet",
        [(VNET, {"containerInstanceSubnetId": ACI_SUBNET})],
        "2025-10-01",
        "InvalidParameter",
        f"{VNET}.containerInstanceSubnetId",
    ),
    (
        "proxy-with-aci",
        [
            (
                VNET,
                {
                    "subnetId": SUBNET,
                    "containerInstanceSubnetId": ACI_SUBNET,
                    "proxyVmSize": "Standard_A1_v2",
                },
            )
        ],
        "2025-10-01",
        "InvalidParameter",
        f"{VNET}.proxyVmSize",
    ),
    (
        "proxy-without-subnet",
        [(VNET, {"proxyVmSize": "Standard_A1_v2"})],
        "2025-10-01",
        "InvalidParameter",
        f"{VNET}.proxyVmSize",
    ),
    (
        "legacy-vnet-on-new-api",
        [(VNET, {"name": "vnet", "subnetName": "s", "resourceGroupName": "rg"})],
        "2020-02-14",
        "InvalidParameter",
        f"{VNET}.name",
    ),
    (
        "legacy-vnet-incomplete",
        [(VNET, {"name": "vnet"})],
        "2019-05-01-preview",
        "InvalidParameter",
        f"{VNET}.name",
    ),
    # vmProfile
    (
        "osDiskSizeGB-negative",
        [("properties.vmProfile.osDiskSizeGB", -1)],
        "2025-10-01",
        "InvalidParameter",
        "properties.vmProfile.osDiskSizeGB",
    ),
    (
        "vm-identity-not-msi",
        [("properties.vmProfile.userAssignedIdentities", ["my-identity"])],
        "2025-10-01",
        "InvalidParameter",
        "properties.vmProfile.userAssignedIdentities[0]",
    ),
    (
        "data-disk-negative",
        [("properties.additionalDataDisks[0].sizeGB", -5)],
        "2025-10-01",
        "InvalidParameter",
        "properties.additionalDataDisks[0].sizeGB",
    ),
    # identity
    ("identity-missing", [("identity", DELETE)], "2025-10-01", "MissingRequiredProperty", "identity"),
    ("identity-missing-2020", [("identity", DELETE)], "2020-02-14", "MissingRequiredProperty", "identity"),
    (
        "identity-two",
        [("identity.userAssignedIdentities", {IDENTITY: {}, IDENTITY + "2": {}})],
        "2025-10-01",
        "InvalidParameter",
        "identity.userAssignedIdentities",
    ),
    (
        "identity-none-listed",
        [("identity.userAssignedIdentities", {})],
        "2025-10-01",
        "InvalidParameter",
        "identity.userAssignedIdentities",
    ),
    (
        "identity-system-assigned",
        [("identity.type", "SystemAssigned")],
        "2025-10-01",
        "InvalidParameter",
        "identity.type",
    ),
    (
        "identity-None-with-ids",
        [("identity.type", "None")],
        "2025-10-01",
        "InvalidParameter",
        "identity.userAssignedIdentities",
    ),
    (
        "identity-key-not-msi",
        [("identity.userAssignedIdentities", {"aib": {}})],
        "2025-10-01",
        "InvalidParameter",
        "identity.userAssignedIdentities",
    ),
    # other properties
    ("location-missing", [("location", DELETE)], "2025-10-01", "LocationRequired", "location"),
    ("location-empty", [("location", " ")], "2025-10-01", "LocationRequired", "location"),
    (
        "staging-rg-not-an-id",
        [("properties.stagingResourceGroup", "aib-staging")],
        "2025-10-01",
        "BadStagingResourceGroup",
        "properties.stagingResourceGroup",
    ),
    (
        "onCustomizerError",
        [("properties.errorHandling.onCustomizerError", "ignore")],
        "2025-10-01",
        "InvalidParameter",
        "properties.errorHandling.onCustomizerError",
    ),
    (
        "autoRun-state",
        [("properties.autoRun.state", "On")],
        "2025-10-01",
        "InvalidParameter",
        "properties.autoRun.state",
    ),
    (
        "vmBoot-state",
        [("properties.optimize.vmBoot.state", "Yes")],
        "2025-10-01",
        "InvalidParameter",
        "properties.optimize.vmBoot.state",
    ),
    (
        "validate-flag-not-bool",
        [("properties.validate.sourceValidationOnly", "true")],
        "2025-10-01",
        "InvalidRequestContent",
        "properties.validate.sourceValidationOnly",
    ),
    ("tag-value-not-string", [("tags.team", 5)], "2025-10-01", "InvalidRequestContent", "tags.team"),
    (
        "tag-name-forbidden-char",
        [("tags", {"cost/center": "x"})],
        "2025-10-01",
        "InvalidParameter",
        "tags.cost/center",
    ),
    ("tag-value-too-long", [("tags", {"team": "v" * 257})], "2025-10-01", "InvalidParameter", "tags.team"),
    (
        "too-many-tags",
        [("tags", {f"t{i}": "v" for i in range(51)})],
        "2025-10-01",
        "InvalidParameter",
        "tags",
    ),
    (
        "artifact-tag-empty-name",
        [(f"{D0}.artifactTags", {"": "v"})],
        "2025-10-01",
        "InvalidParameter",
        f"{D0}.artifactTags",
    ),
    (
        "unknown-member",
        [("properties.customise", [])],
        "2025-10-01",
        "InvalidRequestContent",
        "properties.customise",
    ),
    (
        "unknown-nested-member",
        [(f"{C0}.scriptURL", "https://e.com/x")],
        "2025-10-01",
        "InvalidRequestContent",
        f"{C0}.scriptURL",
    ),
    (
        "member-twice-by-case",
        [(f"{C0}.ScriptUri", "https://e.com/x")],
        "2025-10-01",
        "InvalidRequestContent",
        f"{C0}.ScriptUri",
    ),
    (
        "customize-not-array",
        [("properties.customize", {"type": "Shell"})],
        "2025-10-01",
        "InvalidRequestContent",
        "properties.customize",
    ),
    ("properties-missing", [("properties", DELETE)], "2025-10-01", "MissingRequiredProperty", "properties"),
]


@pytest.mark.parametrize(("case", "changes", "api_version", "code", "target"), BAD, ids=[c[0] for c in BAD])
def test_bad_template(
    case: str, changes: list[tuple[str, Any]], api_version: str, code: str, target: str | None
) -> None:
    body = FULL_TEMPLATE
    for path, value in changes:
        body = mutate(body, path, value)
    with pytest.raises(TemplateError) as info:
        # unknown members are dropped with a warning by default (as AIB does); strict mode refuses them
        parse_template(body, api_version=api_version, strict_members=case.startswith("unknown-"))
    err = info.value
    assert (err.code, err.target) == (code, target), err.to_arm()
    assert err.details == []  # one rule broken: one error, not a pile
    arm = err.to_arm()["error"]
    assert arm["code"] == code and arm["target"] == target and arm["message"]


def test_every_rule_case_is_unique() -> None:
    assert len({c[0] for c in BAD}) == len(BAD)


def test_body_not_an_object() -> None:
    for body in ([], "x", None, 3):
        with pytest.raises(TemplateError) as info:
            parse_template(body)
        assert info.value.code == "InvalidRequestContent"
        assert info.value.target is None


def test_unsupported_api_version() -> None:
    with pytest.raises(TemplateError) as info:
        parse_template(FULL_TEMPLATE, api_version="2018-01-01")
    assert (info.value.code, info.value.target) == ("InvalidApiVersionParameter", "api-version")


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "tmpl/1", "ü"])
def test_bad_template_name(name: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_template(FULL_TEMPLATE, name=name)
    assert (info.value.code, info.value.target) == ("InvalidResourceName", "imageTemplateName")


def test_several_problems_are_all_reported() -> None:
    body = mutate(FULL_TEMPLATE, "properties.customize[0].type", "Bash")
    body = mutate(body, "properties.distribute[0].runOutputName", "bad name")
    body = mutate(body, "properties.buildTimeoutInMinutes", 10_000)
    with pytest.raises(TemplateError) as info:
        parse_template(body)
    err = info.value
    assert err.code == "InvalidTemplate"
    targets = {(d.code, d.target) for d in err.details}
    assert targets == {
        ("BadCustomizerType", "properties.customize[0].type"),
        ("InvalidParameter", "properties.distribute[0].runOutputName"),
        ("InvalidParameter", "properties.buildTimeoutInMinutes"),
    }
    arm = err.to_arm()["error"]
    assert len(arm["details"]) == 3 and all(d["details"] == [] for d in arm["details"])


def test_messages_say_what_to_do() -> None:
    with pytest.raises(TemplateError) as info:
        parse_template(mutate(FULL_TEMPLATE, "properties.customize[0].scriptUri", DELETE))
    assert "scriptUri" in info.value.message and "inline" in info.value.message
    with pytest.raises(TemplateError) as info:
        parse_template(mutate(FULL_TEMPLATE, "properties.customize[0].type", "Bash"))
    assert "Shell, PowerShell, WindowsRestart, WindowsUpdate, File" in info.value.message


def test_sha256_is_lowercased() -> None:
    template = parse_template(mutate(FULL_TEMPLATE, "properties.customize[0].sha256Checksum", SHA.upper()))
    assert template.to_arm()["properties"]["customize"][0]["sha256Checksum"] == SHA


def test_identity_fixture_is_one_identity() -> None:
    assert list(FULL_TEMPLATE["identity"]["userAssignedIdentities"]) == [IDENTITY]


def test_errors_echo_input_cut_short() -> None:
    huge = "x" * 100_000
    for path in (
        "properties.distribute[0].runOutputName",
        "properties.customize[2].destination",
        "properties.source.version",
    ):
        with pytest.raises(TemplateError) as info:
            parse_template(mutate(FULL_TEMPLATE, path, huge))
        assert len(info.value.message) < 400, path


def test_int32_bounds_and_huge_numbers() -> None:
    for path, value in (
        ("properties.vmProfile.osDiskSizeGB", 2**31),
        ("properties.customize[3].validExitCodes", [2**40]),
        ("properties.distribute[1].targetRegions[0].replicaCount", 10**30),
    ):
        with pytest.raises(TemplateError) as info:
            parse_template(mutate(FULL_TEMPLATE, path, value))
        assert info.value.code == "InvalidParameter" and info.value.target is not None
        assert info.value.target.startswith(path)
    body = mutate(FULL_TEMPLATE, "properties.distribute[1].versioning", DELETE)
    body = mutate(
        body, "properties.distribute[1].galleryImageId", GALLERY_IMAGE + "/versions/" + "9" * 5000 + ".0.0"
    )
    with pytest.raises(TemplateError) as info:
        parse_template(body)
    assert info.value.code == "BadSharedImageDistribute"


def test_template_error_shape() -> None:
    inner = TemplateError("NoCustomizerScript", "give a script", "properties.customize[0].scriptUri")
    outer = TemplateError(
        "InvalidTemplate",
        "2 problems",
        "properties.customize[0].scriptUri",
        [inner, TemplateError("LocationRequired", "add it", "location")],
    )
    assert outer.to_arm() == {
        "error": {
            "code": "InvalidTemplate",
            "message": "2 problems",
            "target": "properties.customize[0].scriptUri",
            "details": [
                {
                    "code": "NoCustomizerScript",
                    "message": "give a script",
                    "target": "properties.customize[0].scriptUri",
                    "details": [],
                },
                {"code": "LocationRequired", "message": "add it", "target": "location", "details": []},
            ],
        }
    }
    assert TemplateError("InvalidRequestContent", "not an object").to_arm()["error"] == {
        "code": "InvalidRequestContent",
        "message": "not an object",
        "details": [],
    }
    assert "properties.customize[0].scriptUri" in str(inner) and "NoCustomizerScript" in str(inner)


def test_python_field_names_are_not_json_members() -> None:
    body = mutate(FULL_TEMPLATE, "properties.buildTimeoutInMinutes", DELETE)
    body = mutate(body, "properties.build_timeout_in_minutes", 77)
    with pytest.raises(TemplateError) as info:
        parse_template(body, strict_members=True)
    assert (info.value.code, info.value.target) == (
        "InvalidRequestContent",
        "properties.build_timeout_in_minutes",
    )
    warnings: list[IgnoredMember] = []
    template = parse_template(body, warnings=warnings)  # dropped, as AIB drops what it does not know
    assert template.properties.build_timeout_in_minutes is None
    assert [w.target for w in warnings] == ["properties.build_timeout_in_minutes"]
