"""Templates in the shapes real users submit (AIB quickstarts, az CLI full objects, GET output re-PUT)."""

from __future__ import annotations

from typing import Any

import pytest

from imagebuilder.template import SharedImageDistributor, parse_template, parse_trigger

SUB = "/subscriptions/11111111-2222-3333-4444-555555555555"
MSI = f"{SUB}/resourcegroups/aib/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aibIdentity"

# `az resource create --is-full-object --properties @template.json`: the deployment-template resource as is.
FULL_OBJECT_WINDOWS: dict[str, Any] = {
    "type": "Microsoft.VirtualMachineImages/imageTemplates",
    "apiVersion": "2022-02-14",
    "location": "westeurope",
    "dependsOn": [],
    "tags": {"imagebuilderTemplate": "win2022"},
    "identity": {"type": "UserAssigned", "userAssignedIdentities": {MSI: {}}},
    "properties": {
        "buildTimeoutInMinutes": 100,
        "vmProfile": {"vmSize": "Standard_D2s_v3", "osDiskSizeGB": 127},
        "source": {
            "type": "PlatformImage",
            "publisher": "MicrosoftWindowsServer",
            "offer": "WindowsServer",
            "sku": "2022-datacenter-azure-edition",
            "version": "latest",
        },
        "customize": [
            {
                "type": "PowerShell",
                "name": "CreateBuildPath",
                "runElevated": False,
                "scriptUri": "https://example.org/ps/build.ps1",
            },
            {
                "type": "WindowsRestart",
                "restartCheckCommand": "echo restarted > c:\\buildArtifacts\\restart.txt",
                "restartTimeout": "5m",
            },
            {
                "type": "File",
                "name": "artifacts",
                "sourceUri": "https://example.org/index.html",
                "destination": "c:\\buildArtifacts\\index.html",
            },
            {
                "type": "PowerShell",
                "name": "fsLogix",
                "runElevated": True,
                "runAsSystem": True,
                "scriptUri": "https://example.org/ps/fslogix.ps1",
                "validExitCodes": [0, 267014],
            },
            {
                "type": "WindowsUpdate",
                "searchCriteria": "IsInstalled=0",
                "filters": ["exclude:$_.Title -like '*Preview*'", "include:$true"],
                "updateLimit": 20,
            },
        ],
        "distribute": [
            {
                "type": "ManagedImage",
                "imageId": f"{SUB}/resourceGroups/images/providers/Microsoft.Compute/images/win2022",
                "location": "westeurope",
                "runOutputName": "win2022-managed",
                "artifactTags": {"source": "azVmImageBuilder"},
            }
        ],
    },
}

# A GET response saved to a file and PUT again (read-only members and identity ids included).
GET_OUTPUT_RESUBMITTED: dict[str, Any] = {
    "properties": {
        "source": {
            "exactVersion": "18.04.202210180",
            "offer": "UbuntuServer",
            "publisher": "Canonical",
            "sku": "18.04-LTS",
            "type": "PlatformImage",
            "version": "latest",
        },
        "customize": [
            {
                "name": "script",
                "scriptUri": "https://example.org/customize.sh",
                "sha256Checksum": "2C6FF6902A4A52DEEE69E8DB26D0036A53388651008AAF31795BB20DABD21FD8",
                "type": "Shell",
            },
            {
                "destination": "/tmp/index.html",
                "name": "download",
                "sourceUri": "https://example.org/index.html",
                "type": "File",
            },
            {
                "inline": [
                    "sudo mkdir /buildArtifacts",
                    "\nsudo cp /tmp/index.html /buildArtifacts/index.html",
                ],
                "name": "setup",
                "type": "Shell",
            },
        ],
        "distribute": [
            {
                "artifactTags": {},
                "excludeFromLatest": False,
                "galleryImageId": f"{SUB}/resourceGroups/images/providers/Microsoft.Compute/galleries/gal/images/ubuntu/versions/1.0.7",
                "replicationRegions": ["westus2", "eastus"],
                "runOutputName": "ubuntu-sig",
                "type": "SharedImage",
            }
        ],
        "provisioningState": "Succeeded",
        "lastRunStatus": {"runState": "Succeeded", "runSubState": "Distributing", "message": ""},
        "buildTimeoutInMinutes": 0,
        "vmProfile": {"vmSize": "Standard_DS1_v2", "osDiskSizeGB": 32, "userAssignedIdentities": [MSI]},
    },
    "identity": {
        "type": "UserAssigned",
        "userAssignedIdentities": {MSI: {"principalId": "p-1", "clientId": "c-1"}},
    },
    "tags": {},
    "location": "westus2",
    "id": f"{SUB}/resourcegroups/aib/providers/Microsoft.VirtualMachineImages/imageTemplates/ubuntu",
    "name": "ubuntu",
    "type": "Microsoft.VirtualMachineImages/imageTemplates",
}

