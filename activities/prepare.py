"""The `prepare` activity: resolve the source and fetch + checksum every artifact (Building phase)."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from activities._common import build_of, run_phase, store
from imagebuilder.pipeline.messages import PrepareResult

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def prepare(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, step}. Returns an Outcome of PrepareResult; records the resolved source on the run."""
    outcome = run_phase(payload, lambda provider, build, log: provider.prepare(build, log))
    value = outcome.get("value") or {}
    if outcome.get("kind") == "done" and value.get("source"):
        result = PrepareResult.model_validate(value)
        store().runs.set_status(
            build_of(payload).run,
            details={
                "source": result.source.model_dump(mode="json") if result.source else None,
                "artifacts": [a.model_dump(mode="json") for a in result.artifacts],
            },
        )
    return outcome
