"""Starting, cancelling and reconciling builds: the one place the API talks to the `build_image`
orchestration (through the durable client binding).

`start_build` is also what a trigger (timer, source-image check) calls to run a template.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.durable_functions as df

from api._arm import ArmError, in_thread
from imagebuilder.pipeline.messages import BuildInput, RunOptions, RunRef
from imagebuilder.pipeline.naming import BUILD_ORCHESTRATION, CANCEL_EVENT, build_instance_id
from imagebuilder.store import (
    TERMINAL_RUN_STATES,
    InvalidKeyError,
    RunInProgressError,
    RunRecord,
    Store,
    StoredTemplate,
)

log = logging.getLogger("api.builds")

ORCHESTRATION = BUILD_ORCHESTRATION
_DEAD = {"Failed", "Terminated", "Canceled"}
# A run still Queued that the durable host does not know after this long was never started (the process
# that recorded it died before starting the orchestration).
ORPHAN_AFTER = timedelta(minutes=15)


def new_run_id() -> str:
    """A run id that sorts by start time and never repeats."""
    return f"{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:8]}"


def instance_id(run: RunRef) -> str:
    """The orchestration instance of a run: derived from (template, run id), so it is stable."""
    return build_instance_id(run)


def run_ref(stored: StoredTemplate, run_id: str) -> RunRef:
    return RunRef(
        subscription_id=stored.subscription_id,
        resource_group=stored.resource_group,
        template_name=stored.name,
        run_id=run_id,
    )


def find_run(store: Store, stored: StoredTemplate, run_id: str) -> RunRecord | None:
    """Run `run_id` of a stored template, or None (also for an id that cannot name a run)."""
    try:
        found: RunRecord | None = store.runs.get(run_ref(stored, run_id))
    except InvalidKeyError:
        return None
    return found


async def start_build(
    client: df.DurableOrchestrationClient,
    store: Store,
    stored: StoredTemplate,
    *,
    retry: bool = True,
    details: dict[str, Any] | None = None,
    options: RunOptions | None = None,
) -> RunRecord:
    """Record a new run (Queued) and start `build_image` for it; 409 if a run is already active (a run
        whose orchestration is over or was never started is settled first, see `reconcile`). `details` are
        recorded on the run before the build starts (e.g. `resumeFrom`); `options` go to the build (cache,
    resume)."""
    ref = run_ref(stored, new_run_id())
    try:
        record: RunRecord = await in_thread(store.runs.create, ref, template_snapshot=stored.resource)
    except RunInProgressError as exc:
        if retry and exc.active_run_id and await _cleared(client, store, stored, exc.active_run_id):
            return await start_build(client, store, stored, retry=False, details=details, options=options)
        raise ArmError(
            409,
            "Conflict",
            f"Image template '{stored.name}' already has a build in progress"
            + (f" (run {exc.active_run_id})" if exc.active_run_id else "")
            + ": wait for it to finish or cancel it, then run the template again.",
        ) from None
    if details:
        record = await in_thread(store.runs.set_status, ref, details=details)
    warnings = [str(w) for w in stored.service.get("warnings") or []]
    if warnings:  # what the create ignored, where the build's reader will see it
        await in_thread(store.runs.log(ref).write, "".join(f"warning: {w}\n" for w in warnings))
    build = BuildInput(run=ref, template=stored.resource, options=options or RunOptions())
    payload: dict[str, Any] = build.model_dump(mode="json")
    try:
        await client.start_new(ORCHESTRATION, instance_id(ref), payload)
    except Exception as exc:
        log.exception("starting %s for run %s failed", ORCHESTRATION, ref.run_id)
        await in_thread(
            store.runs.set_status,
            ref,
            run_state="Failed",
            message=f"The build could not be started: {exc}",
            error={"code": "BuildNotStarted", "message": str(exc)},
        )
        raise ArmError(
            503,
            "ServiceUnavailable",
            f"The build of image template '{stored.name}' could not be started; retry the run.",
        ) from None
    return record


async def _cleared(
    client: df.DurableOrchestrationClient, store: Store, stored: StoredTemplate, run_id: str
) -> bool:
    """True if the active run `run_id` turned out to be over (and is now recorded as such)."""
    active = await in_thread(store.runs.get, run_ref(stored, run_id))
    if active is None or active.terminal:
        return True  # it ended while we looked
    return (await reconcile(client, store, active)).terminal


async def cancel_build(client: df.DurableOrchestrationClient, store: Store, run: RunRecord) -> RunRecord:
    """Mark the run Canceling and raise the `cancel` event on its orchestration."""
    record: RunRecord = await in_thread(
        store.runs.set_status, run.run, run_state="Canceling", message="Cancellation requested."
    )
    try:
        await client.raise_event(instance_id(run.run), CANCEL_EVENT, "canceled by user request")
    except Exception as exc:
        # No orchestration to tell (it never started or is gone): nothing is building, so it is canceled.
        log.warning("raising %r on run %s failed: %s", CANCEL_EVENT, run.run.run_id, exc)
        record = await reconcile(client, store, record, force=True)
    return record


async def reconcile(
    client: df.DurableOrchestrationClient, store: Store, run: RunRecord, *, force: bool = False
) -> RunRecord:
    """Finish a run whose orchestration ended without recording an end (crashed, terminated), or never
    started (still Queued, unknown to the durable host after `ORPHAN_AFTER`). With `force`, a run the
    host does not know is finished at once (its cancel could not be delivered)."""
    if run.terminal:
        return run
    try:
        status = await client.get_status(instance_id(run.run))
    except Exception as exc:
        log.warning("orchestration status of run %s unavailable: %s", run.run.run_id, exc)
        return run
    runtime_status = getattr(status, "runtime_status", None)
    runtime = getattr(runtime_status, "value", None)
    output = getattr(status, "output", None)
    unknown = runtime is None
    orphan = unknown and run.run_sub_state == "Queued" and datetime.now(UTC) - run.created_time > ORPHAN_AFTER
    if runtime not in _DEAD and runtime != "Completed" and not (unknown and force) and not orphan:
        return run
    canceled = run.run_state == "Canceling"
    state = "Canceled" if canceled else "Failed"
    if runtime == "Completed":
        # It ended without recording its outcome: take it from its output (the orchestration's status).
        reported = output.get("runState") if isinstance(output, dict) else None
        state = reported if reported in TERMINAL_RUN_STATES else state
        message = str(output.get("message") or "") if isinstance(output, dict) else ""
        message = message or "The build ended without recording its outcome."
    elif canceled:
        message = "The build was canceled."
    elif unknown:
        message = "The build orchestration was never started; run the template again."
    else:
        message = f"The build orchestration ended ({runtime}): {output}"
    updated: RunRecord = await in_thread(
        store.runs.set_status,
        run.run,
        run_state=state,
        message=message,
        error=None
        if state in ("Canceled", "Succeeded", "PartiallySucceeded")
        else {"code": "BuildOrchestrationFailed", "message": message},
    )
    return updated
