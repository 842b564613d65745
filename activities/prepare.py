"""The `prepare` activity: resolve the source and fetch + checksum every artifact (Building phase). A run
that resumes a failed one (`details.resumeFrom`) fails here if an artifact used before the failed step
changed since (`imagebuilder.pipeline.resume`)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import azure.durable_functions as df
from pydantic import BaseModel

from activities._common import build_of, in_background, run_phase, store
from imagebuilder.pipeline.messages import BuildInput, ErrorInfo, PrepareResult, RunRef
from imagebuilder.pipeline.plan import Outcome
from imagebuilder.pipeline.resume import changed_artifacts
from imagebuilder.providers.base import ComputeProvider, LogSink

bp = df.Blueprint()


def record_source(run: RunRef, result: PrepareResult) -> None:
    """The resolved source and the fetched artifacts, on the run record (details.source, .artifacts)."""
    store().runs.set_status(
        run,
        details={
            "source": result.source.model_dump(mode="json") if result.source else None,
            "artifacts": [a.model_dump(mode="json") for a in result.artifacts],
        },
    )


@bp.activity_trigger(input_name="payload")
def prepare(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, step}. Returns an Outcome of PrepareResult; records the resolved source on the run
    (while the run log gets the step's last line; a resumed run checks its artifacts first)."""
    if build_of(payload).options.resume_from_run_id:
        return prepare_resumed(payload)
    recording: list[Future[None]] = []

    def phase(provider: ComputeProvider, build: BuildInput, log: LogSink) -> BaseModel:
        result = provider.prepare(build, log)
        if isinstance(result, PrepareResult) and result.source:
            recording.append(in_background(record_source, build.run, result))
        return result

    outcome = run_phase(payload, phase)
    for written in recording:
        written.result()  # a failed write fails the activity (retried), as before the step's end
    return outcome


def prepare_resumed(payload: dict[str, Any]) -> dict[str, Any]:
    """prepare for a run that resumes a failed one: the artifacts used before its failed step must be
    unchanged (details.resumeFrom), else ResumeNotPossible."""
    outcome = run_phase(payload, lambda provider, build, log: provider.prepare(build, log))
    value = outcome.get("value") or {}
    if outcome.get("kind") == "done" and value.get("source"):
        result = PrepareResult.model_validate(value)
        run = build_of(payload).run
        record = store().runs.get(run)
        plan = (record.details.get("resumeFrom") if record else None) or {}
        changed = changed_artifacts(plan, value.get("artifacts") or []) if plan else []
        if changed:
            message = (
                f"cannot resume from run {plan.get('runId')}: artifact(s) used before its failed step "
                f"{plan.get('failedStep')} changed: {'; '.join(changed)}; run the template again instead"
            )
            store().runs.log(run).write(f"! {message}\n")
            error = ErrorInfo(code="ResumeNotPossible", message=message, step=str(payload.get("step")))
            return Outcome(kind="failed", value={}, error=error).model_dump(mode="json")
        record_source(run, result)
    return outcome
