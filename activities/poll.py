"""The `poll` activity: continue a long-running provider operation that an activity returned as Pending."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from activities._common import run_phase
from imagebuilder.pipeline.messages import Pending

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def poll(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, step, pending: Pending}. Returns an Outcome of the original result or a new Pending."""
    pending = Pending.model_validate(payload["pending"])
    return run_phase(payload, lambda provider, build, log: provider.poll(pending, log, build=build))
