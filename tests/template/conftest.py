"""Fixtures of the template schema tests: a complete valid template using every section."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

SUB = "/subscriptions/00000000-0000-0000-0000-000000000000"
IDENTITY = f"{SUB}/resourceGroups/rg1/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aib"
GALLERY_IMAGE = f"{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/galleries/gal/images/ubuntu"
SUBNET = f"{SUB}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/build"
ACI_SUBNET = f"{SUB}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/aci"
SHA = "a" * 64

FULL_TEMPLATE: dict[str, Any] = {
    "location": "westus2",
    "tags": {"team": "images"},
    "identity": {"type": "UserAssigned", "userAssignedIdentities": {IDENTITY: {}}},
    "properties": {
        "source": {
            "type": "PlatformImage",
            "publisher": "Canonical",
            "offer": "0001-com-ubuntu-server-jammy",
            "sku": "22_04-lts-gen2",
            "version": "latest",
        },
        "customize": [
            {
                "type": "Shell",
                "name": "setup",
                "scriptUri": "https://example.com/setup.sh",
                "sha256Checksum": SHA,
            },
            {"type": "Shell", "name": "inline", "inline": ["echo hello", "mkdir -p /opt/app"]},
            {
                "type": "File",
                "name": "conf",
                "sourceUri": "https://example.com/app.conf",
                "destination": "/tmp/app.conf",
            },
            {
                "type": "PowerShell",
                "name": "ps",
                "inline": ["Write-Output hi"],
                "runElevated": True,
                "runAsSystem": True,
                "validExitCodes": [0, 3010],
            },
            {"type": "WindowsRestart", "restartTimeout": "10m"},
            {
                "type": "WindowsUpdate",
                "searchCriteria": "IsInstalled=0",
                "filters": ["include:$true"],
                "updateLimit": 20,
            },
        ],
        "optimize": {"vmBoot": {"state": "Enabled"}},
        "validate": {
            "continueDistributeOnFailure": False,
            "sourceValidationOnly": False,
            "inVMValidations": [
                {"type": "Shell", "name": "check", "inline": ["test -f /tmp/app.conf"]},
                {"type": "File", "sourceUri": "https://example.com/check.sh", "destination": "/tmp/check.sh"},
                {"type": "PowerShell", "scriptUri": "https://example.com/check.ps1", "runElevated": True},
            ],
        },
        "distribute": [
            {
                "type": "ManagedImage",
                "imageId": f"{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/images/ubuntu",
                "location": "westus2",
                "runOutputName": "managed",
                "artifactTags": {"source": "aib"},
            },
            {
                "type": "SharedImage",
                "galleryImageId": GALLERY_IMAGE,
                "runOutputName": "gallery",
                "targetRegions": [
                    {"name": "westus2", "replicaCount": 2, "storageAccountType": "Standard_ZRS"},
                    {"name": "eastus"},
                ],
                "versioning": {"scheme": "Latest", "major": 1},
                "excludeFromLatest": False,
                "replicationMode": "Full",
            },
            {"type": "VHD", "runOutputName": "vhd"},
        ],
        "errorHandling": {"onCustomizerError": "abort", "onValidationError": "cleanup"},
        "buildTimeoutInMinutes": 90,
        "vmProfile": {
            "vmSize": "Standard_D2s_v3",
            "osDiskSizeGB": 64,
            "userAssignedIdentities": [IDENTITY],
            "vnetConfig": {"subnetId": SUBNET, "proxyVmSize": "Standard_A1_v2"},
        },
        "additionalDataDisks": [{"sizeGB": 32}],
        "stagingResourceGroup": f"{SUB}/resourceGroups/aib-staging",
        "autoRun": {"state": "Disabled"},
        "managedResourceTags": {"owner": "images"},
    },
}

DELETE = object()
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def mutate(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of body with the value at a JSON path ("properties.customize[0].inline") set or deleted."""
    out = copy.deepcopy(body)
    steps: list[str | int] = [name if name else int(index) for name, index in _STEP.findall(path)]
    node: Any = out
    for step in steps[:-1]:
        node = node[step]
    last = steps[-1]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list) and isinstance(last, int) and last == len(node):
        node.append(value)
    else:
        node[last] = copy.deepcopy(value)
    return out


@pytest.fixture
def full_template() -> dict[str, Any]:
    return copy.deepcopy(FULL_TEMPLATE)
