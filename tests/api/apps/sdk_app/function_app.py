"""Test app: the project's ARM blueprints and template lifecycle plus a tiny real `build_image`
orchestration, so create, run, poll and cancel are tested through the durable host without building an
image.

The orchestration reads its script from the template's tags: `test.seconds` (how long the "build" takes,
a durable timer), `test.outcome` (Succeeded, PartiallySucceeded or Failed). It races the timer with the
`cancel` event, as the real one does, and records everything through the store, as the real activities do
(unless `test.silent`: then only its output tells the outcome).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from activities import template_lifecycle
from api import async_operations, operations, runs, templates, triggers
from imagebuilder.pipeline.messages import BuildInput
from imagebuilder.settings import Settings
from imagebuilder.store import open_store
from orchestrators import provision_template

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
bp = df.Blueprint()


@bp.orchestration_trigger(context_name="context")
def build_image(context: df.DurableOrchestrationContext) -> Any:
    build = context.get_input()
    tags = build["template"].get("tags") or {}
    seconds = float(tags.get("test.seconds", "1"))
    yield context.call_activity("test_record", {"build": build, "runSubState": "Building"})
    timer = context.create_timer(context.current_utc_datetime + timedelta(seconds=seconds))
    cancel = context.wait_for_external_event("cancel")
    winner = yield context.task_any([timer, cancel])
    if winner == cancel:
        yield context.call_activity(
            "test_record", {"build": build, "runState": "Canceled", "message": "Canceled"}
        )
        return "canceled"
    outcome = tags.get("test.outcome", "Succeeded")
    if tags.get("test.silent"):  # ends without recording its outcome (only its output says it)
        return {"runState": outcome, "message": "finished without recording"}
    yield context.call_activity("test_record", {"build": build, "outputs": True, "runState": outcome})
    return outcome


@bp.activity_trigger(input_name="payload")
def test_record(payload: dict[str, Any]) -> str:
    build = BuildInput.model_validate(payload["build"])
    store = open_store(Settings.from_env().storage_connection)
    log = store.runs.log(build.run)
    log.write(f"test build step: {payload.get('runSubState') or payload.get('runState')}\n")
    if payload.get("outputs"):
        for target in build.template["properties"].get("distribute", []):
            store.runs.put_output(
                build.run,
                target["runOutputName"],
                {"artifactUri": f"file:///images/{build.run.run_id}.vhd", "provisioningState": "Succeeded"},
            )
    state = payload.get("runState")
    store.runs.set_status(
        build.run,
        run_state=state or "Running",
        run_sub_state=payload.get("runSubState"),
        message=payload.get("message") or ("" if state != "Failed" else "step customize[0] failed (exit 3)"),
        error={"code": "CustomizerFailed", "message": "exit 3"} if state == "Failed" else None,
    )
    return state or "Running"


for blueprint in (
    operations.bp,
    templates.bp,
    runs.bp,
    triggers.bp,
    async_operations.bp,
    provision_template.bp,  # the template lifecycle is the real one (local provider)
    template_lifecycle.bp,
    bp,
):
    app.register_functions(blueprint)
