"""Bad templates: one case per rule, each a 400 naming the JSON path with AIB's code (ARM's where AIB has
none), and nothing stored; and a property-based fuzz of PUT/PATCH bodies that never gets a 5xx and never
leaves a partial template behind."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api._arm import store as api_store
from tests.api.conftest import Direct, minimal_template, template_url

Edit = Callable[[dict[str, Any]], Any]
SIG = "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/galleries/g/images/i"


def _props(t: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = t["properties"]
    return props


# (case, edit of a valid template, status, code, target)
CASES: list[tuple[str, Edit, str, str]] = [
    (
        "scriptUri and inline both",
        lambda t: _props(t)["customize"][0].update(scriptUri="https://example.com/s.sh"),
        "InvalidParameter",
        "properties.customize[0].inline",
    ),
    (
        "neither scriptUri nor inline",
        lambda t: _props(t)["customize"][0].pop("inline"),
        "NoCustomizerScript",
        "properties.customize[0].scriptUri",
    ),
    (
        "runAsSystem without runElevated",
        lambda t: _props(t)["customize"].append(
            {"type": "PowerShell", "name": "p", "inline": ["x"], "runAsSystem": True}
        ),
        "InvalidParameter",
        "properties.customize[1].runAsSystem",
    ),
    (
        "unknown customizer type",
        lambda t: _props(t)["customize"].append({"type": "Ansible", "name": "a"}),
        "BadCustomizerType",
        "properties.customize[1].type",
    ),
    (
        "unknown source type",
        lambda t: _props(t).update(source={"type": "ISO"}),
        "BadSourceType",
        "properties.source.type",
    ),
    (
        "platform image without offer",
        lambda t: _props(t)["source"].pop("offer"),
        "BadPIRSource",
        "properties.source.offer",
    ),
    (
        "buildTimeoutInMinutes above 960",
        lambda t: _props(t).update(buildTimeoutInMinutes=961),
        "InvalidParameter",
        "properties.buildTimeoutInMinutes",
    ),
    (
        "targetRegions with replicationRegions",
        lambda t: _props(t).update(
            distribute=[
                {
                    "type": "SharedImage",
                    "runOutputName": "s",
                    "galleryImageId": SIG,
                    "replicationRegions": ["westus"],
                    "targetRegions": [{"name": "eastus"}],
                }
            ]
        ),
        "BadSharedImageDistribute",
        "properties.distribute[0].replicationRegions",
    ),
    (
        "shared image without galleryImageId",
        lambda t: _props(t).update(distribute=[{"type": "SharedImage", "runOutputName": "s"}]),
        "BadSharedImageDistribute",
        "properties.distribute[0].galleryImageId",
    ),
    (
        "runOutputName pattern",
        lambda t: _props(t)["distribute"][0].update(runOutputName="bad name!"),
        "InvalidParameter",
        "properties.distribute[0].runOutputName",
    ),
    (
        "unknown distribute type",
        lambda t: _props(t)["distribute"][0].update(type="Tape"),
        "BadDistributeType",
        "properties.distribute[0].type",
    ),
    (
        "relative File destination",
        lambda t: _props(t)["customize"].append(
            {"type": "File", "name": "f", "sourceUri": "https://example.com/f", "destination": "rel/path"}
        ),
        "InvalidParameter",
        "properties.customize[1].destination",
    ),
    (
        "containerInstanceSubnetId without subnetId",
        lambda t: _props(t).update(
            vmProfile={
                "vnetConfig": {
                    "containerInstanceSubnetId": "/subscriptions/s/resourceGroups/r/providers/"
                    "Microsoft.Network/virtualNetworks/v/subnets/aci"
                }
            }
        ),
        "InvalidParameter",
        "properties.vmProfile.vnetConfig.containerInstanceSubnetId",
    ),
    (
        "validator without script",
        lambda t: _props(t).update(validate={"inVMValidations": [{"type": "Shell", "name": "v"}]}),
        "NoValidatorScript",
        "properties.validate.inVMValidations[0].scriptUri",
    ),
    (
        "unknown validator type",
        lambda t: _props(t).update(validate={"inVMValidations": [{"type": "Nope", "name": "v"}]}),
        "BadValidatorType",
        "properties.validate.inVMValidations[0].type",
    ),
    (
        "stagingResourceGroup not a resource group id",
        lambda t: _props(t).update(stagingResourceGroup="not-an-id"),
        "BadStagingResourceGroup",
        "properties.stagingResourceGroup",
    ),
    (
        "bad sha256Checksum",
        lambda t: _props(t)["customize"].append(
            {"type": "Shell", "name": "s", "scriptUri": "https://example.com/s.sh", "sha256Checksum": "zz"}
        ),
        "InvalidParameter",
        "properties.customize[1].sha256Checksum",
    ),
    ("no location", lambda t: t.pop("location"), "LocationRequired", "location"),
    ("no identity", lambda t: t.pop("identity"), "MissingRequiredProperty", "identity"),
    (
        "no distribute",
        lambda t: _props(t).pop("distribute"),
        "MissingRequiredProperty",
        "properties.distribute",
    ),
    (
        "wrong JSON type",
        lambda t: _props(t).update(customize="echo hi"),
        "InvalidRequestContent",
        "properties.customize",
    ),
]


def _error_targets(error: dict[str, Any]) -> list[tuple[str, str | None]]:
    found = [(error["code"], error.get("target"))]
    for detail in error.get("details") or []:
        found += _error_targets(detail)
    return found


@pytest.mark.parametrize(("case", "edit", "code", "target"), CASES, ids=[c[0] for c in CASES])
def test_bad_template_is_a_400_naming_the_path(
    direct: Direct, sub: str, case: str, edit: Edit, code: str, target: str
) -> None:
    body = minimal_template()
    edit(body)
    resp = direct.put(template_url(sub), body)
    assert resp.status == 400, f"{case}: {resp.status} {resp.text}"
    error = resp.json["error"]
    assert (code, target) in _error_targets(error), error
    assert error["message"] and "Traceback" not in resp.text
    assert direct.get(template_url(sub)).status == 404, "a rejected template must not be stored"


def test_bad_name_and_bad_body_are_not_stored(direct: Direct, sub: str) -> None:
    assert direct.put(template_url(sub, name="a" * 65), minimal_template()).json["error"]["target"] == (
        "imageTemplateName"
    )
    for raw in (b"[]", b"null", b'"text"', b"{", b"\xff\xfe"):
        resp = direct.put(template_url(sub), raw=raw)
        assert resp.status == 400, (raw, resp.text)
    assert api_store().templates.list_by_subscription(sub).items == []


# -- fuzz ----------------------------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
KEYS = [
    "location",
    "identity",
    "tags",
    "properties",
    "properties.source",
    "properties.source.type",
    "properties.customize",
    "properties.customize.0",
    "properties.customize.0.type",
    "properties.customize.0.inline",
    "properties.distribute",
    "properties.distribute.0",
    "properties.distribute.0.runOutputName",
    "properties.vmProfile",
    "properties.buildTimeoutInMinutes",
    "properties.validate",
    "properties.autoRun",
    "properties.optimize",
]


def _mutate(body: dict[str, Any], path: str, value: Any, delete: bool) -> dict[str, Any]:
    """Set (or delete) the member at a dotted path, if the path still exists in the body."""
    node: Any = body
    parts = path.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
        elif isinstance(node, dict):
            node = node.get(part)
        if not isinstance(node, dict | list):
            return body
    last = parts[-1]
    if isinstance(node, list):
        if last.isdigit() and int(last) < len(node):
            node[int(last)] = value
    elif delete:
        node.pop(last, None)
    else:
        node[last] = value
    return body


@settings(
    max_examples=int(os.environ.get("API_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    edits=st.lists(st.tuples(st.sampled_from(KEYS), json_value, st.booleans()), min_size=1, max_size=4),
    method=st.sampled_from(["PUT", "PATCH"]),
)
def test_fuzzed_bodies_never_5xx_and_never_half_stored(
    direct: Direct, edits: list[tuple[str, Any, bool]], method: str
) -> None:
    sub = str(uuid.uuid4())
    body = minimal_template()
    if method == "PATCH":
        assert direct.put(template_url(sub), body).status == 201
        before = direct.get(template_url(sub)).json
        patch: dict[str, Any] = {"tags": {"t": "v"}, "properties": {"vmProfile": {"vmSize": "x"}}}
        for path, value, delete in edits:
            patch = _mutate(patch, path, value, delete)
        resp = direct.patch(template_url(sub), patch)
    else:
        for path, value, delete in edits:
            body = _mutate(body, path, value, delete)
        resp = direct.put(template_url(sub), body)
    assert resp.status < 500, resp.text
    assert resp.status in (200, 201, 400, 409, 413), resp.text
    if resp.status >= 400:
        assert set(resp.json) == {"error"} and resp.json["error"]["code"]
    stored = direct.get(template_url(sub))
    if method == "PUT":
        if resp.status == 201:  # created, then settled by the GET (Creating -> Succeeded or Failed)
            service = ("provisioningState", "provisioningError", "exactStagingResourceGroup")
            assert stored.status == 200
            assert {k: v for k, v in stored.json["properties"].items() if k not in service} == {
                k: v for k, v in resp.json["properties"].items() if k not in service
            }
        else:
            assert stored.status == 404, "a rejected PUT left a template behind"
    else:
        assert stored.status == 200
        if resp.status >= 400:
            assert stored.json == before, "a rejected PATCH changed the template"
        else:
            assert stored.json["properties"] == resp.json["properties"]
    json.dumps(stored.json)  # what is stored is always whole, valid JSON


@settings(
    max_examples=int(os.environ.get("API_FUZZ_EXAMPLES", "60")) // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.text(
        alphabet=st.characters(blacklist_characters="/?#%", blacklist_categories=["Cs"]),
        min_size=1,
        max_size=70,
    ),
    trigger=json_value,
    version=st.sampled_from(["2025-10-01", "2022-07-01", "2019-05-01-preview", "2025-13-01", ""]),
)
def test_fuzzed_names_versions_and_trigger_bodies_never_5xx(
    direct: Direct, name: str, trigger: Any, version: str
) -> None:
    sub = str(uuid.uuid4())
    assert direct.put(template_url(sub), minimal_template()).status == 201
    from urllib.parse import quote

    quoted = quote(name, safe="")
    for resp in (
        direct.get(template_url(sub, name=quoted, api=version)),
        direct.put(template_url(sub, name=quoted, api=version), minimal_template()),
        direct.put(template_url(sub, suffix=f"/triggers/{quoted}", api=version), trigger),
        direct.post(template_url(sub, name=quoted, suffix="/cancel", api=version)),
        direct.get(template_url(sub, suffix=f"/runOutputs/{quoted}", api=version)),
    ):
        assert resp.status < 500 or resp.status == 503, resp.text
        if resp.status >= 400 and resp.text:
            assert resp.json["error"]["code"]
