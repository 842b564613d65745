"""ARM asynchronous operations: the status resource `Azure-AsyncOperation` points at, and the
`Location` result (202 until done, then the final result). Run and cancel operations follow the run:
they complete when the build ends."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df
import azure.functions as func

from api._arm import (
    PROVIDER,
    SUBSCRIPTION,
    ArmError,
    api_version,
    arm,
    empty_response,
    in_thread,
    json_response,
    operation_path,
    operation_result_path,
    origin,
    parse_template_id,
    retry_after,
    route,
    store,
    subscription,
    template_body,
)
from api._builds import reconcile
from api.templates import last_run, settle_create
from imagebuilder.pipeline.messages import RunRef
from imagebuilder.store import OperationRecord, RunRecord, Store

bp = df.Blueprint()

LOCATION = SUBSCRIPTION + "/providers/" + PROVIDER + "/locations/{location}"


def _get(st: Store, sub: str, op_id: str) -> OperationRecord:
    op = st.operations.get(sub, op_id)
    if op is None:
        raise ArmError(404, "OperationNotFound", f"The operation '{op_id}' was not found.")
    return op


def _outcome(op: OperationRecord, run: RunRecord) -> tuple[str, dict[str, Any] | None]:
    if op.kind == "cancel":
        return "Succeeded", None
    if run.run_state in ("Succeeded", "PartiallySucceeded"):
        return "Succeeded", None
    if run.run_state == "Canceled":
        return "Canceled", {"code": "Canceled", "message": run.message or "The build was canceled."}
    error = run.error or {}
    return "Failed", {
        "code": str(error.get("code") or "BuildFailed"),
        "message": run.message or str(error.get("message") or "The build failed."),
    }


async def settle(client: df.DurableOrchestrationClient, st: Store, sub: str, op_id: str) -> OperationRecord:
    """The operation, completed first if what it follows has ended."""
    op = await in_thread(_get, st, sub, op_id)
    if not op.done and op.kind in ("create", "delete"):
        return await settle_create(client, st, op)
    if op.done or op.kind not in ("run", "cancel") or not op.run_id:
        return op
    t_sub, rg, name = parse_template_id(op.resource_id)
    ref = RunRef(subscription_id=t_sub, resource_group=rg, template_name=name, run_id=op.run_id)
    run = await in_thread(st.runs.get, ref)
    if run is None:
        done: OperationRecord = await in_thread(
            st.operations.complete,
            sub,
            op_id,
            status="Failed",
            error={"code": "RunNotFound", "message": "The run no longer exists: its template was deleted."},
        )
        return done
    if not run.terminal:
        run = await reconcile(client, st, run)
    if not run.terminal:
        return op
    status, error = _outcome(op, run)
    done = await in_thread(st.operations.complete, sub, op_id, status=status, error=error)
    return done


def status_body(op: OperationRecord) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": operation_path(op),
        "name": op.operation_id,
        "status": op.status,
        "startTime": op.start_time.isoformat().replace("+00:00", "Z"),
    }
    if op.end_time is not None:
        body["endTime"] = op.end_time.isoformat().replace("+00:00", "Z")
    if op.error is not None:
        body["error"] = op.error
    warnings = (op.result or {}).get("warnings") if op.kind == "create" else None
    if warnings:  # members a create ignored (see api.templates); clients read only status and error
        body["properties"] = {"warnings": list(warnings)}
    body["resourceId"] = op.resource_id
    return body


@bp.route(route=LOCATION + "/operations/{operationId}", methods=["GET"])
@bp.durable_client_input(client_name="client")
@arm
async def operation_status(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """The status of an asynchronous operation: {id, name, status, startTime, endTime, error}."""
    api_version(req)
    sub = subscription(req)
    op = await settle(client, store(), sub, route(req, "operationId"))
    headers = {} if op.done else {"Retry-After": str(retry_after(op))}
    return json_response(status_body(op), 200, headers)


def _final(st: Store, op: OperationRecord) -> func.HttpResponse:
    if op.status == "Failed":
        return json_response(
            {"error": op.error or {"code": "Failed", "message": "The operation failed."}}, 400
        )
    if op.status == "Canceled":
        return json_response({"error": op.error or {"code": "Canceled", "message": "Canceled."}}, 409)
    if op.kind in ("create", "update"):
        sub, rg, name = parse_template_id(op.resource_id)
        stored = st.templates.get(sub, rg, name)
        if stored is not None:
            return json_response(template_body(stored, last_run(st, stored)))
    return empty_response(204)


@bp.route(route=LOCATION + "/operationResults/{operationId}", methods=["GET"])
@bp.durable_client_input(client_name="client")
@arm
async def operation_result(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """The `Location` of an operation: 202 while it runs, then its final result (or error)."""
    version = api_version(req)
    sub = subscription(req)
    st = store()
    op = await settle(client, st, sub, route(req, "operationId"))
    if not op.done:
        return empty_response(
            202,
            {
                "Location": f"{origin(req)}{operation_result_path(op)}?api-version={version}",
                "Retry-After": str(retry_after(op)),
            },
        )
    response: func.HttpResponse = await in_thread(_final, st, op)
    return response
