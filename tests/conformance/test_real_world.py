"""Real-world AIB templates (tests/conformance/templates: quickstarts, REST spec examples of every
api-version, the AVM Bicep module, documented sections, IaC idioms) through the official
azure-mgmt-imagebuilder client against the whole app under the local runtime: created (or refused with
AIB's code and JSON path), read back unchanged, listed alike over raw HTTP and the SDK, deserialized by the
SDK's models without loss, re-tagged, re-PUT idempotently and deleted."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.imagebuilder import ImageBuilderClient
from azure.mgmt.imagebuilder import models as m

from examples.sdk_client import make_client
from tests.conformance.conftest import PAGE_SIZE, AppRuntime, RealWorld, real_world_templates

pytestmark = pytest.mark.slow

SUB = str(uuid.uuid4())
RG = "aibImageRG"
ALL = real_world_templates()
ACCEPTED = [t for t in ALL if t.accepted]
PROVIDER = "providers/Microsoft.VirtualMachineImages/imageTemplates"

SOURCES = {
    "PlatformImage": m.ImageTemplatePlatformImageSource,
    "ManagedImage": m.ImageTemplateManagedImageSource,
    "SharedImageVersion": m.ImageTemplateSharedImageVersionSource,
}
CUSTOMIZERS = {
    "Shell": m.ImageTemplateShellCustomizer,
    "PowerShell": m.ImageTemplatePowerShellCustomizer,
    "File": m.ImageTemplateFileCustomizer,
    "WindowsRestart": m.ImageTemplateRestartCustomizer,
    "WindowsUpdate": m.ImageTemplateWindowsUpdateCustomizer,
}
VALIDATORS = {
    "Shell": m.ImageTemplateShellValidator,
    "PowerShell": m.ImageTemplatePowerShellValidator,
    "File": m.ImageTemplateFileValidator,
}
DISTRIBUTORS = {
    "ManagedImage": m.ImageTemplateManagedImageDistributor,
    "SharedImage": m.ImageTemplateSharedImageDistributor,
    "VHD": m.ImageTemplateVhdDistributor,
}
# what ARM / AIB own: never part of "the template the user sent"
TOP_READ_ONLY = {"id", "name", "type", "systemData", "apiVersion", "dependsOn", "comments"}
PROPS_READ_ONLY = {"provisioningState", "provisioningError", "lastRunStatus", "exactStagingResourceGroup"}


def tmpl_name(t: RealWorld) -> str:
    return t.name[:64]


def url(app: AppRuntime, name: str = "", suffix: str = "", api: str = "2025-10-01", rg: str = RG) -> str:
    tail = f"/{name}" if name else ""
    return f"{app.url}/subscriptions/{SUB}/resourceGroups/{rg}/{PROVIDER}{tail}{suffix}?api-version={api}"


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def user_view(resource: dict[str, Any]) -> dict[str, Any]:
    """The part of a template a user chose: no ARM/AIB read-only members, JSON nulls = absent."""
    out = {k: copy.deepcopy(v) for k, v in resource.items() if k not in TOP_READ_ONLY}
    out["properties"] = {k: v for k, v in (out.get("properties") or {}).items() if k not in PROPS_READ_ONLY}
    (out["properties"].get("source") or {}).pop("exactVersion", None)  # AIB fills it in after a run
    for ident in ((out.get("identity") or {}).get("userAssignedIdentities") or {}).values():
        if isinstance(ident, dict):
            ident.pop("principalId", None)
            ident.pop("clientId", None)
    return _strip_nulls(out)


def _drop(doc: dict[str, Any], path: str) -> None:
    """Delete the member at a JSON path like properties.distribute[0].aritfactTags."""
    node: Any = doc
    parts = path.replace("]", "").replace("[", ".").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    del node[parts[-1]]


def local_failure(t: RealWorld) -> str | None:
    """The create's error code on this machine: a ManagedImage or SharedImageVersion source must exist in
    the local stores (nothing has been built into them here); Marketplace sources are mapped in
    tests/local-catalog.json."""
    kind = t.template["properties"]["source"]["type"]
    return {"ManagedImage": "BadManagedImageSource", "SharedImageVersion": "BadSharedImageVersionSource"}.get(
        kind
    )


def expected_view(t: RealWorld) -> dict[str, Any]:
    """What GET must return for the template: as sent, without the members AIB ignores, plus the defaults
    AIB fills in and returns (PowerShell steps' runElevated/runAsSystem = false, as the REST examples'
    responses show)."""
    out = user_view(t.template)
    for path in t.expect.get("ignored") or []:
        _drop(out, path)
    props = out["properties"]
    steps = list(props.get("customize") or []) + list(
        (props.get("validate") or {}).get("inVMValidations") or []
    )
    for step in steps:
        if step.get("type") == "PowerShell":
            step.setdefault("runElevated", False)
            step.setdefault("runAsSystem", False)
    return out


@pytest.fixture(scope="module")
def clients(app_runtime: AppRuntime) -> Iterator[dict[str, ImageBuilderClient]]:
    """One official client per api-version the data set uses (the SDK sends its api_version)."""
    made = {
        v: make_client(app_runtime.url, app_runtime.key, SUB, polling_interval=0.1, api_version=v)
        for v in sorted({t.api_version for t in ALL} | {"2025-10-01"})
    }
    try:
        yield made
    finally:
        for c in made.values():
            c.close()


def _create(client: ImageBuilderClient, t: RealWorld) -> Any:
    try:
        poller = client.virtual_machine_image_templates.begin_create_or_update(
            RG, tmpl_name(t), m.ImageTemplate(copy.deepcopy(t.template))
        )
        return poller.result()
    except HttpResponseError as exc:
        return exc


@pytest.fixture(scope="module")
def created(clients: dict[str, ImageBuilderClient]) -> dict[str, Any]:
    """Every real-world template PUT through the SDK (concurrently: the pollers mostly sleep)."""
    with ThreadPoolExecutor(6) as pool:
        futures = {t.name: pool.submit(_create, clients[t.api_version], t) for t in ALL}
        return {name: f.result() for name, f in futures.items()}


def test_data_set_covers_every_kind() -> None:
    versions = {t.api_version for t in ALL}
    sources, customizers, validators, distributors = set(), set(), set(), set()
    for t in ALL:
        props = t.template["properties"]
        sources.add(props["source"]["type"])
        customizers |= {c["type"] for c in props.get("customize") or []}
        validators |= {v["type"] for v in (props.get("validate") or {}).get("inVMValidations") or []}
        distributors |= {d["type"] for d in props["distribute"]}
    assert {"2019-05-01-preview", "2020-02-14", "2021-10-01", "2022-02-14", "2022-07-01"} <= versions
    assert {"2023-07-01", "2024-02-01", "2025-10-01"} <= versions
    assert sources == set(SOURCES)
    assert customizers == set(CUSTOMIZERS)
    assert validators == set(VALIDATORS)
    assert distributors == set(DISTRIBUTORS)
    assert all(t.provenance for t in ALL) and 20 <= len(ALL) <= 40


@pytest.mark.parametrize("t", [t for t in ALL if not t.accepted], ids=lambda t: t.name)
def test_invalid_real_world_template_is_refused_like_aib(
    t: RealWorld, created: dict[str, Any], http: requests.Session, app_runtime: AppRuntime
) -> None:
    exc = created[t.name]
    assert isinstance(exc, HttpResponseError), f"{t.name} was accepted: {exc}"
    assert exc.status_code == t.expect["status"]
    assert exc.error is not None
    assert (exc.error.code, exc.error.target) == (t.expect["code"], t.expect["target"])
    assert exc.error.message and t.expect["target"].split(".")[-1].split("[")[0] in exc.error.message
    gone = http.get(url(app_runtime, tmpl_name(t), api=t.api_version))
    assert gone.status_code == 404, "a refused template is not stored"


@pytest.mark.parametrize("t", ACCEPTED, ids=lambda t: t.name)
def test_real_world_template_round_trips(
    t: RealWorld,
    created: dict[str, Any],
    clients: dict[str, ImageBuilderClient],
    http: requests.Session,
    app_runtime: AppRuntime,
) -> None:
    result = created[t.name]
    name = tmpl_name(t)
    failure = local_failure(t)
    if failure is None:
        assert not isinstance(result, Exception), f"{t.name} ({t.provenance}) was refused: {result}"
        assert result.name == name and result.provisioning_state == "Succeeded"
    else:  # accepted, then the create's checks fail: the poller raises, the template stays (Failed)
        assert isinstance(result, HttpResponseError) and result.error is not None, result
        assert result.error.code == failure, result.error

    raw = http.get(url(app_runtime, name, api=t.api_version))
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["id"] == f"/subscriptions/{SUB}/resourceGroups/{RG}/{PROVIDER}/{name}"
    assert (body["name"], body["type"]) == (name, "Microsoft.VirtualMachineImages/imageTemplates")
    if failure is None:
        assert body["properties"]["provisioningState"] == "Succeeded"
        given = t.template["properties"].get("stagingResourceGroup")
        staging = body["properties"]["exactStagingResourceGroup"]
        assert staging == given if given else staging.split("/")[-1].startswith("IT_"), staging
    else:
        assert body["properties"]["provisioningState"] == "Failed"
        assert body["properties"]["provisioningError"]["provisioningErrorCode"] == failure
    assert user_view(body) == expected_view(t), "GET returns the template as it was sent"
    assert datetime.fromisoformat(body["systemData"]["createdAt"].replace("Z", "+00:00"))

    client = clients[t.api_version]
    ops = client.virtual_machine_image_templates
    got = ops.get(RG, name)
    assert got.as_dict() == body, "the SDK's model holds every member of the response"
    if failure is None:
        assert result.as_dict() == body, "the create poller's final body is the template"
    assert isinstance(got.system_data.created_at, datetime)
    props = got.properties
    assert type(props.source) is SOURCES[body["properties"]["source"]["type"]]
    for step, raw_step in zip(props.customize or [], body["properties"].get("customize") or [], strict=True):
        assert type(step) is CUSTOMIZERS[raw_step["type"]]
    for val, raw_val in zip(
        (props.validate.in_vm_validations or []) if props.validate else [],
        (body["properties"].get("validate") or {}).get("inVMValidations") or [],
        strict=True,
    ):
        assert type(val) is VALIDATORS[raw_val["type"]]
    for dist, raw_dist in zip(props.distribute, body["properties"]["distribute"], strict=True):
        assert type(dist) is DISTRIBUTORS[raw_dist["type"]]
        assert dist.run_output_name == raw_dist["runOutputName"]

    # an identical PUT (what a re-run deployment sends) is idempotent: 200, nothing changes
    again = http.put(url(app_runtime, name, api=t.api_version), json=t.template)
    assert again.status_code == 200, again.text
    assert user_view(again.json()) == expected_view(t)

    # tags change through PATCH; the rest of the template stays as it was
    tags = {**(t.template.get("tags") or {}), "conformance": "checked"}
    updated = ops.begin_update(RG, name, m.ImageTemplateUpdateParameters(tags=tags)).result()
    assert updated.tags == tags
    after = http.get(url(app_runtime, name, api=t.api_version)).json()
    assert after["tags"] == tags
    assert user_view(after)["properties"] == expected_view(t)["properties"]
    assert after["systemData"]["lastModifiedAt"] >= body["systemData"]["lastModifiedAt"]
    assert ops.get(RG, name).as_dict() == after


def test_list_raw_and_sdk_agree(
    created: dict[str, Any],
    clients: dict[str, ImageBuilderClient],
    http: requests.Session,
    app_runtime: AppRuntime,
) -> None:
    ops = clients["2025-10-01"].virtual_machine_image_templates
    raw_items: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url(app_runtime)
    while next_url:
        page = http.get(next_url)
        assert page.status_code == 200, page.text
        data = page.json()
        assert len(data["value"]) <= PAGE_SIZE
        raw_items += data["value"]
        next_url = data.get("nextLink")
        pages += 1
    assert pages == -(-len(ACCEPTED) // PAGE_SIZE)
    sdk_items = [t.as_dict() for t in ops.list_by_resource_group(RG)]
    by_name = {i["name"]: i for i in raw_items}
    assert sorted(by_name) == sorted(tmpl_name(t) for t in ACCEPTED)
    # the template may be re-tagged between the two listings by no one: they must match exactly
    assert {i["name"]: i for i in sdk_items} == by_name
    sub_items = {t.name: t.as_dict() for t in ops.list()}
    assert sub_items == by_name


def test_delete_every_real_world_template(
    created: dict[str, Any],
    clients: dict[str, ImageBuilderClient],
    http: requests.Session,
    app_runtime: AppRuntime,
) -> None:
    def delete(t: RealWorld) -> None:
        clients[t.api_version].virtual_machine_image_templates.begin_delete(RG, tmpl_name(t)).result()

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(delete, ACCEPTED))
    for t in ACCEPTED:
        gone = http.get(url(app_runtime, tmpl_name(t), api=t.api_version))
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "ResourceNotFound"
        with pytest.raises(ResourceNotFoundError):
            clients[t.api_version].virtual_machine_image_templates.get(RG, tmpl_name(t))
    assert list(clients["2025-10-01"].virtual_machine_image_templates.list_by_resource_group(RG)) == []
