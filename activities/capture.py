"""The `capture` activity: capture the generalized build environment as an image to distribute."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from activities._common import run_phase
from imagebuilder.pipeline.messages import BuildEnv

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def capture(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, step, env: BuildEnv}. Returns an Outcome of CaptureResult."""
    env = BuildEnv.model_validate(payload["env"])
    return run_phase(payload, lambda provider, build, log: provider.capture(build, env, log))
