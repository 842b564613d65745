"""The `run_status` activity: persist the run'\''s lastRunStatus (runState, runSubState, message) or one run
output in the store, where the API reads them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df

from activities._common import build_of, settings, store, timeout_scale, write_status
from imagebuilder.pipeline import events as lifecycle
from imagebuilder.pipeline.plan import StatusUpdate
from imagebuilder.store.events import publish_quietly

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def run_status(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, op: "status"|"output", ...StatusUpdate}. Idempotent: writing the same status twice
    changes nothing. Returns what was written, plus the host's `timeoutScale` (see _common)."""
    run = build_of(payload).run
    update = StatusUpdate.model_validate(payload)
    if update.op == "output":
        if not update.output_name or update.output is None:
            raise ValueError("run_status op=output needs output_name and output")
        # lifecycle events go out before the write, so a retried activity sends them again (same ids)
        replicated = lifecycle.replication_events(
            run, update.output_name, update.output, time=datetime.now(UTC)
        )
        publish_quietly(settings().storage_connection, replicated)
        store().runs.put_output(run, update.output_name, update.output)
        return {"op": "output", "name": update.output_name}

    write_status(run, update)
    return {
        "op": "status",
        "runState": update.run_state,
        "runSubState": update.run_sub_state,
        "timeoutScale": timeout_scale(),
    }
