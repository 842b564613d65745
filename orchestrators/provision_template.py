"""The template lifecycle orchestrations: `provision_template` (AIB's create as a long-running operation:
the provider's checks and staging resources, then the `autoRun` build) and `delete_template` (the staging
resources removed, then the template).

`provision_template` calls `create_template_step` until it is no longer pending (a provider's long-running
create is waited for on a durable timer), which records Succeeded or Failed on the template and completes
its ARM operation; when the template asks for `autoRun`, the step records the run and the build runs as a
`build_image` sub-orchestration under the run's own instance id. Pure: JSON in and out, no I/O.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import timedelta
from typing import Any

import azure.durable_functions as df

from imagebuilder.pipeline import naming

bp = df.Blueprint()

RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=2_000, max_number_of_attempts=5)
# A provider's create that stays pending longer than this fails the create (AIB's own create takes minutes).
MAX_POLLS = 240


@bp.orchestration_trigger(context_name="context")
def provision_template(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    """Input: {ref, operationId}. Output: the template's provisioningState after the create."""
    payload: dict[str, Any] = context.get_input() or {}
    result: dict[str, Any] = {}
    for attempt in range(MAX_POLLS):
        result = yield context.call_activity_with_retry(
            naming.ACTIVITY_CREATE_TEMPLATE, RETRY, {**payload, "attempt": attempt}
        )
        if result.get("kind") != "pending":
            break
        wait = int(result.get("retryAfterSeconds") or 15)
        yield context.create_timer(context.current_utc_datetime + timedelta(seconds=wait))
    else:
        result = yield context.call_activity_with_retry(
            naming.ACTIVITY_CREATE_TEMPLATE, RETRY, {**payload, "giveUp": True}
        )
    build = result.get("autoRun")
    if isinstance(build, dict):
        yield context.call_sub_orchestrator(naming.BUILD_ORCHESTRATION, build["build"], build["instanceId"])
    return result.get("state")


@bp.orchestration_trigger(context_name="context")
def delete_template(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    """Input: {ref, operationId}. Removes the staging resources, then the template (with its runs)."""
    payload: dict[str, Any] = context.get_input() or {}
    result: dict[str, Any] = {}
    for attempt in range(MAX_POLLS):
        result = yield context.call_activity_with_retry(
            naming.ACTIVITY_DELETE_TEMPLATE, RETRY, {**payload, "attempt": attempt}
        )
        if result.get("kind") != "pending":
            break
        wait = int(result.get("retryAfterSeconds") or 15)
        yield context.create_timer(context.current_utc_datetime + timedelta(seconds=wait))
    return result.get("state")
