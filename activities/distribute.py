"""The `distribute` activity: publish the captured image as one distribute target in one region; for a
target with one region (`writeOutput` in the input) it also persists the run output, so the
`distribute_image` orchestration needs no `run_status` call after it."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df
from pydantic import BaseModel

from activities._common import build_of, run_phase, write_output
from imagebuilder.pipeline import plan as p
from imagebuilder.pipeline.messages import CaptureResult, ReplicationResult

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def distribute(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, step, captured: CaptureResult, target_index, region, writeOutput?}. Returns an
    Outcome of ReplicationResult (`output_written` when writeOutput asked and the run output, made from
    this one region's result as `distribute_image` makes it, was persisted)."""
    captured = CaptureResult.model_validate(payload["captured"])
    index, region = int(payload["target_index"]), str(payload["region"])

    def write(result: BaseModel) -> dict[str, Any]:
        if not isinstance(result, ReplicationResult):
            return {}
        target = p.BuildPlan.from_template(build_of(payload).template).targets[index]
        regions = [ReplicationResult.model_validate(result.model_dump(mode="json")).model_dump(mode="json")]
        record = p.run_output_record(target, regions, p.output_status(regions))
        write_output(build_of(payload).run, target.run_output_name, record)
        return {"output_written": True}

    return run_phase(
        payload,
        lambda provider, build, log: provider.distribute(build, captured, index, region, log),
        write if payload.get("writeOutput") else None,
    )
