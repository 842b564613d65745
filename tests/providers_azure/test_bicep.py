"""infra/*.bicep parsed with a Bicep parser (pycep-parser, from PyPI): every resource type and api-version
is one this list knows, and the resources the provider relies on are declared.

No Bicep compiler installs from PyPI, npm or Debian; parsing catches syntax errors and stale or mistyped
resource types and api-versions, not type errors in property values (infra/README.md has the commands to
compile and what-if where a compiler and a subscription exist).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lark.exceptions import UnexpectedInput
from pycep import BicepParser

from imagebuilder.providers.azure.runlog import CONTAINER

INFRA = Path(__file__).resolve().parents[2] / "infra"

# Resource type -> api-versions published for it (azure-rest-api-specs `stable/<version>` folders of each
# resource provider). A new type or version goes here only after checking it is published.
KNOWN: dict[str, set[str]] = {
    "Microsoft.Resources/resourceGroups": {"2024-03-01", "2024-07-01", "2025-04-01"},
    "Microsoft.Authorization/roleDefinitions": {"2022-04-01"},
    "Microsoft.Authorization/roleAssignments": {"2022-04-01"},
    "Microsoft.ManagedIdentity/userAssignedIdentities": {"2023-01-31", "2024-11-30"},
    "Microsoft.Storage/storageAccounts": {"2023-05-01", "2024-01-01"},
    "Microsoft.Storage/storageAccounts/blobServices": {"2023-05-01", "2024-01-01"},
    "Microsoft.Storage/storageAccounts/blobServices/containers": {"2023-05-01", "2024-01-01"},
    "Microsoft.Storage/storageAccounts/managementPolicies": {"2023-05-01", "2024-01-01"},
    "Microsoft.OperationalInsights/workspaces": {"2023-09-01"},
    "Microsoft.Insights/components": {"2020-02-02"},
    "Microsoft.Web/serverfarms": {"2024-04-01"},
    "Microsoft.Web/sites": {"2024-04-01"},
    "Microsoft.Compute/galleries": {"2023-07-03", "2024-03-03"},
}


def _parsed() -> dict[str, dict[str, Any]]:
    files = sorted(INFRA.glob("*.bicep"))
    assert files, "no Bicep files in infra/"
    return {f.name: BicepParser().parse(file_path=f) for f in files}


def test_every_bicep_file_parses_and_uses_known_types_and_api_versions():
    seen: list[tuple[str, str, str]] = []
    for name, tree in _parsed().items():
        assert set(tree) >= {"parameters", "resources", "outputs"}, name
        for symbol, resource in tree["resources"].items():
            kind, version = resource["type"], resource["api_version"]
            seen.append((name, symbol, f"{kind}@{version}"))
            assert kind in KNOWN, f"{name}: resource {symbol} has a type this list does not know: {kind}"
            assert version in KNOWN[kind], f"{name}: {symbol} uses {kind}@{version}, not a known version"
    assert len(seen) >= 15, seen


def test_the_deployment_declares_what_the_provider_relies_on():
    trees = _parsed()
    main, app = trees["main.bicep"], trees["app.bicep"]
    assert {m["detail"]["path"] for m in main["modules"].values()} == {"app.bicep"}
    app_resources = {r["type"]: r for r in app["resources"].values()}
    containers = [
        r["config"]["name"]
        for r in app["resources"].values()
        if r["type"] == "Microsoft.Storage/storageAccounts/blobServices/containers"
    ]
    assert CONTAINER in containers  # Run Command output blobs (providers/azure/runlog.py)
    assert "Microsoft.Storage/storageAccounts/managementPolicies" in app_resources
    assert "Microsoft.Authorization/roleDefinitions" in {r["type"] for r in main["resources"].values()}


def test_the_parser_refuses_broken_bicep(tmp_path):
    broken = tmp_path / "broken.bicep"
    broken.write_text("resource x 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'a'\n")
    with pytest.raises(UnexpectedInput):
        BicepParser().parse(file_path=broken)
