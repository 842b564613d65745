"""Templates written the way the field writes them (issue 16), through the whole app under the local runtime:
a misspelled `aritfactTags` (the AIB team's own samples), `tags` in `vmProfile` and on distribute targets
(AVD templates), identity and gallery ids with lower-case `resourcegroups`, regions by display name and
old api-versions. All are accepted; every ignored member is a warning in the create's operation status;
nothing unknown is stored; the create ends Succeeded through the official client's poller, and a source
with no local base ends Failed with provisioningError, which GET shows and DELETE removes."""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.mgmt.imagebuilder import models as m

from examples.sdk_client import make_client
from tests.conformance.conftest import AppRuntime

pytestmark = pytest.mark.slow

SUB = str(uuid.uuid4())
RG = "fieldRG"
IDENTITY_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/fieldRG/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/aibBuiUserId"
)
GALLERY_IMAGE = (
    f"/subscriptions/{SUB}/resourcegroups/fieldRG/providers/Microsoft.Compute/galleries/aibSig/images/ubuntu"
)
FIELD: dict[str, Any] = {
    "location": "West US 2",
    "tags": {"imagebuilderTemplate": "ubuntu1804"},
    "identity": {"type": "UserAssigned", "userAssignedIdentities": {IDENTITY_ID: {}}},
    "properties": {
        "buildTimeoutInMinutes": 80,
        "vmProfile": {"vmSize": "Standard_D2s_v3", "osDiskSizeGB": 30, "tags": {"CostCenter": "avd"}},
        "source": {"type": "PlatformImage", "publisher": "Canonical", "offer": "UbuntuServer",
                   "sku": "18.04-LTS", "version": "latest"},
        "customize": [
            {"type": "Shell", "name": "setup", "inline": ["sudo mkdir -p /buildArtifacts"], "runAsRoot": True}
        ],
        "distribute": [
            {
                "type": "SharedImage",
                "galleryImageId": GALLERY_IMAGE,
                "runOutputName": "aibLinuxSIG",
                "aritfactTags": {"source": "azureVmImageBuilder", "baseosimg": "ubuntu1804"},
                "replicationRegions": ["West US 2", "eastus"],
            },
            {"type": "VHD", "runOutputName": "aibLinuxVHD", "tags": {"team": "platform"}},
        ],
    },
}  # fmt: skip
WARNINGS = {
    "ignored unknown member properties.vmProfile.tags",
    "ignored unknown member properties.customize[0].runAsRoot",
    "ignored unknown member properties.distribute[0].aritfactTags; did you mean artifactTags?",
    "ignored unknown member properties.distribute[1].tags; did you mean artifactTags?",
}


def url(app: AppRuntime, name: str, api: str) -> str:
    return (
        f"{app.url}/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages/"
        f"imageTemplates/{name}?api-version={api}"
    )


def settle(http: requests.Session, status_url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        op = http.get(status_url)
        assert op.status_code == 200, op.text
        body: dict[str, Any] = op.json()
        if body["status"] != "InProgress":
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


@pytest.mark.parametrize("api", ["2020-02-14", "2021-10-01", "2022-02-14"])
def test_field_template_is_accepted_with_warnings_and_nothing_unknown_stored(
    api: str, app_runtime: AppRuntime, http: requests.Session
) -> None:
    name = f"field-{api}"
    created = http.put(url(app_runtime, name, api), json=FIELD)
    assert created.status_code == 201, created.text
    assert created.json()["properties"]["provisioningState"] == "Creating"
    op = settle(http, created.headers["Azure-AsyncOperation"])
    assert op["status"] == "Succeeded", op
    assert set(op["properties"]["warnings"]) == WARNINGS
    got = http.get(url(app_runtime, name, api)).json()
    props = got["properties"]
    assert props["provisioningState"] == "Succeeded"
    assert "tags" not in props["vmProfile"] and "runAsRoot" not in props["customize"][0]
    assert "aritfactTags" not in props["distribute"][0] and "tags" not in props["distribute"][1]
    assert list(got["identity"]["userAssignedIdentities"]) == [IDENTITY_ID]  # as given, lower-case and all
    # the same template spelt as another tool writes it is the same template (ARM ids and regions)
    respelt = copy.deepcopy(FIELD)
    respelt["location"] = "westus2"
    respelt["identity"]["userAssignedIdentities"] = {IDENTITY_ID.upper(): {}}
    respelt["properties"]["distribute"][0]["galleryImageId"] = GALLERY_IMAGE.replace(
        "resourcegroups", "resourceGroups"
    )
    respelt["properties"]["distribute"][0]["replicationRegions"] = ["westus2", "East US"]
    assert http.put(url(app_runtime, name, "2025-10-01"), json=respelt).status_code == 200
    deleted = http.delete(url(app_runtime, name, api))
    assert (
        deleted.status_code == 202
        and settle(http, deleted.headers["Azure-AsyncOperation"])["status"] == "Succeeded"
    )


def test_create_through_the_sdk_poller_and_a_source_with_no_local_base(
    app_runtime: AppRuntime, http: requests.Session
) -> None:
    with make_client(
        app_runtime.url, app_runtime.key, SUB, polling_interval=0.2, api_version="2022-07-01"
    ) as c:
        ops = c.virtual_machine_image_templates
        seen: list[str] = []

        def record(response: Any) -> None:
            response.http_response.read()
            body = response.http_response.text()
            if '"provisioningState"' in body:
                seen.append(response.http_response.json()["properties"]["provisioningState"])

        good = ops.begin_create_or_update(
            RG, "field-sdk", m.ImageTemplate(copy.deepcopy(FIELD)), raw_response_hook=record
        )
        assert good.result().provisioning_state == "Succeeded"
        assert seen[0] == "Creating" and seen[-1] == "Succeeded", seen

        missing = copy.deepcopy(FIELD)
        missing["properties"]["source"].update(offer="ubuntu-24_04-lts", sku="server")
        with pytest.raises(HttpResponseError) as info:
            ops.begin_create_or_update(RG, "field-missing", m.ImageTemplate(missing)).result()
        assert info.value.error is not None and info.value.error.code == "BadPIRSource"
        assert "Canonical:ubuntu-24_04-lts:server:latest" in info.value.error.message
        assert "IMAGEBUILDER_LOCAL_CATALOG" in info.value.error.message
        failed = ops.get(RG, "field-missing")
        assert failed.provisioning_state == "Failed"
        assert failed.provisioning_error.provisioning_error_code == "BadPIRSource"
        ops.begin_delete(RG, "field-missing").result()
        assert http.get(url(app_runtime, "field-missing", "2022-07-01")).status_code == 404
        ops.begin_delete(RG, "field-sdk").result()
