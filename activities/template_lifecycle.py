"""Activities of the template lifecycle: `create_template_step` (the provider's `create_template`, its
outcome recorded on the template and its create operation, and `autoRun`'s run recorded) and
`delete_template_step` (the provider's `delete_template`, then the template purged).

Both are idempotent: they read the template's state first, so a retried or replayed call finishes what the
first began and never records a second outcome or a second autoRun run.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, get_args

import azure.durable_functions as df

from activities._common import provider, store
from imagebuilder.pipeline.messages import (
    BuildInput,
    CleanupReport,
    ErrorInfo,
    Pending,
    RunRef,
    TemplateInput,
    TemplateRef,
    TemplateStaging,
)
from imagebuilder.pipeline.naming import build_instance_id
from imagebuilder.providers.base import ProviderError, TransientProviderError
from imagebuilder.store import ConcurrencyError, Store, StoredTemplate
from imagebuilder.template.models import ProvisioningErrorCode

bp = df.Blueprint()
logger = logging.getLogger(__name__)

# AIB's ProvisioningErrorCode values (the spec's enum); any other provider code is reported as Other.
PROVISIONING_ERROR_CODES = frozenset(get_args(ProvisioningErrorCode))


class _Log:
    """The provider's lines about a template go to the app's log (a template has no customization.log)."""

    uri = ""

    def __init__(self, what: str) -> None:
        self.what = what

    def write(self, text: str) -> None:
        for line in text.splitlines():
            logger.info("%s: %s", self.what, line)


def _input(stored: StoredTemplate) -> TemplateInput:
    return TemplateInput(
        ref=TemplateRef(
            subscription_id=stored.subscription_id,
            resource_group=stored.resource_group,
            template_name=stored.name,
        ),
        template=stored.resource,
        staging=stored.service.get("staging") or {},
    )


def provisioning_error(stored: StoredTemplate) -> dict[str, Any] | None:
    """The template's provisioningError as an ARM operation error, or None unless it is Failed."""
    if stored.provisioning_state != "Failed":
        return None
    err = (stored.resource.get("properties") or {}).get("provisioningError") or {}
    return {
        "code": str(err.get("provisioningErrorCode") or "Other"),
        "message": str(err.get("message") or ""),
    }


def _complete(st: Store, stored: StoredTemplate, operation_id: str) -> None:
    error = provisioning_error(stored)
    st.operations.complete(
        stored.subscription_id, operation_id, status="Failed" if error else "Succeeded", error=error
    )


def _record(st: Store, stored: StoredTemplate, result: TemplateStaging | Pending) -> StoredTemplate:
    """Write the provider's answer on the template (ETag-checked: a concurrent write raises, and the
    activity is retried from a fresh read)."""
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
        service["warnings"] = list(service.get("warnings") or []) + list(result.warnings)
    else:
        error = result.error or ErrorInfo(code="Other", message="The template could not be created.")
        code = error.code if error.code in PROVISIONING_ERROR_CODES else "Other"
        props["provisioningState"] = "Failed"
        props["provisioningError"] = {"provisioningErrorCode": code, "message": error.message}
        service.pop("pending", None)
    return st.templates.replace(
        stored.subscription_id,
        stored.resource_group,
        stored.name,
        resource,
        etag=stored.etag,
        service=service,
    )


def _auto_run(st: Store, stored: StoredTemplate, operation_id: str) -> dict[str, Any] | None:
    """Record autoRun's run (once: its id carries the create operation's) and the input of its build."""
    auto = (stored.resource.get("properties") or {}).get("autoRun") or {}
    if stored.provisioning_state != "Succeeded" or auto.get("state") != "Enabled":
        return None
    tag = operation_id.replace("-", "")[:8]
    last = stored.last_run_id
    if last and not last.endswith(tag):
        return None  # someone ran it already: autoRun has nothing to add
    run_id = last or f"{datetime.now(UTC):%Y%m%d%H%M%S}-{tag}"
    ref = RunRef(
        subscription_id=stored.subscription_id,
        resource_group=stored.resource_group,
        template_name=stored.name,
        run_id=run_id,
    )
    if st.runs.get(ref) is None:
        st.runs.create(ref, template_snapshot=stored.resource)
        warnings = [str(w) for w in stored.service.get("warnings") or []]
        if warnings:
            st.runs.log(ref).write("".join(f"warning: {w}\n" for w in warnings))
    build = BuildInput(run=ref, template=stored.resource).model_dump(mode="json")
    return {"build": build, "instanceId": build_instance_id(ref)}


