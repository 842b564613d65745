"""Image templates: list (subscription, resource group), get, create (PUT), update (PATCH), delete.

AIB semantics: a template is immutable (a PUT that changes it is a 409; an identical PUT is idempotent,
tags may change), PATCH changes only tags, identity, vmProfile and distribute, `autoRun` starts a build
on create, and a template with a build in progress cannot be deleted.
"""

from __future__ import annotations

import json
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from api._arm import (
    PROVIDER,
    SUBSCRIPTION,
    TEMPLATE,
    TEMPLATE_TYPE,
    TEMPLATES,
    ArmError,
    api_version,
    arm,
    empty_response,
    in_thread,
    json_response,
    location_slug,
    lro_headers,
    method_not_allowed,
    next_link,
    page_size,
    read_json,
    resource_group,
    store,
    subscription,
    template_body,
    template_coordinates,
    template_id,
)
from api._builds import start_build
from imagebuilder.pipeline.messages import RunRef
from imagebuilder.store import (
    AlreadyExistsError,
    ConcurrencyError,
    Page,
    RunRecord,
    Store,
    StoredTemplate,
)
from imagebuilder.template import ImageTemplate, apply_update, parse_template, parse_template_update

bp = df.Blueprint()

_READ_ONLY_PROPERTIES = (
    "provisioningState",
    "provisioningError",
    "lastRunStatus",
    "exactStagingResourceGroup",
)
_RETRIES = 10


def not_found(rg: str, name: str) -> ArmError:
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{TEMPLATE_TYPE}/{name}' under resource group '{rg}' was not found.",
    )


def deleting(name: str) -> ArmError:
    return ArmError(
        409, "Conflict", f"Image template '{name}' is being deleted; wait for the delete to finish."
    )


def user_part(resource: dict[str, Any], *, with_tags: bool = False) -> dict[str, Any]:
    """What the user chose (location, identity, properties; tags if asked), without service fields."""
    keys = (
        ("location", "identity", "properties", "tags")
        if with_tags
        else ("location", "identity", "properties")
    )
    out = {k: resource[k] for k in keys if k in resource}
    out["properties"] = {
        k: v for k, v in (resource.get("properties") or {}).items() if k not in _READ_ONLY_PROPERTIES
    }
    return out


