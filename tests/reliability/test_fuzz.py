"""API fuzzing with schemathesis from the project's copy of the REST spec, against the running app (the
local runtime over HTTP, with the function key): every operation, generated path/query/body; no 5xx,
every 4xx with a body in ARM's error shape (the host's own empty 401/404 aside, see README), and no
half-written template: everything the fuzzer managed to store reads back whole and valid.

The spec's common-types references (ARM's shared parameter and resource definitions, not copied into
spec/) are resolved here with their published shapes."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from imagebuilder.template import parse_template
from tests.reliability.audit import wait_clean
from tests.reliability.conftest import Rel, pick, record

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(3600)]

SPEC = Path(__file__).resolve().parents[2] / "spec" / "imagebuilder-2025-10-01.openapi.json"
COMMON = "../../../../../../common-types/resource-management/v3/types.json"
API = "2025-10-01"

_COMMON_PARAMETERS = {
    "ApiVersionParameter": {"name": "api-version", "in": "query", "required": True, "type": "string"},
    "SubscriptionIdParameter": {"name": "subscriptionId", "in": "path", "required": True, "type": "string"},
    "ResourceGroupNameParameter": {
        "name": "resourceGroupName",
        "in": "path",
        "required": True,
        "type": "string",
        "minLength": 1,
        "maxLength": 90,
    },
}
_COMMON_DEFINITIONS = {
    "ErrorResponse": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "target": {"type": "string"},
                    "details": {"type": "array", "items": {"type": "object"}},
                },
            }
        },
    },
    "ProxyResource": {
        "type": "object",
        "properties": {n: {"type": "string", "readOnly": True} for n in ("id", "name", "type")},
    },
    "TrackedResource": {
        "type": "object",
        "properties": {
            **{n: {"type": "string", "readOnly": True} for n in ("id", "name", "type")},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "location": {"type": "string"},
        },
        "required": ["location"],
    },
}


def _resolved_spec() -> dict[str, Any]:
    text = SPEC.read_text()
    for name in _COMMON_PARAMETERS:
        text = text.replace(f"{COMMON}#/parameters/{name}", f"#/parameters/Common{name}")
    for name in _COMMON_DEFINITIONS:
        text = text.replace(f"{COMMON}#/definitions/{name}", f"#/definitions/Common{name}")
    doc: dict[str, Any] = json.loads(text)
    doc.setdefault("parameters", {}).update({f"Common{k}": v for k, v in _COMMON_PARAMETERS.items()})
    doc.setdefault("definitions", {}).update({f"Common{k}": v for k, v in _COMMON_DEFINITIONS.items()})
    return doc


def _arm_shaped(text: str) -> bool:
    try:
        body = json.loads(text)
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    )


def test_fuzzed_requests_never_5xx_and_never_leave_half_written_templates(rel: Rel) -> None:
    schema = schemathesis.openapi.from_dict(_resolved_spec())
    per_operation = pick(15, 250)
    sub = str(uuid.uuid4())
    session = requests.Session()
    session.headers["x-functions-key"] = rel.runtime.key
    base = rel.runtime.base_url
    statuses: Counter[int] = Counter()
    bad_shape: list[str] = []
    server_errors: list[str] = []
    host_level = [0]
    operations = [r.ok() for r in schema.get_all_operations()]
    for op in operations:

        @settings(
            max_examples=per_operation,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy())
        def fuzz(case: Any) -> None:
            case.path_parameters = {**(case.path_parameters or {}), "subscriptionId": sub}
            if statuses.total() % 4:  # most requests get a valid api-version, to reach the handlers
                case.query = {**(case.query or {}), "api-version": API}
            kwargs = case.as_transport_kwargs(base_url=base)
            kwargs.pop("headers", None)
            resp = session.request(timeout=60, allow_redirects=False, **kwargs)
            statuses[resp.status_code] += 1
            what = f"{kwargs.get('method')} {kwargs.get('url')} -> {resp.status_code}: {resp.text[:200]}"
            json_body = "json" in resp.headers.get("content-type", "")
            if resp.status_code >= 500:
                server_errors.append(what)
            elif resp.status_code in (401, 404) and not json_body:
                host_level[0] += 1  # the host's own answer before any handler (README, API notes)
            elif resp.status_code >= 400 and not _arm_shaped(resp.text):
                bad_shape.append(what)

        fuzz()
    # Whatever the fuzzer managed to store is whole: every listed template reads back valid.
    listed = session.get(
        f"{base}/subscriptions/{sub}/providers/Microsoft.VirtualMachineImages/imageTemplates",
        params={"api-version": API},
        timeout=60,
    )
    assert listed.status_code == 200, listed.text
    half_written = []
    for item in listed.json().get("value", []):
        try:
            parse_template(
                {k: v for k, v in item.items() if k in ("location", "tags", "identity", "properties")}
            )
        except Exception as exc:
            half_written.append(f"{item.get('id')}: {exc}")
    total = statuses.total()
    # builds the fuzzer started (a valid PUT then POST .../run) end within the scaled build timeout
    leaks = wait_clean(rel.provider_state, rel.cache_dir, rel.store, timeout=180)
    record(
        "fuzz",
        f"schemathesis, {len(operations)} operations of the spec",
        total,
        lost=len(server_errors) + len(half_written),
        leaked=leaks.total(),
        note=f"5xx {len(server_errors)}, non-ARM 4xx {len(bad_shape)}, half-written {len(half_written)}, "
        f"host-level 401/404 (no handler) {host_level[0]}; "
        + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
    )
    assert not server_errors, server_errors[:5]
    assert not bad_shape, bad_shape[:5]
    assert not half_written, half_written[:5]
    assert leaks.total() == 0, leaks
