"""The `distribute_image` sub-orchestration: one distribute target, one replication activity per region.

Fans out `distribute` for every target region at once, collects each region's result as it arrives
(a failed region does not stop the others; long-running replications are polled with durable timers),
persists the run output with its own status through `run_status` (a one-region target's `distribute`
persists it itself when it succeeds at once: `writeOutput`), and returns a summary to `build_image`. It
never raises for a failed region: the parent decides the run state.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import azure.durable_functions as df

from imagebuilder.pipeline import naming
from imagebuilder.pipeline import plan as p
from imagebuilder.pipeline.messages import BuildInput, ErrorInfo, Pending, ReplicationResult
from orchestrators.build_image import RETRY, Gen, load_input

bp = df.Blueprint()


def _region_failure(target: p.DistributeTarget, region: str, error: ErrorInfo) -> dict[str, Any]:
    return ReplicationResult(
        run_output_name=target.run_output_name, region=region, status="failed", error=error
    ).model_dump(mode="json")


@bp.orchestration_trigger(context_name="context")
def distribute_image(context: df.DurableOrchestrationContext) -> Gen:
    """Input: {"build": BuildInput, "captured": CaptureResult, "target_index": int}."""
    data = load_input(context.get_input())
    build = BuildInput.model_validate(data["build"])
    build_json = build.model_dump(mode="json")
    index = int(data["target_index"])
    target = p.BuildPlan.from_template(build.template).targets[index]

    def activity(region: str, name: str, extra: dict[str, Any]) -> Any:
        payload = {
            "build": build_json,
            "step": naming.distribute_step(index, target.run_output_name, region),
            "captured": data["captured"],
            "target_index": index,
            "region": region,
            **extra,
        }
        return context.call_activity_with_retry(name, RETRY, payload)

    # one region: its distribute persists the run output (made from its result exactly as below)
    first = {"writeOutput": True} if len(target.regions) == 1 else {}
    # region -> (kind of the task in flight, the task); kinds: "call" (distribute/poll) or "timer"
    inflight: dict[str, tuple[str, Any, dict[str, Any] | None]] = {
        region: ("call", activity(region, naming.ACTIVITY_DISTRIBUTE, first), None)
        for region in target.regions
    }
    written = False
    results: dict[str, dict[str, Any]] = {}
    work_seconds = dict.fromkeys(target.regions, 0.0)  # regions replicate in parallel
    context.set_custom_status({"runOutputName": target.run_output_name, "regions": list(target.regions)})
    while inflight:
        winner = yield context.task_any([task for _, task, _ in inflight.values()])
        region = next(r for r, (_, task, _) in inflight.items() if task is winner)
        kind, task, pending = inflight.pop(region)
        if kind == "timer":
            inflight[region] = ("call", activity(region, naming.ACTIVITY_POLL, {"pending": pending}), None)
            continue
        if isinstance(task.result, Exception):  # still raising after its retries
            step = naming.distribute_step(index, target.run_output_name, region)
            error = p.error_from_exception(str(task.result), step=step, attempts=RETRY.max_number_of_attempts)
            results[region] = _region_failure(target, region, error)
            continue
        outcome = p.Outcome.model_validate(task.result)
        work_seconds[region] += outcome.seconds
        if outcome.kind == "pending":
            wait = max(1, Pending.model_validate(outcome.value).retry_after_seconds)
            timer = context.create_timer(context.current_utc_datetime + timedelta(seconds=wait))
            inflight[region] = ("timer", timer, outcome.value)
        elif outcome.kind == "failed":
            step = naming.distribute_step(index, target.run_output_name, region)
            error = outcome.error or ErrorInfo(code="DistributeFailed", message="failed", step=step)
            results[region] = _region_failure(target, region, error)
        else:
            results[region] = ReplicationResult.model_validate(outcome.value).model_dump(mode="json")
            written = outcome.output_written

    regions = [results[r] for r in target.regions]
    status = p.output_status(regions)
    record = p.run_output_record(target, regions, status)
    if not written:
        update = p.StatusUpdate(op="output", output_name=target.run_output_name, output=record)
        yield context.call_activity_with_retry(
            naming.ACTIVITY_RUN_STATUS, RETRY, {"build": build_json, **update.model_dump(mode="json")}
        )
    return {
        "runOutputName": target.run_output_name,
        "type": target.type,
        "status": status,
        "artifactId": record["artifactId"],
        "artifactUri": record["artifactUri"],
        "regions": regions,
        "workSeconds": round(max(work_seconds.values(), default=0.0), 3),
    }
