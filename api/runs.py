"""Runs of a template: run, cancel, runOutputs (the last run's), and our extension listing every run
with its outputs and logs (`.../imageTemplates/{name}/runs[/{runId}[/logs/{logName}]]`), the SBOM of each
run output (`.../runs/{runId}/sbom/{runOutputName}`) and the run's signed provenance (`.../provenance`).

POST .../run takes no body in AIB (an empty body still works). Extension, both members optional:
`{"resumeFromRunId": "<runId>"}` starts a run that resumes a failed one at its failed customizer, reusing
the steps before it from the step cache (`imagebuilder.pipeline.resume`; 400 `ResumeNotPossible` naming
what changed); `{"cache": "off"}` rebuilds every step. Every 202 carries the new run's id in the header
`x-ms-imagebuilder-run-id`.
"""

from __future__ import annotations

import json
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from api._arm import (
    TEMPLATE,
    ArmError,
    api_version,
    arm,
    in_thread,
    json_response,
    location_slug,
    lro_headers,
    method_not_allowed,
    resource_name,
    route,
    run_body,
    store,
    template_coordinates,
    template_id,
)
from api._builds import cancel_build, find_run, start_build
from api.templates import last_run, load, load_ready
from imagebuilder.pipeline.messages import RunOptions
from imagebuilder.pipeline.resume import ResumeRefused, plan_resume
from imagebuilder.provenance.keys import SigningKeyError, signing_key
from imagebuilder.provenance.runs import FORMATS, NotRecordedError, output_sbom, run_statement
from imagebuilder.provenance.slsa import DEFAULT_BUILDER, sign
from imagebuilder.settings import Settings
from imagebuilder.store import InvalidKeyError, RunRecord, Store, StoredTemplate

bp = df.Blueprint()


def _op(st: Store, stored: StoredTemplate, kind: str, run: RunRecord) -> Any:
    return st.operations.create(
        stored.subscription_id,
        location_slug(str(stored.resource.get("location", ""))),
        kind=kind,
        resource_id=template_id(stored.subscription_id, stored.resource_group, stored.name),
        run_id=run.run.run_id,
    )


