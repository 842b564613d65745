"""Blob-upload builds and replaced artifacts.

`image_template_uploaded`: a JSON file uploaded to the container `image-templates` creates or updates
that template and runs it. Blob name convention (the `.json` suffix is required):
`{subscriptionId}/{resourceGroup}/{name}.json`, `{resourceGroup}/{name}.json` or `{name}.json`; missing
parts default to the app settings IMAGEBUILDER_UPLOAD_SUBSCRIPTION (`00000000-0000-0000-0000-000000000000`)
and IMAGEBUILDER_UPLOAD_RESOURCE_GROUP (`image-templates`); a literal `name` in the body wins over the
file name. The body is a template resource (as for PUT; `apiVersion` in it picks the api-version) or an
ARM deployment template holding exactly one `Microsoft.VirtualMachineImages/imageTemplates` resource
(plus optional `.../triggers`, nested or top-level); `[parameters('x')]` and `[variables('x')]` are
resolved from defaults, other ARM expressions are refused. Unlike PUT (AIB templates are immutable), an
upload with changed properties replaces the template in place (kept: its runs and triggers) unless a
build is in progress. The outcome is written next to the upload as `{name}.result.json`:
`{"status": "Accepted", "templateId", "runId", ...}` or `{"status": "Failed", "error": {ARM error}}`;
result files match no upload, so they never trigger a build.

`template_artifact_changed`: a blob replaced in the container named by IMAGEBUILDER_ARTIFACTS_CONTAINER
(default `image-artifacts`) triggers every template whose scriptUri/sourceUri names it, through the
input fingerprint rule (build if changed since the last successful run, else a skipped run).
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from api._arm import TRIGGER_TYPE, ArmError, in_thread, location_slug, template_id
from api._builds import start_build
from api.templates import make_resource, start_create, user_part, wait_created, with_service_defaults
from imagebuilder.pipeline.messages import RESOURCE_TYPE
from imagebuilder.settings import Settings
from imagebuilder.store import (
    TERMINAL_RUN_STATES,
    AlreadyExistsError,
    ConcurrencyError,
    Store,
    StoredTemplate,
)
from imagebuilder.template import (
    LATEST_API_VERSION,
    SUPPORTED_API_VERSIONS,
    IgnoredMember,
    TemplateError,
    parse_template,
    parse_trigger,
    validate_resource_name,
)
from triggers._common import ARTIFACTS_CONTAINER, iso, now, store
from triggers._evaluate import artifact_replaced

bp = df.Blueprint()
log = logging.getLogger("triggers.uploads")

UPLOAD_CONTAINER = "image-templates"
RESULT_SUFFIX = ".result.json"
DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
DEFAULT_RESOURCE_GROUP = "image-templates"
_EXPRESSION = re.compile(r"^\[\s*(parameters|variables)\(\s*'([^']+)'\s*\)\s*\]$", re.IGNORECASE)
_RETRIES = 10
_SUBSCRIPTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_RESOURCE_GROUP = re.compile(r"^[-\w._()]{1,90}$")
# members a deployment template gives a resource that are not part of its body
_DEPLOYMENT_MEMBERS = ("name", "type", "apiVersion", "dependsOn", "comments", "condition")


class UploadError(Exception):
    """An upload that cannot be used; `body()` is an ARM error body."""

    def __init__(self, code: str, message: str, target: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.target = code, message, target

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "details": []}
        if self.target:
            error["target"] = self.target
        return {"error": error}


# -- what the upload says -----------------------------------------------------------------------------------


def coordinates(path: str) -> tuple[str, str, str]:
    """(subscription, resource group, name) from the blob name (inside the container)."""
    parts = path[: -len(".json")].split("/")
    sub = os.environ.get("IMAGEBUILDER_UPLOAD_SUBSCRIPTION") or DEFAULT_SUBSCRIPTION
    rg = os.environ.get("IMAGEBUILDER_UPLOAD_RESOURCE_GROUP") or DEFAULT_RESOURCE_GROUP
    if len(parts) == 3:
        sub, rg, name = parts
    elif len(parts) == 2:
        rg, name = parts
    elif len(parts) == 1:
        name = parts[0]
    else:
        raise UploadError(
            "InvalidParameter",
            f"The blob name '{path}' has too many folders: use "
            "{subscriptionId}/{resourceGroup}/{name}.json, {resourceGroup}/{name}.json or {name}.json.",
            "blobName",
        )
    if not _SUBSCRIPTION.match(sub):
        raise UploadError(
            "InvalidSubscriptionId",
            f"The subscription '{sub}' in the blob name '{path}' is malformed: use letters, digits and '-'.",
            "blobName",
        )
    if not _RESOURCE_GROUP.match(rg) or rg.endswith("."):
        raise UploadError(
            "InvalidResourceGroupName",
            f"The resource group '{rg}' in the blob name '{path}' is invalid: use 1-90 letters, digits, "
            "'_', '-', '.', '(' or ')', not ending in '.'.",
            "blobName",
        )
    return sub, rg, name


def _resolve(value: Any, where: str, params: dict[str, Any], variables: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, f"{where}.{k}", params, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, f"{where}[{i}]", params, variables) for i, v in enumerate(value)]
    if not isinstance(value, str) or not value.startswith("["):
        return value
    if value.startswith("[["):
        return value[1:]  # ARM's escape for a literal '['
    m = _EXPRESSION.match(value)
    if m is None:
        raise UploadError(
            "InvalidTemplate",
            f"{where}: the ARM expression {value[:120]!r} is not supported in uploads; only "
            "[parameters('name')] and [variables('name')] are resolved. Write the value itself.",
            where,
        )
    kind, name = m.group(1).lower(), m.group(2)
    table = params if kind == "parameters" else variables
    if name not in table:
        raise UploadError(
            "InvalidTemplate",
            f"{where}: {kind}('{name}') has no "
            + ("defaultValue" if kind == "parameters" else "definition")
            + " in the deployment template; give it one.",
            where,
        )
    return _resolve(table[name], f"{kind}.{name}", params, variables)


def _is_type(resource: Any, suffix: str) -> bool:
    return isinstance(resource, dict) and str(resource.get("type", "")).lower() == suffix.lower()


def extract(body: Any) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any], str]]]:
    """(template resource, [(trigger name, trigger body, api-version)]) from a bare resource body or an
    ARM deployment template."""
    if not isinstance(body, dict):
        raise UploadError("InvalidRequestContent", "The upload must be a JSON object.")
    if "resources" not in body:
        return body, []
    params = {
        k: v["defaultValue"]
        for k, v in (body.get("parameters") or {}).items()
        if isinstance(v, dict) and "defaultValue" in v
    }
    variables = dict(body.get("variables") or {})
    resources = body.get("resources")
    if not isinstance(resources, list):
        raise UploadError("InvalidTemplate", "resources must be an array.", "resources")
    templates = [(i, r) for i, r in enumerate(resources) if _is_type(r, RESOURCE_TYPE)]
    if len(templates) != 1:
        raise UploadError(
            "InvalidTemplate",
            f"The deployment template holds {len(templates)} resources of type {RESOURCE_TYPE}; "
            "an upload builds exactly one template.",
            "resources",
        )
    index, raw = templates[0]
    resource = _resolve(raw, f"resources[{index}]", params, variables)
    triggers: list[tuple[str, dict[str, Any], str]] = []
    nested = resource.pop("resources", None) or []
    candidates = [(f"resources[{index}].resources[{i}]", r, "triggers") for i, r in enumerate(nested)]
    candidates += [(f"resources[{i}]", r, TRIGGER_TYPE) for i, r in enumerate(resources)]
    for where, item, kind in candidates:
        if not _is_type(item, kind):
            continue
        child = _resolve(item, where, params, variables)
        trigger_name = str(child.get("name", "")).split("/")[-1]
        version = str(child.get("apiVersion") or resource.get("apiVersion") or LATEST_API_VERSION)
        body = {k: v for k, v in child.items() if k not in _DEPLOYMENT_MEMBERS}
        triggers.append((trigger_name, body, version))
    return resource, triggers


# -- doing it ---------------------------------------------------------------------------------------------


def _create_or_update(
    st: Store, sub: str, rg: str, name: str, user: dict[str, Any], warnings: list[str]
) -> tuple[StoredTemplate, str]:
    for _ in range(_RETRIES):
        stored = st.templates.get(sub, rg, name)
        if stored is None:
            # created as by PUT: Creating, then the create's checks and staging (`start_create`)
            op = st.operations.create(
                sub,
                location_slug(str(user.get("location") or "")),
                kind="create",
                resource_id=template_id(sub, rg, name),
            )
            resource = make_resource(sub, rg, name, user, state="Creating")
            service = {"createOperation": op.operation_id, "warnings": warnings}
            try:
                return st.templates.create(sub, rg, name, resource, service=service), "created"
            except AlreadyExistsError:
                st.operations.complete(sub, op.operation_id, status="Canceled")
                continue
        if stored.provisioning_state == "Deleting":
            raise ArmError(
                409, "Conflict", f"Image template '{name}' is being deleted; upload it again later."
            )
        if stored.provisioning_state in ("Creating", "Failed"):
            raise ArmError(
                409,
                "Conflict",
                f"Image template '{name}' is {stored.provisioning_state.lower()}"
                + (" (its create failed)" if stored.provisioning_state == "Failed" else "")
                + ": delete it, then upload the template again.",
            )
        if user_part(stored.resource, with_tags=True) == user_part(user, with_tags=True):
            return stored, "unchanged"
        last = st.runs.latest(sub, rg, stored.name)
        if last is not None and last.active:
            raise ArmError(
                409,
                "Conflict",
                f"Image template '{stored.name}' has a build in progress (run {last.run.run_id}); upload the "
                "changed template again after it ends.",
            )
        resource = make_resource(sub, rg, stored.name, user)
        resource["id"] = stored.resource.get("id", resource["id"])
        try:
            return st.templates.replace(sub, rg, name, resource, etag=stored.etag), "updated"
        except ConcurrencyError:
            continue
    raise ArmError(
        409, "Conflict", f"Image template '{name}' is being changed concurrently; upload it again."
    )


def _put_trigger(st: Store, stored: StoredTemplate, name: str, body: dict[str, Any], version: str) -> str:
    name = validate_resource_name(name, "triggerName")
    parsed = parse_trigger(body, api_version=version)
    tid = template_id(stored.subscription_id, stored.resource_group, stored.name)
    resource = {
        "id": f"{tid}/triggers/{name}",
        "name": name,
        "type": TRIGGER_TYPE,
        "properties": {
            **parsed.to_arm()["properties"],
            "status": {"code": "Healthy", "message": "", "time": iso(now())},
            "provisioningState": "Succeeded",
        },
    }
    existing = st.triggers.get(stored.subscription_id, stored.resource_group, stored.name, name)
    if existing is not None:
        before = dict(existing.resource.get("properties") or {})
        after = dict(resource["properties"])
        if {**before, "status": None} == {**after, "status": None}:
            return name  # unchanged: keep its status
    st.triggers.put(stored.subscription_id, stored.resource_group, stored.name, name, resource)
    return name


async def handle_upload(path: str, data: bytes, client: df.DurableOrchestrationClient) -> dict[str, Any]:
    """Create or update the template of one upload and run it; returns the result document."""
    sub, rg, name = coordinates(path)
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UploadError(
            "InvalidRequestContent", f"The upload is not valid JSON: {exc}. Upload a JSON object."
        ) from None
    resource, triggers = extract(body)
    version = str(resource.get("apiVersion") or LATEST_API_VERSION)
    if version not in SUPPORTED_API_VERSIONS:
        raise UploadError(
            "InvalidApiVersionParameter",
            f"The apiVersion '{version}' is not supported; use one of {', '.join(SUPPORTED_API_VERSIONS)}.",
            "apiVersion",
        )
    literal = resource.get("name")
    if isinstance(literal, str) and literal and not literal.startswith("["):
        name = literal
    name = validate_resource_name(name, "imageTemplateName")
    ignored: list[IgnoredMember] = []
    strict = Settings.from_env().strict_template_members
    template = parse_template(
        resource, api_version=version, name=name, strict_members=strict, warnings=ignored
    )
    # every trigger is validated before anything is written
    for trigger_name, trigger_body, trigger_version in triggers:
        validate_resource_name(trigger_name, "triggerName")
        parse_trigger(trigger_body, api_version=trigger_version)
    st = store()
    user = with_service_defaults(template.to_arm())
    warnings = [w.message for w in ignored]
    stored, change = await in_thread(_create_or_update, st, sub, rg, name, user, warnings)
    if change == "created":
        op_id = str(stored.service.get("createOperation") or "")
        op = await in_thread(st.operations.get, sub, op_id)
        if op is not None:
            await start_create(client, st, stored, op)
        stored = await wait_created(st, sub, rg, name)
        if stored.provisioning_state == "Failed":
            err = (stored.resource.get("properties") or {}).get("provisioningError") or {}
            raise UploadError(
                str(err.get("provisioningErrorCode") or "Other"),
                f"The template was created but its create failed: {err.get('message')} Delete it, fix the "
                "upload and upload it again.",
            )
    names = [await in_thread(_put_trigger, st, stored, n, b, v) for n, b, v in triggers]
    result: dict[str, Any] = {
        "status": "Accepted",
        "templateId": template_id(sub, rg, stored.name),
        "template": change,
        "triggers": names,
    }
    if warnings:
        result["warnings"] = warnings
    try:
        run = await start_build(client, st, stored)
    except ArmError as exc:
        # A template this upload just created can already be building (its create's autoRun, or a watched
        # script that changed meanwhile): that run builds exactly what was uploaded, so the upload is
        # accepted with it instead of failing with a Conflict.
        active = await in_thread(st.runs.latest, sub, rg, stored.name) if change == "created" else None
        if exc.status != 409 or active is None or active.run_state in TERMINAL_RUN_STATES:
            raise
        result["runId"] = active.run.run_id
        result["note"] = f"a build of the uploaded template was already running (run {active.run.run_id})"
        return result
    await in_thread(st.runs.set_status, run.run, details={"trigger": {"kind": "Upload", "blob": path}})
    result["runId"] = run.run.run_id
    return result


@bp.blob_trigger(arg_name="blob", path=UPLOAD_CONTAINER + "/{name}.json", connection="AzureWebJobsStorage")
@bp.blob_output(
    arg_name="result", path=UPLOAD_CONTAINER + "/{name}" + RESULT_SUFFIX, connection="AzureWebJobsStorage"
)
@bp.durable_client_input(client_name="client")
async def image_template_uploaded(
    blob: func.InputStream, result: func.Out[str], client: df.DurableOrchestrationClient
) -> None:
    """Create/update and run the template uploaded as `image-templates/.../{name}.json`."""
    full = str(blob.name or "")
    path = full.split("/", 1)[1] if full.startswith(UPLOAD_CONTAINER + "/") else full
    if path.endswith(RESULT_SUFFIX):
        return  # our own result file
    data = blob.read()
    try:
        outcome = await handle_upload(path, data, client)
    except TemplateError as exc:
        outcome = {"status": "Failed", **exc.to_arm()}
    except (UploadError, ArmError) as exc:
        outcome = {"status": "Failed", **exc.body()}
    outcome = {"blob": path, "time": iso(now()), **outcome}
    log.info("upload %s: %s", path, outcome.get("status"))
    result.set(json.dumps(outcome, indent=2))


@bp.blob_trigger(arg_name="blob", path=f"%{ARTIFACTS_CONTAINER}%/{{name}}", connection="AzureWebJobsStorage")
@bp.durable_client_input(client_name="client")
async def template_artifact_changed(blob: func.InputStream, client: df.DurableOrchestrationClient) -> None:
    """A script or file in the artifacts container was uploaded or replaced: rebuild its templates if
    their inputs changed."""
    url = str(blob.uri or "")
    if not url:
        log.warning("blob %s has no URI; cannot tell which templates use it", blob.name)
        return
    done = await artifact_replaced(client, url)
    log.info("artifact %s replaced: %s", url.split("?", 1)[0], "; ".join(done) or "no template uses it")
