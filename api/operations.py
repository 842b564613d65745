"""GET /providers/Microsoft.VirtualMachineImages/operations: the resource provider's operation catalog; and
GET /subscriptions/{id}/providers/Microsoft.VirtualMachineImages: the provider's registration, which ARM
(Microsoft.Resources) serves and `az resource ...` reads to pick an api-version for each resource type."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import azure.durable_functions as df
import azure.functions as func

from api._arm import PROVIDER, SUBSCRIPTION, api_version, arm, json_response, subscription
from imagebuilder.template import SUPPORTED_API_VERSIONS

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


# The regions AIB is offered in (display names, as Microsoft.Resources lists them); every one works here.
_REGIONS = (
    "East US",
    "East US 2",
    "West Central US",
    "West US",
    "West US 2",
    "West US 3",
    "South Central US",
    "North Central US",
    "Central US",
    "Canada Central",
    "Canada East",
    "Brazil South",
    "North Europe",
    "West Europe",
    "UK South",
    "UK West",
    "France Central",
    "Germany West Central",
    "Switzerland North",
    "Sweden Central",
    "Norway East",
    "Italy North",
    "Poland Central",
    "Australia East",
    "Australia Southeast",
    "Central India",
    "Southeast Asia",
    "East Asia",
    "Japan East",
    "Korea Central",
    "South Africa North",
    "UAE North",
    "Qatar Central",
    "Israel Central",
)


def _resource_type(name: str, *, located: bool = True) -> dict[str, object]:
    return {
        "resourceType": name,
        "locations": list(_REGIONS) if located else [],
        "apiVersions": list(reversed(SUPPORTED_API_VERSIONS)),
        "defaultApiVersion": SUPPORTED_API_VERSIONS[-1],
        "capabilities": "None",
    }


@bp.route(route=SUBSCRIPTION + "/providers/" + PROVIDER, methods=["GET"])
@arm
def provider_registration(req: func.HttpRequest) -> func.HttpResponse:
    """Providers_Get (Microsoft.Resources) for this provider: registered, with each resource type's
    api-versions newest first. Its api-version is Microsoft.Resources', so any value is accepted."""
    if not req.params.get("api-version"):
        api_version(req)  # raises MissingApiVersionParameter
    sub = subscription(req)
    return json_response(
        {
            "id": f"/subscriptions/{sub}/providers/{PROVIDER}",
            "namespace": PROVIDER,
            "registrationState": "Registered",
            "registrationPolicy": "RegistrationRequired",
            "resourceTypes": [
                _resource_type("imageTemplates"),
                _resource_type("imageTemplates/triggers"),
                _resource_type("imageTemplates/runOutputs"),
                _resource_type("locations/operations"),
                _resource_type("operations", located=False),
            ],
        }
    )