VALIDATORS_2022: dict[str, Any] = {
    "location": "westus2",
    "identity": {"type": "UserAssigned", "userAssignedIdentities": {MSI: {}}},
    "properties": {
        "source": {
            "type": "PlatformImage",
            "publisher": "MicrosoftWindowsDesktop",
            "offer": "Windows-10",
            "sku": "20h2-pro",
            "version": "latest",
        },
        "customize": [
            {
                "type": "WindowsRestart",
                "restartCommand": 'shutdown /f /r /t 0 /c "packer restart"',
                "restartCheckCommand": "",
                "restartTimeout": "20m",
                "name": "Restart",
            },
            {
                "type": "PowerShell",
                "name": "hello",
                "inline": ["Write-Host Hello", "New-Item -ItemType file c:\\example_1.txt"],
            },
        ],
        "validate": {
            "continueDistributeOnFailure": False,
            "inVMValidations": [
                {"type": "PowerShell", "name": "inline check", "inline": ["Test-Path c:\\example_1.txt"]},
                {
                    "type": "PowerShell",
                    "name": "script check",
                    "scriptUri": "https://example.org/validate.ps1",
                    "validExitCodes": [0, 1],
                },
            ],
        },
        "distribute": [
            {
                "type": "SharedImage",
                "galleryImageId": f"{SUB}/resourceGroups/images/providers/Microsoft.Compute/galleries/gal/images/win10",
                "runOutputName": "win10",
                "replicationRegions": ["westus2"],
            }
        ],
    },
}


@pytest.mark.parametrize("api_version", ["2020-02-14", "2022-02-14", "2025-10-01"])
def test_full_object_with_template_language_members(api_version: str) -> None:
    template = parse_template(FULL_OBJECT_WINDOWS, api_version=api_version)
    arm = template.to_arm()
    assert "apiVersion" not in arm and "dependsOn" not in arm and "type" not in arm
    assert arm["properties"] == FULL_OBJECT_WINDOWS["properties"]


def test_get_output_put_again() -> None:
    template = parse_template(GET_OUTPUT_RESUBMITTED, api_version="2022-07-01")
    arm = template.to_arm()
    assert set(arm) == {"location", "tags", "identity", "properties"}
    assert arm["identity"]["userAssignedIdentities"] == {MSI: {}}
    assert "provisioningState" not in arm["properties"] and "exactVersion" not in arm["properties"]["source"]
    assert (
        arm["properties"]["customize"][0]["sha256Checksum"]
        == "2c6ff6902a4a52deee69e8db26d0036a53388651008aaf31795bb20dabd21fd8"
    )
    assert template.properties.effective_build_timeout_minutes == 240
    dist = template.properties.distribute[0]
    assert isinstance(dist, SharedImageDistributor)
    assert dist.pinned_version == "1.0.7"
    assert [r.name for r in dist.effective_target_regions(template.location)] == ["westus2", "eastus"]


def test_validators_template() -> None:
    template = parse_template(VALIDATORS_2022, api_version="2022-07-01")
    assert template.to_arm() == VALIDATORS_2022
    assert [v.name for v in template.properties.validators] == ["inline check", "script check"]


def test_trigger_quickstart_body_with_location() -> None:
    trigger = parse_trigger(
        {"location": "westus2", "properties": {"kind": "SourceImage"}}, api_version="2022-07-01"
    )
    assert trigger.to_arm() == {"properties": {"kind": "SourceImage"}}
