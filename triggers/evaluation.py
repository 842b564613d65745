"""Timer functions evaluating the triggers of image templates: `source_image_triggers` (AIB's kind
SourceImage) and `scheduled_builds` (our kind Schedule: one timer finds the due schedules, since timers
in Functions are static; it also re-checks templates whose artifact changed during a build).
Schedules: app settings IMAGEBUILDER_SOURCE_TRIGGER_SCHEDULE and IMAGEBUILDER_SCHEDULE_TRIGGER_SCHEDULE
(NCRONTAB with seconds; default every minute).
"""

from __future__ import annotations

import logging

import azure.durable_functions as df
import azure.functions as func

from api._arm import in_thread
from triggers._common import SCHEDULE_TRIGGER_SCHEDULE, SOURCE_TRIGGER_SCHEDULE, store
from triggers._evaluate import evaluate, recheck_deferred

bp = df.Blueprint()
log = logging.getLogger("triggers.evaluation")


async def _evaluate_kind(client: df.DurableOrchestrationClient, kind: str) -> None:
    for trigger in await in_thread(store().triggers.list_all):
        props = trigger.resource.get("properties") or {}
        if props.get("kind") != kind:
            continue
        try:
            await evaluate(client, trigger)
        except Exception:  # one broken trigger must not stop the others
            log.exception("evaluating trigger %s of %s failed", trigger.name, trigger.template_name)


@bp.timer_trigger(schedule=f"%{SOURCE_TRIGGER_SCHEDULE}%", arg_name="timer", use_monitor=False)
@bp.durable_client_input(client_name="client")
async def source_image_triggers(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    """Start a run of each template whose SourceImage trigger sees a new source version."""
    await _evaluate_kind(client, "SourceImage")


@bp.timer_trigger(schedule=f"%{SCHEDULE_TRIGGER_SCHEDULE}%", arg_name="timer", use_monitor=False)
@bp.durable_client_input(client_name="client")
async def scheduled_builds(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    """Run (or skip, with onlyWhenInputsChanged) each template whose Schedule trigger is due; then
    re-check templates whose artifact was replaced while they were building."""
    await _evaluate_kind(client, "Schedule")
    try:
        for line in await recheck_deferred(client):
            log.info("deferred artifact check: %s", line)
    except Exception:
        log.exception("deferred artifact checks failed")