@bp.activity_trigger(input_name="payload")
def create_template_step(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {ref, operationId[, giveUp]}. Returns {kind: done|pending, state, retryAfterSeconds,
    autoRun: {build, instanceId} | None}."""
    ref = TemplateRef.model_validate(payload["ref"])
    op_id = str(payload["operationId"])
    st = store()
    stored = st.templates.get(ref.subscription_id, ref.resource_group, ref.template_name)
    if stored is None:
        st.operations.complete(
            ref.subscription_id,
            op_id,
            status="Failed",
            error={
                "code": "ResourceNotFound",
                "message": "The template was deleted before its create ended.",
            },
        )
        return {"kind": "done", "state": None}
    if stored.provisioning_state == "Creating":
        result: TemplateStaging | Pending
        sink = _Log(f"create {ref.template_id}")
        try:
            if payload.get("giveUp"):
                raise ProviderError(
                    "the provider's create did not finish in time; delete the template and retry"
                )
            pending = stored.service.get("pending")
            if isinstance(pending, dict):
                result = provider().poll(Pending.model_validate(pending), sink)
            else:
                result = provider().create_template(_input(stored), sink)
        except TransientProviderError:
            raise
        except ProviderError as exc:
            result = TemplateStaging(status="failed", error=ErrorInfo(code="ServerError", message=str(exc)))
        if not isinstance(result, TemplateStaging | Pending):
            result = TemplateStaging.model_validate(result)
        try:
            stored = _record(st, stored, result)
        except ConcurrencyError as exc:  # someone wrote the template meanwhile (a PATCH of tags): again
            raise TransientProviderError(f"template changed while being created: {exc}") from exc
        if isinstance(result, Pending):
            return {"kind": "pending", "retryAfterSeconds": result.retry_after_seconds}
    if stored.provisioning_state in ("Succeeded", "Failed"):
        _complete(st, stored, op_id)
    return {"kind": "done", "state": stored.provisioning_state, "autoRun": _auto_run(st, stored, op_id)}


@bp.activity_trigger(input_name="payload")
def delete_template_step(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {ref, operationId}. Removes the staging resources, then purges the template; a failure
    leaves it Deleting (a new DELETE tries again) and fails the operation, naming what was left."""
    ref = TemplateRef.model_validate(payload["ref"])
    op_id = str(payload["operationId"])
    st = store()
    stored = st.templates.get(ref.subscription_id, ref.resource_group, ref.template_name)
    if stored is not None:
        sink = _Log(f"delete {ref.template_id}")
        try:
            report: Any = provider().delete_template(_input(stored), sink)
            if isinstance(report, Pending):
                return {"kind": "pending", "retryAfterSeconds": report.retry_after_seconds}
            errors = (
                CleanupReport.model_validate(report).errors
                if not isinstance(report, CleanupReport)
                else report.errors
            )
        except TransientProviderError:
            raise
        except ProviderError as exc:
            errors = [str(exc)]
        if errors:
            message = (
                f"The staging resources of image template '{stored.name}' could not all be removed "
                f"({'; '.join(errors)}); delete the template again to retry."
            )
            st.operations.complete(
                ref.subscription_id,
                op_id,
                status="Failed",
                error={"code": "StagingCleanupFailed", "message": message},
            )
            return {"kind": "done", "state": "Deleting"}
        st.purge_template(ref.subscription_id, ref.resource_group, ref.template_name)
    st.operations.complete(ref.subscription_id, op_id, status="Succeeded")
    return {"kind": "done", "state": "Deleted"}
