"""Triggers of an image template: list, get, create-or-replace (PUT), delete."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from api._arm import (
    TEMPLATE,
    TRIGGER_TYPE,
    ArmError,
    api_version,
    arm,
    empty_response,
    json_response,
    location_slug,
    lro_headers,
    read_json,
    resource_name,
    store,
    template_coordinates,
    template_id,
    trigger_body,
)
from api.templates import deleting, load
from imagebuilder.template import parse_trigger

bp = df.Blueprint()

TRIGGERS = TEMPLATE + "/triggers"
TRIGGER = TRIGGERS + "/{triggerName}"


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@bp.route(route=TRIGGERS, methods=["GET"])
@arm
def triggers_list_by_image_template(req: func.HttpRequest) -> func.HttpResponse:
    """Triggers_ListByImageTemplate."""
    api_version(req)
    sub, rg, name = template_coordinates(req)
    st = store()
    stored = load(st, sub, rg, name)
    return json_response({"value": [trigger_body(t) for t in st.triggers.list(sub, rg, stored.name)]})


@bp.route(route=TRIGGER, methods=["GET"])
@arm
def triggers_get(req: func.HttpRequest) -> func.HttpResponse:
    """Triggers_Get."""
    api_version(req)
    sub, rg, name = template_coordinates(req)
    trigger_name = resource_name(req, "triggerName")
    st = store()
    load(st, sub, rg, name)
    trigger = st.triggers.get(sub, rg, name, trigger_name)
    if trigger is None:
        raise ArmError(
            404, "ResourceNotFound", f"The trigger '{trigger_name}' of image template '{name}' was not found."
        )
    return json_response(trigger_body(trigger))


@bp.route(route=TRIGGER, methods=["PUT"])
@arm
def triggers_create_or_update(req: func.HttpRequest) -> func.HttpResponse:
    """Triggers_CreateOrUpdate: 201 (new) or 200 (replaced), with Azure-AsyncOperation."""
    version = api_version(req)
    sub, rg, name = template_coordinates(req)
    trigger_name = resource_name(req, "triggerName")
    parsed = parse_trigger(read_json(req), api_version=version)
    st = store()
    stored = load(st, sub, rg, name)
    if stored.provisioning_state == "Deleting":
        raise deleting(stored.name)
    tid = template_id(sub, rg, stored.name)
    existing = st.triggers.get(sub, rg, stored.name, trigger_name)
    shown_name = existing.name if existing else trigger_name
    resource: dict[str, Any] = {
        "id": f"{tid}/triggers/{shown_name}",
        "name": shown_name,
        "type": TRIGGER_TYPE,
        "properties": {
            **parsed.to_arm()["properties"],
            "status": {"code": "Healthy", "message": "", "time": _now()},
            "provisioningState": "Succeeded",
        },
    }
    trigger, created = st.triggers.put(sub, rg, stored.name, trigger_name, resource)
    op = st.operations.create(
        sub,
        location_slug(str(stored.resource.get("location", ""))),
        kind="trigger",
        resource_id=resource["id"],
        status="Succeeded",
    )
    return json_response(
        trigger_body(trigger), 201 if created else 200, lro_headers(req, op, location=False, version=version)
    )


@bp.route(route=TRIGGER, methods=["DELETE"])
@arm
def triggers_delete(req: func.HttpRequest) -> func.HttpResponse:
    """Triggers_Delete: 202 with Location/Azure-AsyncOperation, 204 if absent."""
    version = api_version(req)
    sub, rg, name = template_coordinates(req)
    trigger_name = resource_name(req, "triggerName")
    st = store()
    stored = load(st, sub, rg, name)
    trigger = st.triggers.get(sub, rg, stored.name, trigger_name)
    if trigger is None:
        return empty_response(204)
    st.triggers.delete(sub, rg, stored.name, trigger_name, etag=trigger.etag)
    op = st.operations.create(
        sub,
        location_slug(str(stored.resource.get("location", ""))),
        kind="delete",
        resource_id=str(trigger.resource.get("id", "")),
        status="Succeeded",
    )
    return empty_response(202, lro_headers(req, op, location=True, version=version))
