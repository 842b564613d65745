"""The `cleanup` activity: remove every transient resource of the run, on every path."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from activities._common import run_phase

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def cleanup(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, step, keep}. Returns an Outcome of CleanupReport (keep=True: errorHandling abort)."""
    keep = bool(payload.get("keep"))
    return run_phase(payload, lambda provider, build, log: provider.cleanup(build, keep=keep, log=log))
