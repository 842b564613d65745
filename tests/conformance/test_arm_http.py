"""What ARM clients other than the Python SDK rely on, over raw HTTP against the whole app: az-style
calls (every api-version, case-insensitive paths, trailing slashes), ARM error bodies for missing
resources, 405 for unsupported methods, tracing headers, the long-running-operation headers and the
operation status resource, provisioningState and systemData; and a real-world trigger through the SDK."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.imagebuilder import models as m

from examples.sdk_client import make_client
from imagebuilder.template import SUPPORTED_API_VERSIONS
from tests.conformance.conftest import TEMPLATES, AppRuntime

pytestmark = pytest.mark.slow

SUB = str(uuid.uuid4())
RG = "Conformance-RG"
NAME = "armChecks"
API = "2025-10-01"
PROVIDER = "providers/Microsoft.VirtualMachineImages"
TEMPLATE = json.loads((TEMPLATES / "aib-qqs1-linux-gallery.json").read_text())["template"]


def path(name: str = NAME, suffix: str = "", *, rg: str = RG, provider: str = PROVIDER) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{rg}/{provider}/imageTemplates/{name}{suffix}"


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def base(app_runtime: AppRuntime) -> str:
    return app_runtime.url


@pytest.fixture(scope="module")
def created(http: requests.Session, base: str) -> Iterator[requests.Response]:
    resp = http.put(f"{base}{path()}?api-version={API}", json=TEMPLATE)
    assert resp.status_code == 201, resp.text
    yield resp
    http.delete(f"{base}{path()}?api-version={API}")


def test_create_is_an_arm_long_running_operation(
    created: requests.Response, http: requests.Session, base: str
) -> None:
    body = created.json()
    assert body["properties"]["provisioningState"] == "Creating"  # it ends when its operation does
    assert body["id"] == path()
    assert when(body["systemData"]["createdAt"]) <= when(body["systemData"]["lastModifiedAt"])
    status_url = created.headers["Azure-AsyncOperation"]
    assert int(created.headers["Retry-After"]) >= 1
    assert f"/subscriptions/{SUB}/providers/Microsoft.VirtualMachineImages/locations/westus2/operations/" in (
        status_url
    )
    deadline = time.monotonic() + 60
    while True:
        status = http.get(status_url)
        assert status.status_code == 200
        op = status.json()
        if op["status"] != "InProgress":
            break
        assert int(status.headers["Retry-After"]) >= 1 and time.monotonic() < deadline
        time.sleep(0.2)
    assert op["status"] == "Succeeded" and op["name"] in status_url and op["id"] in status_url
    assert when(op["startTime"]) <= when(op["endTime"])
    assert op["resourceId"] == path()
    done = http.get(f"{base}{path()}?api-version={API}").json()
    assert done["properties"]["provisioningState"] == "Succeeded"


@pytest.mark.parametrize("version", SUPPORTED_API_VERSIONS)
def test_every_supported_api_version_reads_the_template(
    version: str, created: requests.Response, http: requests.Session, base: str
) -> None:
    resp = http.get(f"{base}{path()}?api-version={version}")
    assert resp.status_code == 200, resp.text
    assert resp.json()["properties"]["source"] == TEMPLATE["properties"]["source"]


@pytest.mark.parametrize(
    "variant",
    [
        path().replace("/resourceGroups/", "/resourcegroups/"),
        path().replace("/subscriptions/", "/SUBSCRIPTIONS/"),
        path(provider=PROVIDER.lower()),
        path(rg=RG.lower()),
        path(rg=RG.upper(), name=NAME.upper()),
        path() + "/",
    ],
    ids=["resourcegroups", "SUBSCRIPTIONS", "provider-lowercase", "rg-lowercase", "names-uppercase", "slash"],
)
def test_arm_paths_are_case_insensitive(
    variant: str, created: requests.Response, http: requests.Session, base: str
) -> None:
    resp = http.get(f"{base}{variant}?api-version={API}")
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == path(), "the id keeps the casing the template was created with"
    listed = http.get(f"{base}{variant.rsplit('/imageTemplates', 1)[0]}/imageTemplates/?api-version={API}")
    assert listed.status_code == 200 and [t["name"] for t in listed.json()["value"]] == [NAME]


@pytest.mark.parametrize(
    "suffix, what",
    [("", "template"), ("/runOutputs/out1", "run output"), ("/triggers/t1", "trigger"), ("/runs/r1", "run")],
)
def test_missing_resources_get_arm_not_found(
    suffix: str, what: str, created: requests.Response, http: requests.Session, base: str
) -> None:
    target = path("doesNotExist", suffix) if not suffix else path(NAME, suffix)
    resp = http.get(f"{base}{target}?api-version={API}")
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert error["code"] == "ResourceNotFound" and error["message"]
    if suffix:
        parent = http.get(f"{base}{path('doesNotExist', suffix)}?api-version={API}")
        assert parent.status_code == 404 and parent.json()["error"]["code"] == "ResourceNotFound"


@pytest.mark.parametrize(
    "method, target, allowed",
    [
        ("POST", path(), "GET, PUT, PATCH, DELETE"),
        ("GET", path(suffix="/run"), "POST"),
        ("DELETE", path(suffix="/cancel"), "POST"),
        ("PUT", path().rsplit("/", 1)[0], "GET"),
    ],
)
def test_unsupported_methods_get_405(
    method: str, target: str, allowed: str, created: requests.Response, http: requests.Session, base: str
) -> None:
    resp = http.request(method, f"{base}{target}?api-version={API}", json={})
    assert resp.status_code == 405, resp.text
    assert resp.headers["Allow"] == allowed
    assert resp.json()["error"]["code"] == "MethodNotAllowed"


def test_api_version_errors(created: requests.Response, http: requests.Session, base: str) -> None:
    missing = http.get(f"{base}{path()}")
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "MissingApiVersionParameter"
    # a well-formed version the provider does not serve: ARM answers from the provider's manifest
    for retired, kind in (
        ("2019-02-01-preview", "imageTemplates"),
        ("2017-01-01", "imageTemplates/triggers"),
    ):
        target = path(suffix="/triggers/t1" if kind.endswith("triggers") else "")
        wrong = http.get(f"{base}{target}?api-version={retired}")
        assert wrong.status_code == 400
        error = wrong.json()["error"]
        assert error["code"] == "NoRegisteredProviderFound", error
        assert f"type '{kind}'" in error["message"] and "2025-10-01" in error["message"]
    garbled = http.get(f"{base}{path()}?api-version=2025-10-1")
    assert garbled.status_code == 400 and garbled.json()["error"]["code"] == "InvalidApiVersionParameter"


def test_tracing_headers(created: requests.Response, http: requests.Session, base: str) -> None:
    correlation, client_id = str(uuid.uuid4()), str(uuid.uuid4())
    headers = {"x-ms-correlation-request-id": correlation, "x-ms-client-request-id": client_id}
    for resp in (
        http.get(f"{base}{path()}?api-version={API}", headers=headers),
        http.get(f"{base}{path('nope')}?api-version={API}", headers=headers),
        http.put(f"{base}{path('bad')}?api-version={API}", headers=headers, json={"location": "x"}),
    ):
        assert resp.headers["x-ms-correlation-request-id"] == correlation
        assert resp.headers["x-ms-client-request-id"] == client_id
        uuid.UUID(resp.headers["x-ms-request-id"])
    first = http.get(f"{base}{path()}?api-version={API}")
    second = http.get(f"{base}{path()}?api-version={API}")
    assert first.headers["x-ms-request-id"] != second.headers["x-ms-request-id"]
    uuid.UUID(first.headers["x-ms-correlation-request-id"])


def test_patch_moves_last_modified_and_delete_is_a_202_operation(http: requests.Session, base: str) -> None:
    name = "armDelete"
    made = http.put(f"{base}{path(name)}?api-version=2022-02-14", json=TEMPLATE).json()
    patched = http.patch(f"{base}{path(name)}?api-version=2022-02-14", json={"tags": {"a": "b"}})
    assert patched.status_code == 200 and patched.json()["tags"] == {"a": "b"}
    assert when(patched.json()["systemData"]["lastModifiedAt"]) > when(made["systemData"]["lastModifiedAt"])
    assert patched.json()["systemData"]["createdAt"] == made["systemData"]["createdAt"]

    deleted = http.delete(f"{base}{path(name)}?api-version=2022-02-14")
    assert deleted.status_code == 202
    assert int(deleted.headers["Retry-After"]) >= 1
    deadline = time.monotonic() + 60
    result = http.get(deleted.headers["Location"])
    while result.status_code == 202:  # the staging resources go first, then the template
        assert time.monotonic() < deadline and int(result.headers["Retry-After"]) >= 1
        time.sleep(0.2)
        result = http.get(deleted.headers["Location"])
    assert result.status_code in (200, 204)
    status = http.get(deleted.headers["Azure-AsyncOperation"]).json()
    assert status["status"] == "Succeeded"
    assert http.get(f"{base}{path(name)}?api-version=2022-02-14").status_code == 404
    again = http.delete(f"{base}{path(name)}?api-version=2022-02-14")
    assert again.status_code == 204, "deleting what is absent is a 204, as ARM does"


def test_missing_operation_is_a_404(http: requests.Session, base: str) -> None:
    op = (
        f"{base}/subscriptions/{SUB}/{PROVIDER}/locations/westus2/operations/{uuid.uuid4()}?api-version={API}"
    )
    resp = http.get(op)
    assert resp.status_code == 404 and resp.json()["error"]["code"]


def test_real_world_trigger_through_the_sdk(
    created: requests.Response, app_runtime: AppRuntime, http: requests.Session, base: str
) -> None:
    """Azure/azvmimagebuilder quickquickstarts/9_Setting_up_a_Trigger_with_a_Custom_Linux_Image/
    trigger.json: `{"location": "<region1>", "properties": {"kind": "SourceImage"}}`."""
    trigger: dict[str, Any] = {"location": "westus2", "properties": {"kind": "SourceImage"}}
    with make_client(
        app_runtime.url, app_runtime.key, SUB, polling_interval=0.1, api_version="2022-07-01"
    ) as c:
        made = c.triggers.begin_create_or_update(RG, NAME, "source", m.Trigger(trigger)).result()
        assert isinstance(made.properties, m.SourceImageTriggerProperties)
        assert made.properties.provisioning_state == "Succeeded"
        raw = http.get(f"{base}{path(suffix='/triggers/source')}?api-version=2022-07-01").json()
        assert c.triggers.get(RG, NAME, "source").as_dict() == raw
        assert raw["id"] == path(suffix="/triggers/source")
        assert raw["type"] == "Microsoft.VirtualMachineImages/imageTemplates/triggers"
        assert [t.as_dict() for t in c.triggers.list_by_image_template(RG, NAME)] == [raw]
        c.triggers.begin_delete(RG, NAME, "source").result()
        with pytest.raises(ResourceNotFoundError):
            c.triggers.get(RG, NAME, "source")


def test_redeploy_with_the_region_spelled_differently_is_idempotent(
    http: requests.Session, base: str
) -> None:
    """ARM locations are compared normalized: a deployment saying "West US 2" and a CLI saying "westus2"
    name the same region, so the second PUT is the same template (200), not a change (409)."""
    name = "armRegion"
    first = http.put(f"{base}{path(name)}?api-version={API}", json={**TEMPLATE, "location": "West US 2"})
    assert first.status_code == 201, first.text
    again = http.put(f"{base}{path(name)}?api-version={API}", json={**TEMPLATE, "location": "westus2"})
    assert again.status_code == 200, again.text
    other = http.put(f"{base}{path(name)}?api-version={API}", json={**TEMPLATE, "location": "eastus"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "Conflict"
    assert http.delete(f"{base}{path(name)}?api-version={API}").status_code == 202


def test_generic_arm_client_az_resource_style(
    app_runtime: AppRuntime, http: requests.Session, base: str
) -> None:
    """What `az resource create/show/delete` does, with azure-mgmt-resource's own client: read the
    provider's registration for an api-version, then PUT/GET/DELETE the template by id."""
    from azure.mgmt.resource.resources import ResourceManagementClient
    from azure.mgmt.resource.resources.models import GenericResource

    from examples.sdk_client import FunctionKeyPolicy, LocalCredential

    with ResourceManagementClient(
        LocalCredential(),
        SUB,
        base_url=app_runtime.url,
        authentication_policy=FunctionKeyPolicy(app_runtime.key),
        polling_interval=0.1,
    ) as rm:
        provider = rm.providers.get("Microsoft.VirtualMachineImages")
        assert provider.registration_state == "Registered"
        types = {t.resource_type: t for t in provider.resource_types}
        version = next(v for v in types["imageTemplates"].api_versions if "preview" not in v)
        assert version == "2025-10-01" and "West US 2" in types["imageTemplates"].locations

        rid = path("azResource")
        created = rm.resources.begin_create_or_update_by_id(
            rid, GenericResource(TEMPLATE), api_version=version
        ).result()
        assert created.id == rid and created.properties["provisioningState"] == "Succeeded"
        shown = rm.resources.get_by_id(rid, api_version=version)
        assert shown.properties["source"] == TEMPLATE["properties"]["source"]
        assert shown.identity.type == "UserAssigned"
        assert rm.resources.check_existence_by_id(rid, api_version=version) is True
        rm.resources.begin_delete_by_id(rid, api_version=version).result()
        assert rm.resources.check_existence_by_id(rid, api_version=version) is False
