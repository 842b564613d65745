"""Issue 16 through the local runtime (the real `provision_template` / `delete_template` orchestrations and
the local provider): create as a long-running operation (Creating -> Succeeded/Failed with
provisioningError, GET shows it, DELETE removes it), unknown members dropped with warnings (op status,
customization.log) or refused by the strict app setting, and ARM ids compared case-insensitively."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from tests.api.conftest import API, Direct, Http, Runtime, minimal_template, template_url

pytestmark = pytest.mark.slow


@pytest.fixture
def http(runtime: Runtime) -> Http:
    return Http(runtime)


def settle(http: Http, started: Any) -> dict[str, Any]:
    """Poll an Azure-AsyncOperation until it ends; the final operation status body."""
    deadline = time.monotonic() + 60
    while True:
        op = http.get(started.headers["Azure-AsyncOperation"])
        assert op.status == 200, op.text
        if op.json["status"] != "InProgress":
            return dict(op.json)
        assert time.monotonic() < deadline, f"the operation never ended: {op.json}"
        time.sleep(0.2)


def test_create_is_a_long_running_operation(http: Http, runtime: Runtime, sub: str) -> None:
    created = http.put(template_url(sub), minimal_template())
    assert created.status == 201, created.text
    assert created.json["properties"]["provisioningState"] == "Creating"
    assert "exactStagingResourceGroup" not in created.json["properties"]
    op = settle(http, created)
    assert op["status"] == "Succeeded" and op["endTime"] and "error" not in op
    got = http.get(template_url(sub)).json
    assert got["properties"]["provisioningState"] == "Succeeded"
    group = got["properties"]["exactStagingResourceGroup"]
    assert group.startswith(f"/subscriptions/{sub}/resourceGroups/IT_rg1_t1_"), group
    folder = runtime.state_dir / "imagebuilder" / "staging" / sub / group.rsplit("/", 1)[1].lower()
    assert (folder / "staging.json").is_file()
    # an identical PUT after creating answers with the create's outcome
    again = http.put(template_url(sub), minimal_template())
    assert again.status == 200 and settle(http, again)["status"] == "Succeeded"
    deleted = http.delete(template_url(sub))
    assert deleted.status == 202
    assert settle(http, deleted)["status"] == "Succeeded"
    assert http.get(template_url(sub)).status == 404
    assert not folder.exists(), "the staging group is deleted with its template"


def test_unresolvable_source_fails_the_create(http: Http, sub: str) -> None:
    body = minimal_template()
    body["properties"]["source"] = {
        "type": "PlatformImage",
        "publisher": "Canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "latest",
    }
    created = http.put(template_url(sub), body)
    assert created.status == 201 and created.json["properties"]["provisioningState"] == "Creating"
    op = settle(http, created)
    assert op["status"] == "Failed" and op["error"]["code"] == "BadPIRSource"
    message = op["error"]["message"]
    assert "Canonical:ubuntu-24_04-lts:server:latest" in message and "IMAGEBUILDER_LOCAL_CATALOG" in message
    got = http.get(template_url(sub))
    assert got.status == 200
    props = got.json["properties"]
    assert props["provisioningState"] == "Failed"
    assert props["provisioningError"]["provisioningErrorCode"] == "BadPIRSource"
    assert "Canonical:ubuntu-24_04-lts:server" in props["provisioningError"]["message"]
    run = http.post(template_url(sub, suffix="/run"))
    assert run.status == 409 and "failed to be created" in run.json["error"]["message"]
    assert http.delete(template_url(sub)).status == 202
    assert http.get(template_url(sub)).status == 404


def test_missing_managed_image_source_fails_the_create(http: Http, sub: str) -> None:
    body = minimal_template()
    body["properties"]["source"] = {
        "type": "ManagedImage",
        "imageId": f"/subscriptions/{sub}/resourceGroups/rg1/providers/Microsoft.Compute/images/nope",
    }
    op = settle(http, http.put(template_url(sub), body))
    assert op["status"] == "Failed" and op["error"]["code"] == "BadManagedImageSource", op
    assert "nope" in op["error"]["message"]


FIELD_TEMPLATE: dict[str, Any] = {
    "location": "West US",
    "identity": {
        "type": "UserAssigned",
        "userAssignedIdentities": {
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg1/providers/"
            "Microsoft.ManagedIdentity/userAssignedIdentities/aibIdentity": {}
        },
    },
    "properties": {
        "source": {"type": "PlatformImage", "publisher": "Canonical", "offer": "UbuntuServer",
                   "sku": "18.04-LTS", "version": "latest"},
        "vmProfile": {"vmSize": "Standard_D2s_v3", "tags": {"team": "avd"}},
        "customize": [{"type": "Shell", "name": "x", "inline": ["sudo true"], "runAsUser": "root"}],
        "distribute": [
            {
                "type": "SharedImage",
                "galleryImageId": "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg1/"
                "providers/Microsoft.Compute/galleries/g/images/i",
                "runOutputName": "sig",
                "aritfactTags": {"source": "azVmImageBuilder"},
                "replicationRegions": ["West US", "eastus"],
            },
            {"type": "VHD", "runOutputName": "vhd", "tags": {"a": "b"}},
        ],
    },
}  # fmt: skip
FIELD_WARNINGS = [
    "ignored unknown member properties.vmProfile.tags",
    "ignored unknown member properties.customize[0].runAsUser",
    "ignored unknown member properties.distribute[0].aritfactTags; did you mean artifactTags?",
    "ignored unknown member properties.distribute[1].tags; did you mean artifactTags?",
]


def test_unknown_members_are_dropped_with_warnings(http: Http, sub: str) -> None:
    created = http.put(template_url(sub, api="2020-02-14"), FIELD_TEMPLATE)
    assert created.status == 201, created.text
    op = settle(http, created)
    assert op["status"] == "Succeeded", op
    assert sorted(op["properties"]["warnings"]) == sorted(FIELD_WARNINGS)
    got = http.get(template_url(sub)).json["properties"]
    assert "tags" not in got["vmProfile"] and "runAsUser" not in got["customize"][0]
    assert set(got["distribute"][0]) == {"type", "galleryImageId", "runOutputName", "replicationRegions"}
    assert set(got["distribute"][1]) == {"type", "runOutputName"}
    # the same template, ids and regions spelt differently: the same template to ARM, so idempotent
    respelt = copy.deepcopy(FIELD_TEMPLATE)
    respelt["location"] = "westus"
    ident = respelt["identity"]["userAssignedIdentities"]
    respelt["identity"]["userAssignedIdentities"] = {k.upper(): v for k, v in ident.items()}
    target = respelt["properties"]["distribute"][0]
    target["galleryImageId"] = target["galleryImageId"].replace("resourcegroups", "resourceGroups")
    target["replicationRegions"] = ["westus", "East US"]
    assert http.put(template_url(sub, api="2022-02-14"), respelt).status == 200
    # every run's customization.log says what was ignored
    run = http.post(template_url(sub, suffix="/run"))
    assert run.status == 202, run.text
    runs = http.get(template_url(sub, suffix="/runs")).json["value"]
    log = http.get(template_url(sub, suffix=f"/runs/{runs[0]['name']}/logs/customization.log"))
    assert log.status == 200
    for line in FIELD_WARNINGS:
        assert f"warning: {line}" in log.text


def test_strict_setting_refuses_unknown_members(
    direct: Direct, sub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEBUILDER_STRICT_TEMPLATE_MEMBERS", "true")
    refused = direct.put(template_url(sub), FIELD_TEMPLATE)
    assert refused.status == 400
    assert {d["target"] for d in refused.json["error"]["details"]} == {
        w.split()[3].rstrip(";") for w in FIELD_WARNINGS
    }
    assert direct.get(template_url(sub)).status == 404
    patch = direct.patch(template_url(sub), {"tags": {}, "properties": {"vmProfile": {"tags": {}}}})
    assert patch.status in (400, 404)
    assert direct.put(template_url(sub), minimal_template()).status == 201


def test_api_versions_used_in_the_field(http: Http, sub: str) -> None:
    for i, version in enumerate(("2020-02-14", "2021-10-01", "2022-02-14", "2022-07-01", "2023-07-01", API)):
        put = http.put(template_url(sub, name=f"v{i}", api=version), FIELD_TEMPLATE)
        assert put.status == 201, (version, put.text)
        assert settle(http, put)["status"] == "Succeeded"
