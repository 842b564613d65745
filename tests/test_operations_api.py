"""Operations_List answers exactly the spec's example (called the way the worker calls an HTTP function)."""

from __future__ import annotations

import json
from pathlib import Path

import azure.functions as func

from api.operations import operations_list

SPEC = Path(__file__).resolve().parents[1] / "spec" / "examples" / "OperationsList.json"


def test_operations_list_matches_spec_example() -> None:
    req = func.HttpRequest(
        "GET",
        "/providers/Microsoft.VirtualMachineImages/operations",
        params={"api-version": "2025-10-01"},
        body=b"",
    )
    resp = operations_list(req)
    assert resp.status_code == 200
    body = json.loads(resp.get_body())
    names = [op["name"] for op in body["value"]]
    assert "Microsoft.VirtualMachineImages/imageTemplates/run/action" in names
    if SPEC.exists():
        assert body == json.loads(SPEC.read_text())["responses"]["200"]["body"]