@bp.route(route=TEMPLATE + "/run", methods=["POST"])
@bp.durable_client_input(client_name="client")
@arm
async def image_templates_run(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    """VirtualMachineImageTemplates_Run: 202; the operation completes when the build does."""
    version = api_version(req)
    sub, rg, name = template_coordinates(req)
    st = store()
    stored = await load_ready(client, st, sub, rg, name)
    options = _run_options(req)
    details = None
    if options.resume_from_run_id:
        plan = await in_thread(_resume_plan, st, stored, options.resume_from_run_id)
        details = {"resumeFrom": plan.as_details()}
    run = await start_build(client, st, stored, details=details, options=options)
    op = await in_thread(_op, st, stored, "run", run)
    headers = lro_headers(req, op, location=True, version=version)
    headers["x-ms-imagebuilder-run-id"] = run.run.run_id
    return func.HttpResponse(b"", status_code=202, headers=headers)


RUN_BODY = '{"resumeFromRunId": "<runId>", "cache": "use"|"off"} (both optional) or nothing'


def _run_options(req: func.HttpRequest) -> RunOptions:
    """The optional body of POST .../run (AIB's takes none): `resumeFromRunId`, `cache`."""
    raw = req.get_body() or b""
    if not raw.strip():
        return RunOptions()
    try:
        body = json.loads(raw)
    except ValueError:
        raise ArmError(400, "InvalidRequestContent", f"The run body must be JSON: {RUN_BODY}.") from None
    if body is None:
        return RunOptions()
    if not isinstance(body, dict):
        raise ArmError(400, "InvalidRequestContent", f"The run body must be a JSON object: {RUN_BODY}.")
    known = {"resumefromrunid": "resumeFromRunId", "cache": "cache"}
    for member in body:
        if str(member).lower() not in known:
            raise ArmError(
                400,
                "InvalidRequestContent",
                f"Could not find member {member!r} on the run body; it takes {RUN_BODY}.",
                str(member),
            )
    values = {known[str(k).lower()]: v for k, v in body.items()}
    resume = values.get("resumeFromRunId")
    if resume is not None and (not isinstance(resume, str) or not resume.strip()):
        raise ArmError(
            400, "InvalidParameter", "resumeFromRunId must be the id of a failed run.", "resumeFromRunId"
        )
    cache = values.get("cache", "use")
    if cache not in ("use", "off"):
        raise ArmError(400, "InvalidParameter", f"cache must be 'use' or 'off', got {cache!r}.", "cache")
    return RunOptions(cache=cache, resume_from_run_id=resume.strip() if resume else None)


def _resume_plan(st: Store, stored: StoredTemplate, run_id: str) -> Any:
    run = find_run(st, stored, run_id)
    if run is None:
        raise ArmError(
            404,
            "ResourceNotFound",
            f"Run '{run_id}' of image template '{stored.name}' was not found.",
            "resumeFromRunId",
        )
    try:
        return plan_resume(
            run_id=run_id,
            run_state=run.run_state,
            error=run.error,
            details=run.details,
            snapshot=run.template_snapshot,
            current=stored.resource,
        )
    except ResumeRefused as exc:
        raise ArmError(
            400, "ResumeNotPossible", f"Cannot resume from run '{run_id}': {exc.message}", exc.target
        ) from None


@bp.route(route=TEMPLATE + "/cancel", methods=["POST"])
@bp.durable_client_input(client_name="client")
@arm
async def image_templates_cancel(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    """VirtualMachineImageTemplates_Cancel: 202; the operation completes when the build has stopped."""
    version = api_version(req)
    sub, rg, name = template_coordinates(req)
    st = store()
    stored = await in_thread(load, st, sub, rg, name)
    run = await in_thread(last_run, st, stored)
    if run is None or run.terminal:
        raise ArmError(
            409,
            "Conflict",
            f"Image template '{stored.name}' has no build in progress to cancel"
            + (f" (its last run ended {run.run_state})." if run else "."),
        )
    run = await cancel_build(client, st, run)
    op = await in_thread(_op, st, stored, "cancel", run)
    return func.HttpResponse(
        b"", status_code=202, headers=lro_headers(req, op, location=True, version=version)
    )


@bp.route(route=TEMPLATE + "/runOutputs", methods=["GET"])
@arm
def image_templates_list_run_outputs(req: func.HttpRequest) -> func.HttpResponse:
    """VirtualMachineImageTemplates_ListRunOutputs: the outputs of the template's last run."""
    api_version(req)
    sub, rg, name = template_coordinates(req)
    st = store()
    run = last_run(st, load(st, sub, rg, name))
    return json_response({"value": st.runs.outputs(run.run) if run else []})


@bp.route(route=TEMPLATE + "/runOutputs/{runOutputName}", methods=["GET"])
@arm
def image_templates_get_run_output(req: func.HttpRequest) -> func.HttpResponse:
    """VirtualMachineImageTemplates_GetRunOutput: one output of the last run."""
    api_version(req)
    sub, rg, name = template_coordinates(req)
    output_name = resource_name(req, "runOutputName")
    st = store()
    run = last_run(st, load(st, sub, rg, name))
    output = st.runs.output(run.run, output_name) if run else None
    if output is None:
        raise ArmError(
            404,
            "ResourceNotFound",
            f"The run output '{output_name}' of image template '{name}' was not found (runOutputs lists "
            "the outputs of the last run).",
        )
    return json_response(output)


def _run(st: Store, req: func.HttpRequest) -> tuple[StoredTemplate, RunRecord]:
    sub, rg, name = template_coordinates(req)
    stored = load(st, sub, rg, name)
    run_id = route(req, "runId")
    run = find_run(st, stored, run_id)
    if run is None:
        raise ArmError(404, "ResourceNotFound", f"Run '{run_id}' of image template '{name}' was not found.")
    return stored, run


@bp.route(route=TEMPLATE + "/runs", methods=["GET"])
@arm
def image_template_runs_list(req: func.HttpRequest) -> func.HttpResponse:
    """Extension: every run of the template (oldest first), each with its outputs and logs."""
    api_version(req)
    sub, rg, name = template_coordinates(req)
    st = store()
    stored = load(st, sub, rg, name)
    runs = st.runs.list(sub, rg, stored.name)
    return json_response({"value": [run_body(r, st.runs.outputs(r.run), req) for r in runs]})


@bp.route(route=TEMPLATE + "/runs/{runId}", methods=["GET"])
@arm
def image_template_runs_get(req: func.HttpRequest) -> func.HttpResponse:
    """Extension: one run with its state, steps, outputs and log locations."""
    api_version(req)
    st = store()
    _, run = _run(st, req)
    return json_response(run_body(run, st.runs.outputs(run.run), req))


@bp.route(route=TEMPLATE + "/runs/{runId}/logs/{logName}", methods=["GET"])
@arm
def image_template_run_log(req: func.HttpRequest) -> func.HttpResponse:
    """Extension: a run's log as text (e.g. customization.log)."""
    api_version(req)
    st = store()
    _, run = _run(st, req)
    try:
        text = st.runs.log(run.run, route(req, "logName")).read()
    except InvalidKeyError as exc:
        raise ArmError(400, "InvalidParameter", exc.message, "logName") from None
    return func.HttpResponse(text, status_code=200, mimetype="text/plain", charset="utf-8")


@bp.route(route=TEMPLATE + "/runs/{runId}/sbom/{runOutputName}", methods=["GET"])
@arm
def image_template_run_sbom(req: func.HttpRequest) -> func.HttpResponse:
    """Extension: the SBOM of one run output, read from the image (`format=spdx` (SPDX 2.3, default) or
    `cyclonedx` (CycloneDX 1.5), JSON)."""
    api_version(req)
    fmt = _sbom_format(req.params.get("format"))
    st = store()
    stored, run = _run(st, req)
    return json_response(sbom_document(st, stored, run, resource_name(req, "runOutputName"), fmt))


def _sbom_format(value: str | None) -> str:
    fmt = (value or "spdx").strip().lower()
    if fmt not in FORMATS:
        raise ArmError(
            400, "InvalidParameter", f"format {fmt!r} is not one of {', '.join(FORMATS)}", "format"
        )
    return fmt


def sbom_document(st: Store, stored: StoredTemplate, run: RunRecord, output_name: str, fmt: str) -> Any:
    """The SBOM of run output `output_name` in `fmt` (spdx, cyclonedx); ArmError 400/404. Also what the
    dashboard serves."""
    fmt = _sbom_format(fmt)
    output = st.runs.output(run.run, output_name)
    if output is None:
        names = ", ".join(o["name"] for o in st.runs.outputs(run.run)) or "none"
        raise ArmError(
            404,
            "ResourceNotFound",
            f"Run '{run.run.run_id}' of image template '{stored.name}' has no run output '{output_name}' "
            f"(its outputs: {names}).",
        )
    try:
        doc = output_sbom(
            st.runs.sbom_inventory(run.run),
            template_name=stored.name,
            run_id=run.run.run_id,
            output=output,
            details=run.details,
            created=run.end_time or run.start_time or run.created_time,
            fmt="cyclonedx" if fmt == "cyclonedx" else "spdx",
        )
    except NotRecordedError as exc:
        raise ArmError(404, "ResourceNotFound", str(exc)) from None
    return doc


@bp.route(route=TEMPLATE + "/runs/{runId}/provenance", methods=["GET"])
@arm
def image_template_run_provenance(req: func.HttpRequest) -> func.HttpResponse:
    """Extension: the run's SLSA provenance (in-toto Statement v1) in a DSSE envelope signed with the
    deployment's Ed25519 key; check an artifact with `python -m imagebuilder.provenance verify`."""
    api_version(req)
    st = store()
    _, run = _run(st, req)
    return json_response(provenance_envelope(st, run))


def provenance_envelope(st: Store, run: RunRecord) -> Any:
    """The run's signed provenance (DSSE envelope); ArmError 404 when not recorded, 500 without a key.
    Also what the dashboard serves."""
    settings = Settings.from_env()
    try:
        stmt = run_statement(
            template_id=run.run.template_id,
            run_id=run.run.run_id,
            snapshot=run.template_snapshot,
            details=run.details,
            outputs=st.runs.outputs(run.run),
            builder_id=settings.builder_id or f"{DEFAULT_BUILDER.rsplit('/', 1)[0]}/{settings.provider}",
            started=run.start_time,
            finished=run.end_time,
        )
    except NotRecordedError as exc:
        raise ArmError(404, "ResourceNotFound", str(exc)) from None
    try:
        key = signing_key(settings)
    except SigningKeyError as exc:
        raise ArmError(500, "ProvenanceKeyMissing", str(exc)) from None
    return sign(stmt, key)


@bp.route(route=TEMPLATE + "/run", methods=["GET", "PUT", "PATCH", "DELETE"])
@arm
def image_templates_run_method_not_allowed(req: func.HttpRequest) -> func.HttpResponse:
    """405 for run called with anything but POST."""
    return method_not_allowed(req, "POST")


@bp.route(route=TEMPLATE + "/cancel", methods=["GET", "PUT", "PATCH", "DELETE"])
@arm
def image_templates_cancel_method_not_allowed(req: func.HttpRequest) -> func.HttpResponse:
    """405 for cancel called with anything but POST."""
    return method_not_allowed(req, "POST")
