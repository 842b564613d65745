"""The `customize` activity: run one customizer (`properties.customize[index]`) in the build environment."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from activities._common import run_phase
from imagebuilder.pipeline.messages import BuildEnv

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def customize(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, step, env: BuildEnv, index}. Returns an Outcome of StepResult."""
    env = BuildEnv.model_validate(payload["env"])
    index = int(payload["index"])
    return run_phase(payload, lambda provider, build, log: provider.customize(build, env, index, log))
