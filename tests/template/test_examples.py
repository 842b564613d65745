"""Golden tests: every example body in spec/examples/ parses and dumps back to equivalent JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.template import (
    ImageTemplateLastRunStatus,
    RunOutput,
    TriggerStatus,
    parse_template,
    parse_template_update,
    parse_trigger,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "spec" / "examples"

TEMPLATE_READ_ONLY = ("id", "name", "type", "systemData")
PROPERTIES_READ_ONLY = (
    "provisioningState",
    "provisioningError",
    "lastRunStatus",
    "exactStagingResourceGroup",
)


def _load(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())


def _examples(operation_prefix: str) -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob(f"{operation_prefix}*.json"))


def _without_read_only(body: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in TEMPLATE_READ_ONLY}
    if "properties" in out:
        props = {k: v for k, v in out["properties"].items() if k not in PROPERTIES_READ_ONLY}
        if isinstance(props.get("source"), dict):
            props["source"] = {k: v for k, v in props["source"].items() if k != "exactVersion"}
        out["properties"] = props
    identity = out.get("identity")
    if identity and identity.get("userAssignedIdentities"):
        out["identity"] = {
            **identity,
            "userAssignedIdentities": {key: {} for key in identity["userAssignedIdentities"]},
        }
    return out


def _template_bodies() -> list[tuple[str, dict[str, Any]]]:
    """Every template body in the examples: PUT requests and every response that holds a template."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(EXAMPLES.glob("*.json")):
        doc = json.loads(path.read_text())
        if path.name.startswith("CreateImageTemplate"):
            found.append((f"{path.name}:request", doc["parameters"]["parameters"]))
        for status, resp in doc["responses"].items():
            body = resp.get("body") if isinstance(resp, dict) else None
            if not isinstance(body, dict):
                continue
            items = body.get("value", [body])
            for i, item in enumerate(items):
                if str(item.get("type", "")).endswith("/imageTemplates"):
                    found.append((f"{path.name}:{status}[{i}]", item))
    return found


def test_examples_are_present() -> None:
    assert len(list(EXAMPLES.glob("*.json"))) >= 18


@pytest.mark.parametrize(("label", "body"), _template_bodies(), ids=lambda v: v if isinstance(v, str) else "")
def test_template_round_trip(label: str, body: dict[str, Any]) -> None:
    template = parse_template(body)
    assert template.to_arm() == _without_read_only(body)
    # and again from our own output: a fixed point
    assert parse_template(template.to_arm()).to_arm() == template.to_arm()


@pytest.mark.parametrize("name", _examples("UpdateImageTemplate"))
def test_update_examples(name: str) -> None:
    doc = _load(name)
    update = parse_template_update(
        doc["parameters"]["parameters"], api_version=doc["parameters"]["api-version"]
    )
    assert update.to_json() == doc["parameters"]["parameters"]


@pytest.mark.parametrize("name", _examples("CreateSourceImageTrigger"))
def test_trigger_examples(name: str) -> None:
    doc = _load(name)
    trigger = parse_trigger(doc["parameters"]["parameters"])
    assert trigger.to_arm() == doc["parameters"]["parameters"]
    for resp in doc["responses"].values():
        assert parse_trigger(resp["body"]).to_arm() == {"properties": {"kind": "SourceImage"}}


def _response_bodies(type_suffix: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.json")):
        for resp in json.loads(path.read_text())["responses"].values():
            body = resp.get("body") if isinstance(resp, dict) else None
            if isinstance(body, dict):
                for item in body.get("value", [body]):
                    if str(item.get("type", "")).endswith(type_suffix):
                        found.append(item)
    return found


def test_run_output_responses_round_trip() -> None:
    bodies = _response_bodies("/runOutputs")
    assert bodies
    for body in bodies:
        assert RunOutput.model_validate(body).to_json() == body


def test_trigger_status_responses_round_trip() -> None:
    bodies = _response_bodies("/triggers")
    assert bodies
    for body in bodies:
        assert (
            TriggerStatus.model_validate(body["properties"]["status"]).to_json()
            == body["properties"]["status"]
        )


def test_last_run_status_shape() -> None:
    status = ImageTemplateLastRunStatus(
        start_time="2026-01-01T00:00:00Z",
        run_state="Running",
        run_sub_state="Customizing",
        message="customize[0]",
    )
    assert status.to_json() == {
        "startTime": "2026-01-01T00:00:00Z",
        "runState": "Running",
        "runSubState": "Customizing",
        "message": "customize[0]",
    }