def same_template(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two template resources are the same template: ARM locations compare normalized
    ("West US 2" is "westus2"), so a re-run deployment that spells the region differently is idempotent."""
    left, right = user_part(a), user_part(b)
    for side in (left, right):
        if isinstance(side.get("location"), str):
            side["location"] = location_slug(side["location"])
    return left == right


def with_service_defaults(user: dict[str, Any]) -> dict[str, Any]:
    """What AIB fills in and returns although the request left it out (PowerShell steps'
    runElevated/runAsSystem default to false)."""
    out: dict[str, Any] = json.loads(json.dumps(user))
    props = out.get("properties") or {}
    steps = list(props.get("customize") or []) + list(
        (props.get("validate") or {}).get("inVMValidations") or []
    )
    for step in steps:
        if isinstance(step, dict) and step.get("type") == "PowerShell":
            step.setdefault("runElevated", False)
            step.setdefault("runAsSystem", False)
    return out


def make_resource(sub: str, rg: str, name: str, user: dict[str, Any]) -> dict[str, Any]:
    user = with_service_defaults(user)
    resource: dict[str, Any] = {"id": template_id(sub, rg, name), "name": name, "type": TEMPLATE_TYPE}
    for k in ("location", "tags", "identity"):
        if user.get(k) is not None:
            resource[k] = user[k]
    resource["properties"] = {**user["properties"], "provisioningState": "Succeeded"}
    return resource


def load(st: Store, sub: str, rg: str, name: str) -> StoredTemplate:
    stored = st.templates.get(sub, rg, name)
    if stored is None:
        raise not_found(rg, name)
    return stored


def last_run(st: Store, stored: StoredTemplate) -> RunRecord | None:
    if not stored.last_run_id:
        return None
    return st.runs.get(
        RunRef(
            subscription_id=stored.subscription_id,
            resource_group=stored.resource_group,
            template_name=stored.name,
            run_id=stored.last_run_id,
        )
    )


def body_of(st: Store, stored: StoredTemplate) -> dict[str, Any]:
    return template_body(stored, last_run(st, stored))


def _list_response(
    req: func.HttpRequest, st: Store, page: Page[StoredTemplate], version: str
) -> func.HttpResponse:
    body: dict[str, Any] = {"value": [body_of(st, t) for t in page.items]}
    link = next_link(req, page.continuation, version)
    if link:
        body["nextLink"] = link
    return json_response(body)


@bp.route(route=SUBSCRIPTION + "/providers/" + PROVIDER + "/imageTemplates", methods=["GET"])
@arm
def image_templates_list(req: func.HttpRequest) -> func.HttpResponse:
    """VirtualMachineImageTemplates_List: every template of the subscription, paged with nextLink."""
    version = api_version(req)
    sub = subscription(req)
    st = store()
    page = st.templates.list_by_subscription(
        sub, page_size=page_size(), continuation=req.params.get("$skipToken")
    )
    return _list_response(req, st, page, version)


@bp.route(route=TEMPLATES, methods=["GET"])
@arm
def image_templates_list_by_resource_group(req: func.HttpRequest) -> func.HttpResponse:
    """VirtualMachineImageTemplates_ListByResourceGroup, paged with nextLink."""
    version = api_version(req)
    sub, rg = subscription(req), resource_group(req)
    st = store()
    page = st.templates.list_by_rg(sub, rg, page_size=page_size(), continuation=req.params.get("$skipToken"))
    return _list_response(req, st, page, version)


@bp.route(route=TEMPLATE, methods=["GET"])
@arm
def image_templates_get(req: func.HttpRequest) -> func.HttpResponse:
    """VirtualMachineImageTemplates_Get, with lastRunStatus from the template's last run."""
    api_version(req)
    sub, rg, name = template_coordinates(req)
    st = store()
    return json_response(body_of(st, load(st, sub, rg, name)))


@bp.route(route=TEMPLATE, methods=["HEAD"])
@arm
def image_templates_check_existence(req: func.HttpRequest) -> func.HttpResponse:
    """HEAD: ARM's existence check (`az resource`, `check_existence_by_id`): 204 if the template exists,
    404 if not, no body either way."""
    api_version(req)
    sub, rg, name = template_coordinates(req)
    return empty_response(204 if store().templates.get(sub, rg, name) is not None else 404)


def _put(st: Store, sub: str, rg: str, name: str, template: ImageTemplate) -> tuple[StoredTemplate, bool]:
    """Create the template, or accept an identical PUT (tags may change); 409 for any other change."""
    user = with_service_defaults(template.to_arm())
    for _ in range(_RETRIES):
        stored = st.templates.get(sub, rg, name)
        if stored is None:
            try:
                return st.templates.create(sub, rg, name, make_resource(sub, rg, name, user)), True
            except AlreadyExistsError:
                continue
        if stored.provisioning_state == "Deleting":
            raise deleting(stored.name)
        if not same_template(stored.resource, user):
            raise ArmError(
                409,
                "Conflict",
                "Update/Upgrade of image templates is currently not supported: image template "
                f"'{stored.name}' exists with different properties. Change the name of the template you "
                "are submitting, or delete the existing one first (PATCH can change only tags, identity, "
                "vmProfile and distribute).",
            )
        if stored.resource.get("tags") == user.get("tags"):
            return stored, False
        resource = dict(stored.resource)
        resource.pop("tags", None)
        if user.get("tags") is not None:
            resource["tags"] = user["tags"]
        try:
            return st.templates.replace(sub, rg, name, resource, etag=stored.etag), False
        except ConcurrencyError:
            continue
    raise ArmError(
        409, "Conflict", f"Image template '{name}' is being changed concurrently; retry the request."
    )


@bp.route(route=TEMPLATE, methods=["PUT"])
@bp.durable_client_input(client_name="client")
@arm
async def image_templates_create_or_update(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    """VirtualMachineImageTemplates_CreateOrUpdate: 201 (created) or 200 (identical), with
    Azure-AsyncOperation; `autoRun` starts a build on create."""
    version = api_version(req)
    sub, rg, name = template_coordinates(req)
    template = parse_template(read_json(req), api_version=version, name=name)
    st = store()
    stored, created = await in_thread(_put, st, sub, rg, name, template)
    auto = template.to_arm()["properties"].get("autoRun") or {}
    if created and auto.get("state") == "Enabled":
        try:
            await start_build(client, st, stored)
        except ArmError as exc:  # the template exists either way; the run records why it did not start
            if exc.status != 503:
                raise
    op = await in_thread(
        st.operations.create,
        sub,
        location_slug(template.location),
        kind="create",
        resource_id=template_id(sub, rg, stored.name),
        status="Succeeded",
    )
    fresh = await in_thread(load, st, sub, rg, name)
    body = await in_thread(body_of, st, fresh)
    return json_response(body, 201 if created else 200, lro_headers(req, op, location=False, version=version))


@bp.route(route=TEMPLATE, methods=["PATCH"])
@arm
def image_templates_update(req: func.HttpRequest) -> func.HttpResponse:
    """VirtualMachineImageTemplates_Update: tags, identity, vmProfile, distribute; 200 with the template."""
    version = api_version(req)
    sub, rg, name = template_coordinates(req)
    update = parse_template_update(read_json(req), api_version=version)
    st = store()
    for _ in range(_RETRIES):
        stored = load(st, sub, rg, name)
        if stored.provisioning_state == "Deleting":
            raise deleting(stored.name)
        current = ImageTemplate.model_validate(user_part(stored.resource, with_tags=True))
        changed = apply_update(current, update)
        resource = make_resource(sub, rg, stored.name, changed.to_arm())
        resource["id"] = stored.resource.get("id", resource["id"])
        try:
            updated = st.templates.replace(sub, rg, name, resource, etag=stored.etag)
        except ConcurrencyError:
            continue
        return json_response(body_of(st, updated))
    raise ArmError(
        409, "Conflict", f"Image template '{name}' is being changed concurrently; retry the request."
    )


def _delete(st: Store, sub: str, rg: str, name: str) -> StoredTemplate | None:
    for _ in range(_RETRIES):
        stored = st.templates.get(sub, rg, name)
        if stored is None:
            return None
        run = last_run(st, stored)
        if run is not None and run.active:
            raise ArmError(
                409,
                "Conflict",
                f"Image template '{stored.name}' has a build in progress (run {run.run.run_id}, "
                f"{run.run_state}); cancel it and wait for it to end before deleting the template.",
            )
        if stored.provisioning_state != "Deleting":
            resource = dict(stored.resource)
            resource["properties"] = {**(resource.get("properties") or {}), "provisioningState": "Deleting"}
            try:
                stored = st.templates.replace(sub, rg, name, resource, etag=stored.etag)
            except ConcurrencyError:
                continue
        st.purge_template(sub, rg, name)
        return stored
    raise ArmError(
        409, "Conflict", f"Image template '{name}' is being changed concurrently; retry the request."
    )


@bp.route(route=TEMPLATE, methods=["DELETE"])
@arm
def image_templates_delete(req: func.HttpRequest) -> func.HttpResponse:
    """VirtualMachineImageTemplates_Delete: 202 with Location/Azure-AsyncOperation, 204 if absent."""
    version = api_version(req)
    sub, rg, name = template_coordinates(req)
    st = store()
    stored = _delete(st, sub, rg, name)
    if stored is None:
        return empty_response(204)
    op = st.operations.create(
        sub,
        location_slug(str(stored.resource.get("location", ""))),
        kind="delete",
        resource_id=template_id(sub, rg, stored.name),
        status="Succeeded",
    )
    return empty_response(202, lro_headers(req, op, location=True, version=version))


@bp.route(route=TEMPLATE, methods=["POST"])
@arm
def image_templates_method_not_allowed(req: func.HttpRequest) -> func.HttpResponse:
    """405 for a method an image template does not support (ARM clients rely on it, not on a bare 404)."""
    return method_not_allowed(req, "GET, PUT, PATCH, DELETE")


@bp.route(route=TEMPLATES, methods=["POST", "PUT", "PATCH", "DELETE"])
@arm
def image_templates_collection_method_not_allowed(req: func.HttpRequest) -> func.HttpResponse:
    """405 for a write to the resource group's template collection (it is listed with GET only)."""
    return method_not_allowed(req, "GET")
