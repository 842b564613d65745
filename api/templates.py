"""Image templates: list (subscription, resource group), get, create (PUT), update (PATCH), delete.

AIB semantics: a template is immutable (a PUT that changes it is a 409; an identical PUT is idempotent,
tags may change), PATCH changes only tags, identity, vmProfile and distribute, and a template with a build
in progress cannot be deleted.

Create is a long-running operation, as AIB's: the PUT stores the template in provisioningState
`Creating` and answers 201 with `Azure-AsyncOperation`; the provider's `create_template` (source resolves,
identity/gallery exist where it can check, staging resources) runs when the operation or the template is
next read (`provision`), and the template ends `Succeeded` (then `autoRun` starts a build) or `Failed`
with `provisioningError`, which GET shows and DELETE removes. Unknown members of the body are dropped
with a warning (`ignored unknown member ...; did you mean ...?`) in the create's operation status and in
every run's customization.log, or refused when IMAGEBUILDER_STRICT_TEMPLATE_MEMBERS is true.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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
    parse_template_id,
    read_json,
    resource_group,
    store,
    subscription,
    template_body,
    template_coordinates,
    template_id,
)
from imagebuilder.pipeline import naming
from imagebuilder.pipeline.messages import RunRef, TemplateRef
from imagebuilder.settings import Settings
from imagebuilder.store import (
    AlreadyExistsError,
    ConcurrencyError,
    OperationRecord,
    Page,
    RunRecord,
    Store,
    StoredTemplate,
)
from imagebuilder.template import (
    IgnoredMember,
    ImageTemplate,
    apply_update,
    parse_template,
    parse_template_update,
)

bp = df.Blueprint()
log = logging.getLogger("api.templates")

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
    """Whether two template resources are the same template, compared as ARM compares: resource ids
    (identity keys, image, gallery and staging group ids) case-insensitively, locations normalized ("West
    US 2" is "westus2"), so a re-run deployment that spells them differently is idempotent."""
    return bool(_arm_normal(user_part(a)) == _arm_normal(user_part(b)))


_LOCATION_KEYS = {"location", "replicationregions"}


def _arm_normal(value: Any, key: str = "") -> Any:
    """`value` with ARM's case-insensitive parts folded: resource ids lower-cased, regions normalized."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            folded = k.lower() if isinstance(k, str) and k.startswith("/") else k
            out[folded] = _arm_normal(v, str(k).lower())
        if key == "targetregions" and isinstance(out.get("name"), str):  # a targetRegions entry
            out["name"] = location_slug(out["name"])
        return out
    if isinstance(value, list):
        return [_arm_normal(v, key) for v in value]
    if isinstance(value, str):
        if key in _LOCATION_KEYS:
            return location_slug(value)
        if value.lower().startswith("/subscriptions/"):
            return value.lower()
    return value


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


def make_resource(
    sub: str, rg: str, name: str, user: dict[str, Any], state: str = "Succeeded"
) -> dict[str, Any]:
    user = with_service_defaults(user)
    resource: dict[str, Any] = {"id": template_id(sub, rg, name), "name": name, "type": TEMPLATE_TYPE}
    for k in ("location", "tags", "identity"):
        if user.get(k) is not None:
            resource[k] = user[k]
    resource["properties"] = {**user["properties"], "provisioningState": state}
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


def _put(
    st: Store, sub: str, rg: str, name: str, template: ImageTemplate, warnings: list[str]
) -> tuple[StoredTemplate, OperationRecord | None]:
    """Create the template in provisioningState Creating with its create operation (returned), or
    accept an identical PUT (tags may change; no operation returned); 409 for any other change."""
    user = with_service_defaults(template.to_arm())
    for _ in range(_RETRIES):
        stored = st.templates.get(sub, rg, name)
        if stored is None:
            op = st.operations.create(
                sub,
                location_slug(template.location),
                kind="create",
                resource_id=template_id(sub, rg, name),
                result={"warnings": warnings} if warnings else None,
            )
            service = {"createOperation": op.operation_id, "warnings": warnings}
            resource = make_resource(sub, rg, name, user, state="Creating")
            try:
                return st.templates.create(sub, rg, name, resource, service=service), op
            except AlreadyExistsError:
                st.operations.complete(
                    sub,
                    op.operation_id,
                    status="Canceled",
                    error={"code": "Conflict", "message": "Another request created the template first."},
                )
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
            return stored, None
        resource = dict(stored.resource)
        resource.pop("tags", None)
        if user.get("tags") is not None:
            resource["tags"] = user["tags"]
        try:
            return st.templates.replace(sub, rg, name, resource, etag=stored.etag), None
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
    """VirtualMachineImageTemplates_CreateOrUpdate: 201 Creating with Azure-AsyncOperation (the create
    ends Succeeded or Failed, see `provision`), or 200 for an identical PUT."""
    version = api_version(req)
    sub, rg, name = template_coordinates(req)
    ignored: list[IgnoredMember] = []
    template = parse_template(
        read_json(req),
        api_version=version,
        name=name,
        strict_members=Settings.from_env().strict_template_members,
        warnings=ignored,
    )
    warnings = [w.message for w in ignored]
    for line in warnings:
        log.info("PUT %s: %s", name, line)
    st = store()
    stored, op = await in_thread(_put, st, sub, rg, name, template, warnings)
    created = op is not None
    if op is None:
        op = await in_thread(_operation_for, st, stored)
    else:
        # The answer is the template as this PUT created it (Creating), or Failed if the create could
        # not be started: never a re-read, which on a fast host may already show the create's outcome.
        stored = await start_create(client, st, stored, op)
        op = await in_thread(_get_operation, st, op)
    fresh = stored if created else await in_thread(load, st, sub, rg, name)
    body = await in_thread(body_of, st, fresh)
    return json_response(body, 201 if created else 200, lro_headers(req, op, location=False, version=version))


def _get_operation(st: Store, op: OperationRecord) -> OperationRecord:
    return st.operations.get(op.subscription_id, op.operation_id) or op


def _operation_for(st: Store, stored: StoredTemplate) -> OperationRecord:
    """The operation an identical PUT answers with: the create's own while it runs, else a finished one
    with the template's outcome."""
    sub = stored.subscription_id
    op_id = stored.service.get("createOperation")
    if stored.provisioning_state == "Creating" and isinstance(op_id, str):
        op = st.operations.get(sub, op_id)
        if op is not None:
            return op
    error = _provisioning_error(stored)
    return st.operations.create(
        sub,
        location_slug(str(stored.resource.get("location", ""))),
        kind="create",
        resource_id=template_id(sub, stored.resource_group, stored.name),
        status="Failed" if error else "Succeeded",
        error=error,
    )


def _provisioning_error(stored: StoredTemplate) -> dict[str, Any] | None:
    if stored.provisioning_state != "Failed":
        return None
    err = (stored.resource.get("properties") or {}).get("provisioningError") or {}
    return {
        "code": str(err.get("provisioningErrorCode") or "Other"),
        "message": str(err.get("message") or ""),
    }


def _start_failed(st: Store, stored: StoredTemplate, op_id: str, exc: Exception) -> StoredTemplate:
    """The create could not be started (the durable host is down): the template ends Failed, as AIB's
    does when its service cannot take the create, and can be deleted and created again."""
    message = (
        f"The create could not be started ({type(exc).__name__}); delete the template and create it again."
    )
    for _ in range(_RETRIES):
        resource = json.loads(json.dumps(stored.resource))
        resource["properties"]["provisioningState"] = "Failed"
        resource["properties"]["provisioningError"] = {
            "provisioningErrorCode": "ServerError",
            "message": message,
        }
        try:
            stored = st.templates.replace(
                stored.subscription_id, stored.resource_group, stored.name, resource, etag=stored.etag
            )
            break
        except ConcurrencyError:
            fresh = st.templates.get(stored.subscription_id, stored.resource_group, stored.name)
            if fresh is None or fresh.provisioning_state != "Creating":
                return fresh or stored
            stored = fresh
    st.operations.complete(
        stored.subscription_id, op_id, status="Failed", error={"code": "ServerError", "message": message}
    )
    return stored


async def start_create(
    client: df.DurableOrchestrationClient, st: Store, stored: StoredTemplate, op: OperationRecord
) -> StoredTemplate:
    """Start `provision_template` for a template just stored as Creating."""
    ref = template_ref(stored)
    payload = {"ref": ref.model_dump(mode="json"), "operationId": op.operation_id}
    instance = naming.template_instance_id("create", ref, op.operation_id)
    try:
        await client.start_new(naming.PROVISION_ORCHESTRATION, instance, payload)
    except Exception as exc:
        log.exception("starting %s for %s failed", naming.PROVISION_ORCHESTRATION, stored.name)
        failed: StoredTemplate = await in_thread(_start_failed, st, stored, op.operation_id, exc)
        return failed
    return stored


def template_ref(stored: StoredTemplate) -> TemplateRef:
    return TemplateRef(
        subscription_id=stored.subscription_id,
        resource_group=stored.resource_group,
        template_name=stored.name,
    )


async def settle_create(
    client: df.DurableOrchestrationClient, st: Store, op: OperationRecord
) -> OperationRecord:
    """A create (or delete) operation as it stands: completed by its orchestration's activity; failed
    here if the orchestration itself ended without completing it (crashed, terminated)."""
    if op.done or op.kind not in ("create", "delete"):
        return op
    sub, rg, name = parse_template_id(op.resource_id)
    ref = TemplateRef(subscription_id=sub, resource_group=rg, template_name=name)
    instance = naming.template_instance_id(op.kind, ref, op.operation_id)
    try:
        status = await client.get_status(instance)
    except Exception:  # the durable host cannot tell: the operation is still what it was
        return op
    runtime = getattr(status, "runtime_status", None)
    state = getattr(runtime, "name", str(runtime or ""))
    if state not in ("Failed", "Terminated", "Canceled"):
        fresh = await in_thread(st.operations.get, op.subscription_id, op.operation_id)
        return fresh or op
    message = f"The {op.kind} ended without an outcome ({state}); delete the template and try again."
    if op.kind == "create":
        stored = await in_thread(st.templates.get, sub, rg, name)
        if stored is not None and stored.provisioning_state == "Creating":
            await in_thread(_start_failed, st, stored, op.operation_id, RuntimeError(message))
    done: OperationRecord = await in_thread(
        st.operations.complete,
        op.subscription_id,
        op.operation_id,
        status="Failed",
        error={"code": "ServerError", "message": message},
    )
    return done


# How long a run or delete of a template still Creating waits for the create to end (a local create takes
# well under a second, an Azure one a few seconds: the staging resource group).
CREATE_WAIT_SECONDS = 30.0


async def wait_created(st: Store, sub: str, rg: str, name: str) -> StoredTemplate:
    """The template once it is no longer Creating, or as it is after CREATE_WAIT_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CREATE_WAIT_SECONDS
    while True:
        stored = await in_thread(load, st, sub, rg, name)
        if stored.provisioning_state != "Creating" or loop.time() > deadline:
            return stored
        await asyncio.sleep(0.2)


async def load_ready(
    client: df.DurableOrchestrationClient, st: Store, sub: str, rg: str, name: str
) -> StoredTemplate:
    """The template for an action that needs it created (run): its create is waited for a little (a
    script that PUTs and runs at once); 409 if the create failed or is still going on, or it is being
    deleted."""
    stored = await wait_created(st, sub, rg, name)
    if stored.provisioning_state == "Deleting":
        raise deleting(stored.name)
    if stored.provisioning_state == "Creating":
        raise ArmError(
            409,
            "Conflict",
            f"Image template '{stored.name}' is still being created; wait for its create to end.",
        )
    if stored.provisioning_state == "Failed":
        err = _provisioning_error(stored) or {}
        raise ArmError(
            409,
            "Conflict",
            f"Image template '{stored.name}' failed to be created ({err.get('code')}: {err.get('message')}); "
            "delete it, fix the template and create it again.",
        )
    return stored


@bp.route(route=TEMPLATE, methods=["PATCH"])
@arm
def image_templates_update(req: func.HttpRequest) -> func.HttpResponse:
    """VirtualMachineImageTemplates_Update: tags, identity, vmProfile, distribute; 200 with the template."""
    version = api_version(req)
    sub, rg, name = template_coordinates(req)
    update = parse_template_update(
        read_json(req), api_version=version, strict_members=Settings.from_env().strict_template_members
    )
    st = store()
    for _ in range(_RETRIES):
        stored = load(st, sub, rg, name)
        if stored.provisioning_state == "Deleting":
            raise deleting(stored.name)
        current = ImageTemplate.model_validate(user_part(stored.resource, with_tags=True))
        changed = apply_update(current, update)
        resource = make_resource(
            sub, rg, stored.name, changed.to_arm(), stored.provisioning_state or "Succeeded"
        )
        for kept in ("provisioningError", "exactStagingResourceGroup"):
            if kept in (stored.resource.get("properties") or {}):
                resource["properties"][kept] = stored.resource["properties"][kept]
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
        if stored.provisioning_state == "Creating":
            raise ArmError(
                409,
                "Conflict",
                f"Image template '{stored.name}' is still being created; wait for its create to end, then "
                "delete it.",
            )
        if stored.provisioning_state != "Deleting":
            resource = dict(stored.resource)
            resource["properties"] = {**(resource.get("properties") or {}), "provisioningState": "Deleting"}
            try:
                stored = st.templates.replace(sub, rg, name, resource, etag=stored.etag)
            except ConcurrencyError:
                continue
        if not stored.service.get("staging"):  # no staging resources: nothing of the provider's to remove
            st.purge_template(sub, rg, name)
        return stored
    raise ArmError(
        409, "Conflict", f"Image template '{name}' is being changed concurrently; retry the request."
    )


@bp.route(route=TEMPLATE, methods=["DELETE"])
@bp.durable_client_input(client_name="client")
@arm
async def image_templates_delete(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    """VirtualMachineImageTemplates_Delete: 202 with Location/Azure-AsyncOperation, 204 if absent. A
    template with staging resources is deleted by `delete_template` (staging first, as AIB does)."""
    version = api_version(req)
    sub, rg, name = template_coordinates(req)
    st = store()
    with contextlib.suppress(ArmError):  # absent: _delete answers
        await wait_created(st, sub, rg, name)
    stored = await in_thread(_delete, st, sub, rg, name)
    if stored is None:
        return empty_response(204)
    staged = bool(stored.service.get("staging"))
    op = await in_thread(
        st.operations.create,
        sub,
        location_slug(str(stored.resource.get("location", ""))),
        kind="delete",
        resource_id=template_id(sub, rg, stored.name),
        status="InProgress" if staged else "Succeeded",
    )
    if staged:
        ref = template_ref(stored)
        payload = {"ref": ref.model_dump(mode="json"), "operationId": op.operation_id}
        try:
            await client.start_new(
                naming.DELETE_TEMPLATE_ORCHESTRATION,
                naming.template_instance_id("delete", ref, op.operation_id),
                payload,
            )
        except Exception:
            log.exception("starting %s for %s failed", naming.DELETE_TEMPLATE_ORCHESTRATION, stored.name)
            await in_thread(
                st.operations.complete,
                sub,
                op.operation_id,
                status="Failed",
                error={"code": "ServerError", "message": "The delete could not be started."},
            )
            raise ArmError(
                503,
                "ServiceUnavailable",
                f"The delete of image template '{stored.name}' could not be started; delete it again.",
            ) from None
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
