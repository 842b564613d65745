"""Every example of the spec (spec/examples/) through the API: documented status codes, headers
and body shapes. Values the service cannot know locally are named in IGNORED (and nothing else)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from api._arm import store as api_store
from imagebuilder.pipeline.messages import RunRef
from tests.api.conftest import Direct

EXAMPLES = Path(__file__).resolve().parents[2] / "spec" / "examples"
READ_ONLY = ("id", "name", "type", "systemData")
# Set by the clock: compared by presence only.
IGNORED = {"time"}
# Resolved by ARM from the managed identity, which does not exist without Azure: not served.
UNKNOWABLE = {"clientId", "principalId"}
# The examples' nextLinks page through data sets larger than the ones they show.
NOT_SHOWN = {"nextLink"}


# Typos in the examples themselves: (file, wrong text, what the request sent).
ERRATA = [("UpdateImageTemplateVmProfile.json", '"{updated_aci_subnet}}"', '"{updated_aci_subnet}"')]


def load(name: str, sub: str) -> dict[str, Any]:
    text = (EXAMPLES / name).read_text().replace("{subscription-id}", sub)
    for file, wrong, right in ERRATA:
        if file == name:
            assert wrong in text, f"erratum fixed upstream? {file}: {wrong}"
            text = text.replace(wrong, right)
    data: dict[str, Any] = json.loads(text)
    return data


def conforms(actual: Any, documented: Any, path: str = "") -> None:
    """`actual` has every documented member with the documented value (ids compared case-insensitively,
    as ARM does); extra members are allowed (e.g. provisioningState, systemData)."""
    if isinstance(documented, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        for key, value in documented.items():
            if key in NOT_SHOWN or key in UNKNOWABLE:
                continue
            assert key in actual, f"{path}.{key} missing from {sorted(actual)}"
            if key in IGNORED:
                continue
            conforms(actual[key], value, f"{path}.{key}")
    elif isinstance(documented, list):
        assert isinstance(actual, list) and len(actual) == len(documented), f"{path}: {actual!r}"
        for i, (a, d) in enumerate(zip(actual, documented, strict=True)):
            conforms(a, d, f"{path}[{i}]")
    elif path.endswith(".id") and isinstance(documented, str):
        assert str(actual).lower() == documented.lower(), f"{path}: {actual!r} != {documented!r}"
    else:
        assert actual == documented, f"{path}: {actual!r} != {documented!r}"


def url(p: dict[str, Any], suffix: str = "") -> str:
    base = f"/subscriptions/{p['subscriptionId']}"
    if "resourceGroupName" in p:
        base += f"/resourceGroups/{p['resourceGroupName']}"
    base += "/providers/Microsoft.VirtualMachineImages/imageTemplates"
    if "imageTemplateName" in p:
        base += f"/{p['imageTemplateName']}"
    return f"{base}{suffix}?api-version={p['api-version']}"


def as_request(body: dict[str, Any]) -> dict[str, Any]:
    """A documented response body turned back into a PUT body (read-only members dropped)."""
    out = {k: v for k, v in body.items() if k not in READ_ONLY}
    out["properties"] = {
        k: v for k, v in body["properties"].items() if k not in ("provisioningState", "lastRunStatus")
    }
    if "identity" in out:
        ids = out["identity"].get("userAssignedIdentities")
        if ids:
            out["identity"] = {**out["identity"], "userAssignedIdentities": {k: {} for k in ids}}
    return out


def seed(direct: Direct, body: dict[str, Any]) -> None:
    sub, _, rg, _, _, _, name = body["id"].strip("/").split("/")[1:8]
    p = {
        "subscriptionId": sub,
        "resourceGroupName": rg,
        "imageTemplateName": name,
        "api-version": "2025-10-01",
    }
    created = direct.put(url(p), as_request(body))
    assert created.status == 201, created.text


Case = Callable[[Direct, str], None]


def create_template(example: str) -> Case:
    def case(direct: Direct, sub: str) -> None:
        ex = load(example, sub)
        p = ex["parameters"]
        first = direct.put(url(p), p["parameters"])
        assert first.status == 201, first.text
        conforms(first.json, ex["responses"]["201"]["body"])
        assert first.headers["Azure-AsyncOperation"] and first.headers["Retry-After"]
        again = direct.put(url(p), p["parameters"])
        assert again.status == 200
        conforms(again.json, ex["responses"]["201"]["body"])  # identical PUT: same template
        assert set(again.json) >= set(ex["responses"]["200"]["body"])

    return case


def get_template(direct: Direct, sub: str) -> None:
    ex = load("GetImageTemplate.json", sub)
    seed(direct, ex["responses"]["200"]["body"])
    got = direct.get(url(ex["parameters"]))
    assert got.status == 200
    conforms(got.json, ex["responses"]["200"]["body"])


def list_templates(example: str) -> Case:
    def case(direct: Direct, sub: str) -> None:
        ex = load(example, sub)
        for body in ex["responses"]["200"]["body"]["value"]:
            seed(direct, body)
        listed: list[dict[str, Any]] = []
        link: str | None = url(ex["parameters"])
        while link:
            page = direct.get(link)
            assert page.status == 200, page.text
            listed += page.json["value"]
            link = page.json.get("nextLink")
        documented = ex["responses"]["200"]["body"]["value"]
        listed.sort(key=lambda t: [d["id"].lower() for d in documented].index(t["id"].lower()))
        conforms(listed, documented)

    return case


def update_template(example: str, before: Callable[[dict[str, Any]], dict[str, Any]]) -> Case:
    def case(direct: Direct, sub: str) -> None:
        ex = load(example, sub)
        documented = ex["responses"]["200"]["body"]
        seed(direct, before(json.loads(json.dumps(documented))))
        p = ex["parameters"]
        patched = direct.patch(url(p), p["parameters"])
        assert patched.status == 200, patched.text
        conforms(patched.json, documented)
        conforms(direct.get(url(p)).json, documented)

    return case


def _without_tags(body: dict[str, Any]) -> dict[str, Any]:
    body.pop("tags", None)
    return body


def _with_identity(body: dict[str, Any]) -> dict[str, Any]:
    body["identity"] = load("GetImageTemplate.json", "x")["responses"]["200"]["body"]["identity"]
    return body


def _old_vm_profile(body: dict[str, Any]) -> dict[str, Any]:
    body["properties"]["vmProfile"] = {"vmSize": "Standard_D2s_v3", "osDiskSizeGB": 64}
    return body


def delete_template(direct: Direct, sub: str) -> None:
    ex = load("DeleteImageTemplate.json", sub)
    seed(direct, load("GetImageTemplate.json", sub)["responses"]["200"]["body"])
    gone = direct.delete(url(ex["parameters"]))
    assert gone.status == 202
    # The example's Location names an operation of the RP's location; ours is its result resource
    # (202 until done, then the outcome), the ARM pattern the SDK's location polling expects.
    assert (
        "/providers/microsoft.virtualmachineimages/locations/westus/operation"
        in gone.headers["Location"].lower()
    )
    assert gone.headers["Azure-AsyncOperation"]
    assert direct.delete(url(ex["parameters"])).status == 204


def run_outputs(direct: Direct, sub: str) -> None:
    ex = load("ListRunOutputs.json", sub)
    p = ex["parameters"]
    seed(direct, load("GetImageTemplate.json", sub)["responses"]["200"]["body"])
    # The outputs are what a finished build records through the store (no build runs here).
    st = api_store()
    template = st.templates.get(sub, p["resourceGroupName"], p["imageTemplateName"])
    assert template is not None
    ref = RunRef(
        subscription_id=sub,
        resource_group=p["resourceGroupName"],
        template_name=p["imageTemplateName"],
        run_id=f"run-{uuid.uuid4().hex[:8]}",
    )
    st.runs.create(ref, template_snapshot=template.resource)
    for output in ex["responses"]["200"]["body"]["value"]:
        st.runs.put_output(ref, output["name"], output["properties"])
    st.runs.set_status(ref, run_state="Succeeded")
    listed = direct.get(url(p, "/runOutputs"))
    assert listed.status == 200
    conforms(listed.json, ex["responses"]["200"]["body"])
    one = load("GetRunOutput.json", sub)
    got = direct.get(url(one["parameters"], f"/runOutputs/{one['parameters']['runOutputName']}"))
    assert got.status == 200
    conforms(got.json, one["responses"]["200"]["body"])


def triggers(direct: Direct, sub: str) -> None:
    create = load("CreateSourceImageTrigger.json", sub)
    p = create["parameters"]
    seed(direct, load("GetImageTemplate.json", sub)["responses"]["200"]["body"])
    first = direct.put(url(p, f"/triggers/{p['triggerName']}"), p["parameters"])
    assert first.status == 201, first.text
    conforms(first.json, create["responses"]["201"]["body"])
    second = direct.put(url(p, f"/triggers/{p['triggerName']}"), p["parameters"])
    assert second.status == 200
    conforms(second.json, create["responses"]["200"]["body"])
    get = load("GetTrigger.json", sub)
    conforms(direct.get(url(get["parameters"], "/triggers/source")).json, get["responses"]["200"]["body"])
    lst = load("ListTriggers.json", sub)
    conforms(direct.get(url(lst["parameters"], "/triggers")).json, lst["responses"]["200"]["body"])
    delete = load("DeleteTrigger.json", sub)
    dp = delete["parameters"]
    direct.put(url(dp, f"/triggers/{dp['triggerName']}"), p["parameters"])
    gone = direct.delete(url(dp, f"/triggers/{dp['triggerName']}"))
    assert gone.status == 202 and gone.headers["Location"]
    assert direct.delete(url(dp, f"/triggers/{dp['triggerName']}")).status == 204


def operations_list(direct: Direct, sub: str) -> None:
    ex = load("OperationsList.json", sub)
    got = direct.get(
        f"/providers/Microsoft.VirtualMachineImages/operations?api-version={ex['parameters']['api-version']}"
    )
    assert got.status == 200
    conforms(got.json, ex["responses"]["200"]["body"])


CASES: dict[str, Case] = {
    "CreateImageTemplateLinux.json": create_template("CreateImageTemplateLinux.json"),
    "CreateImageTemplateWindows.json": create_template("CreateImageTemplateWindows.json"),
    "GetImageTemplate.json": get_template,
    "ListImageTemplates.json": list_templates("ListImageTemplates.json"),
    "ListImageTemplatesByRg.json": list_templates("ListImageTemplatesByRg.json"),
    "UpdateImageTemplateTags.json": update_template("UpdateImageTemplateTags.json", _without_tags),
    "UpdateImageTemplateToRemoveIdentities.json": update_template(
        "UpdateImageTemplateToRemoveIdentities.json", _with_identity
    ),
    "UpdateImageTemplateVmProfile.json": update_template(
        "UpdateImageTemplateVmProfile.json", _old_vm_profile
    ),
    "DeleteImageTemplate.json": delete_template,
    "ListRunOutputs.json": run_outputs,
    "GetRunOutput.json": run_outputs,
    "CreateSourceImageTrigger.json": triggers,
    "GetTrigger.json": triggers,
    "ListTriggers.json": triggers,
    "DeleteTrigger.json": triggers,
    "OperationsList.json": operations_list,
}
# RunImageTemplate.json and CancelImageBuild.json need a durable host: tests/api/test_sdk_runtime.py.
WITH_RUNTIME = {"RunImageTemplate.json", "CancelImageBuild.json"}


def test_every_example_is_covered() -> None:
    names = {p.name for p in EXAMPLES.glob("*.json")}
    assert names, f"no examples under {EXAMPLES}"
    assert names == set(CASES) | WITH_RUNTIME


@pytest.mark.parametrize("example", sorted(CASES))
def test_example(api: Direct, example: str) -> None:
    """Each example twice: handler by handler, and over HTTP through the local runtime."""
    CASES[example](api, str(uuid.uuid4()))
