"""GET /providers/Microsoft.VirtualMachineImages/operations: the resource provider's operation catalog."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import azure.durable_functions as df
import azure.functions as func

from api._arm import api_version, arm

bp = df.Blueprint()

_CATALOG = Path(__file__).with_name("operations_catalog.json")


@cache
def _operations() -> list[dict[str, object]]:
    data: list[dict[str, object]] = json.loads(_CATALOG.read_text())
    return data


@bp.route(route="providers/Microsoft.VirtualMachineImages/operations", methods=["GET"])
@arm
def operations_list(req: func.HttpRequest) -> func.HttpResponse:
    """Operations_List: the RP's operations, the same on every call."""
    api_version(req)
    return func.HttpResponse(
        json.dumps({"value": _operations()}), status_code=200, mimetype="application/json"
    )
