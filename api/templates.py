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

import json
import logging
from functools import cache
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
from api._builds import start_build
from imagebuilder.pipeline.messages import (
    CleanupReport,
    ErrorInfo,
    Pending,
    RunRef,
    TemplateInput,
    TemplateRef,
    TemplateStaging,
)
from imagebuilder.providers.base import ComputeProvider, ProviderError, TransientProviderError
from imagebuilder.providers.registry import get_provider
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
# AIB's ProvisioningErrorCode values (the spec's enum); any other provider code is reported as Other.
PROVISIONING_ERROR_CODES = (
    "BadSourceType",
    "BadPIRSource",
    "BadManagedImageSource",
    "BadSharedImageVersionSource",
    "BadCustomizerType",
    "UnsupportedCustomizerType",
    "NoCustomizerScript",
    "BadValidatorType",
    "UnsupportedValidatorType",
    "NoValidatorScript",
    "BadDistributeType",
    "BadSharedImageDistribute",
    "BadStagingResourceGroup",
    "ServerError",
    "Other",
)


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
@bp.durable_client_input(client_name="client")
@arm
async def image_templates_get(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    """VirtualMachineImageTemplates_Get, with lastRunStatus from the template's last run (a template still
    Creating is taken one step further first)."""
    api_version(req)
    sub, rg, name = template_coordinates(req)
    st = store()
    stored = await provision(client, st, sub, rg, name)
    if stored is None:
        raise not_found(rg, name)
    body = await in_thread(body_of, st, stored)
    return json_response(body)


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
    fresh = await in_thread(load, st, sub, rg, name)
    body = await in_thread(body_of, st, fresh)
    return json_response(body, 201 if created else 200, lro_headers(req, op, location=False, version=version))


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


@cache
def _provider(settings: Settings) -> ComputeProvider:
    return get_provider(settings.provider)


class _Lines:
    """A LogSink that keeps what the provider says about a create (for the service log)."""

    uri = ""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.extend(text.splitlines())


def _create_with_provider(stored: StoredTemplate) -> TemplateStaging | Pending:
    """One step of the provider's `create_template` (continued with `poll` while it is Pending)."""
    provider = _provider(Settings.from_env())
    sink = _Lines()
    pending = stored.service.get("pending")
    try:
        if isinstance(pending, dict):
            result = provider.poll(Pending.model_validate(pending), sink)
        else:
            tpl = TemplateInput(
                ref=TemplateRef(
                    subscription_id=stored.subscription_id,
                    resource_group=stored.resource_group,
                    template_name=stored.name,
                ),
                template=stored.resource,
            )
            result = provider.create_template(tpl, sink)
    except TransientProviderError:
        raise
    except ProviderError as exc:
        result = TemplateStaging(status="failed", error=ErrorInfo(code="Other", message=str(exc)))
    for line in sink.lines:
        log.info("create %s: %s", stored.name, line)
    if isinstance(result, TemplateStaging | Pending):
        return result
    return TemplateStaging.model_validate(result)


def _provision(st: Store, sub: str, rg: str, name: str) -> StoredTemplate | None:
    """Take a Creating template one step further: run the provider's checks and staging, then record
    Succeeded (with exactStagingResourceGroup) or Failed (with provisioningError). Idempotent; a
    transient provider failure leaves it Creating for the next read."""
    for _ in range(_RETRIES):
        stored = st.templates.get(sub, rg, name)
        if stored is None or stored.provisioning_state != "Creating":
            return stored
        try:
            result = _create_with_provider(stored)
        except TransientProviderError as exc:
            log.warning("create of %s: transient provider failure, retried on the next poll: %s", name, exc)
            return stored
        resource = json.loads(json.dumps(stored.resource))
        props = resource["properties"]
        service = dict(stored.service)
        if isinstance(result, Pending):
            service["pending"] = result.model_dump(mode="json")
        elif result.status == "succeeded":
            props["provisioningState"] = "Succeeded"
            if result.exact_staging_resource_group:
                props["exactStagingResourceGroup"] = result.exact_staging_resource_group
            service.pop("pending", None)
            service["staging"] = result.staging
            service["warnings"] = list(service.get("warnings") or []) + result.warnings
        else:
            error = result.error or ErrorInfo(code="Other", message="The template could not be created.")
            code = error.code if error.code in PROVISIONING_ERROR_CODES else "Other"
            props["provisioningState"] = "Failed"
            props["provisioningError"] = {"provisioningErrorCode": code, "message": error.message}
            service.pop("pending", None)
        try:
            return st.templates.replace(sub, rg, name, resource, etag=stored.etag, service=service)
        except ConcurrencyError:
            continue
    return st.templates.get(sub, rg, name)


async def provision(
    client: df.DurableOrchestrationClient, st: Store, sub: str, rg: str, name: str
) -> StoredTemplate | None:
    """Settle a Creating template (see `_provision`), complete its create operation once it has an
    outcome, and start its `autoRun` build after a successful create."""
    before = await in_thread(st.templates.get, sub, rg, name)
    if before is None or before.provisioning_state != "Creating":
        return before
    stored = await in_thread(_provision, st, sub, rg, name)
    if stored is None or stored.provisioning_state == "Creating":
        return stored
    op_id = stored.service.get("createOperation")
    if isinstance(op_id, str):
        error = _provisioning_error(stored)
        await in_thread(
            st.operations.complete,
            stored.subscription_id,
            op_id,
            status="Failed" if error else "Succeeded",
            error=error,
        )
    auto = (stored.resource.get("properties") or {}).get("autoRun") or {}
    if stored.provisioning_state == "Succeeded" and auto.get("state") == "Enabled" and not stored.last_run_id:
        try:
            await start_build(client, st, stored)
        except ArmError as exc:  # the template exists either way; the run records why it did not start
            if exc.status not in (409, 503):
                raise
        stored = await in_thread(load, st, sub, rg, name)
    return stored


async def settle_create(
    client: df.DurableOrchestrationClient, st: Store, op: OperationRecord
) -> OperationRecord:
    """A create operation, taken one step further if its template is still Creating."""
    if op.done or op.kind != "create":
        return op
    sub, rg, name = parse_template_id(op.resource_id)
    stored = await provision(client, st, sub, rg, name)
    if stored is None:
        done: OperationRecord = await in_thread(
            st.operations.complete,
            op.subscription_id,
            op.operation_id,
            status="Failed",
            error={
                "code": "ResourceNotFound",
                "message": "The template was deleted before its create ended.",
            },
        )
        return done
    fresh = await in_thread(st.operations.get, op.subscription_id, op.operation_id)
    return fresh or op


async def load_ready(
    client: df.DurableOrchestrationClient, st: Store, sub: str, rg: str, name: str
) -> StoredTemplate:
    """The template for an action that needs it created (run, cancel): settled first if Creating; 409 if
    its create failed or is still going on, or it is being deleted."""
    stored = await provision(client, st, sub, rg, name)
    if stored is None:
        raise not_found(rg, name)
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


def _delete_staging(stored: StoredTemplate) -> None:
    """The provider's `delete_template`: the template's staging resources go with it (a failed create's
    too). A failure leaves the template Deleting, so that the next DELETE tries again."""
    tpl = TemplateInput(
        ref=TemplateRef(
            subscription_id=stored.subscription_id,
            resource_group=stored.resource_group,
            template_name=stored.name,
        ),
        template=stored.resource,
        staging=stored.service.get("staging") or {},
    )
    provider = _provider(Settings.from_env())
    sink = _Lines()
    try:
        report: Any = provider.delete_template(tpl, sink)
        while isinstance(report, Pending):
            report = provider.poll(report, sink)
    except ProviderError as exc:
        raise ArmError(
            503 if isinstance(exc, TransientProviderError) else 500,
            "StagingCleanupFailed",
            f"The staging resources of image template '{stored.name}' could not be removed: {exc}. "
            "Delete the template again to retry.",
        ) from None
    errors = (
        CleanupReport.model_validate(report).errors
        if not isinstance(report, CleanupReport)
        else report.errors
    )
    if errors:
        raise ArmError(
            500,
            "StagingCleanupFailed",
            f"The staging resources of image template '{stored.name}' could not all be removed "
            f"({'; '.join(errors)}). Delete the template again to retry.",
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
        _delete_staging(stored)
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
