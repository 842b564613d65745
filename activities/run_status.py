"""The `run_status` activity: persist the run'\''s lastRunStatus (runState, runSubState, message) or one run
output in the store, where the API reads them."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from activities._common import build_of, timeout_scale, write_output, write_status
from imagebuilder.pipeline.plan import StatusUpdate

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def run_status(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, op: "status"|"output", ...StatusUpdate, log?}. Idempotent: writing the same status
    twice changes nothing. `log`: lines a step left unwritten (its end line, `deferEnd`), appended to the
    run's log before the status is written. Returns what was written, plus the host's `timeoutScale`
    (see _common)."""
    run = build_of(payload).run
    update = StatusUpdate.model_validate(payload)
    if update.op == "output":
        if not update.output_name or update.output is None:
            raise ValueError("run_status op=output needs output_name and output")
        write_output(run, update.output_name, update.output)
        return {"op": "output", "name": update.output_name}

    lines = payload.get("log")
    write_status(run, update, lines if isinstance(lines, str) else None)
    return {
        "op": "status",
        "runState": update.run_state,
        "runSubState": update.run_sub_state,
        "timeoutScale": timeout_scale(),
    }
