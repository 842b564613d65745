"""The `prepare` activity: resolve the source and fetch + checksum every artifact (Building phase). A run
that resumes a failed one (`details.resumeFrom`) fails here if an artifact used before the failed step
changed since (`imagebuilder.pipeline.resume`)."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from activities._common import build_of, run_phase, store
from imagebuilder.pipeline.messages import ErrorInfo, PrepareResult
from imagebuilder.pipeline.plan import Outcome
from imagebuilder.pipeline.resume import changed_artifacts

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def prepare(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, step}. Returns an Outcome of PrepareResult; records the resolved source on the run."""
    outcome = run_phase(payload, lambda provider, build, log: provider.prepare(build, log))
    value = outcome.get("value") or {}
    if outcome.get("kind") == "done" and value.get("source"):
        result = PrepareResult.model_validate(value)
        build = build_of(payload)
        run = build.run
        # only a resumed run has a plan to check (details.resumeFrom): the others skip reading the record
        record = store().runs.get(run) if build.options.resume_from_run_id else None
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
        store().runs.set_status(
            run,
            details={
                "source": result.source.model_dump(mode="json") if result.source else None,
                "artifacts": [a.model_dump(mode="json") for a in result.artifacts],
            },
        )
    return outcome
