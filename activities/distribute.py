"""The `distribute` activity: publish the captured image as one distribute target in one region."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from activities._common import run_phase
from imagebuilder.pipeline.messages import CaptureResult

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def distribute(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, step, captured: CaptureResult, target_index, region}. Returns an Outcome of
    ReplicationResult."""
    captured = CaptureResult.model_validate(payload["captured"])
    index, region = int(payload["target_index"]), str(payload["region"])
    return run_phase(
        payload, lambda provider, build, log: provider.distribute(build, captured, index, region, log)
    )
