"""The `create_env` activity: create the transient build environment from the resolved source."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from activities._common import run_phase
from imagebuilder.pipeline.messages import PrepareResult

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def create_env(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, step, prepared: PrepareResult}. Returns an Outcome of BuildEnv."""
    prepared = PrepareResult.model_validate(payload["prepared"])
    return run_phase(payload, lambda provider, build, log: provider.create_build_env(build, prepared, log))
