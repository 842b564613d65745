"""The sweeper timer: removes transient resources that finished or vanished runs left behind (with the
local provider: run folders, their processes, mounts and loop devices; see
`imagebuilder.providers.local.sweep`), never those of a running run, and reports what it removed in
the log and as a `Microsoft.VirtualMachineImages.Sweeper.ResourcesRemoved` event. Schedule: app setting
IMAGEBUILDER_SWEEP_SCHEDULE (default every 5 minutes); IMAGEBUILDER_SWEEP_GRACE_SECONDS (600) is how old
a folder no run owns must be before it goes.
"""

from __future__ import annotations

import logging
import uuid

import azure.durable_functions as df
import azure.functions as func

from imagebuilder.pipeline import events as ev
from imagebuilder.pipeline.messages import RunRef
from triggers._common import SWEEP_SCHEDULE, automation, now, publish, settings, store, sweep_grace_seconds

bp = df.Blueprint()
log = logging.getLogger("triggers.sweeper")


def sweep_once() -> list[str]:
    """One sweep; returns what was removed."""
    cfg = settings()
    auto = automation()
    # trigger states of deleted templates (listed first: a template created meanwhile keeps its rows)
    live = set(auto.template_keys())
    pruned = auto.prune(live)
    if pruned:
        log.info("sweeper removed %d trigger state row(s) of deleted templates", pruned)
    if cfg.provider != "local":
        log.info("sweeper: the %s provider cleans up its own resources; nothing to sweep here", cfg.provider)
        return []
    from imagebuilder.providers.local.sweep import RunFacts, run_folders, sweep

    folders = run_folders(cfg.state_dir)  # first: see run_folders
    if not folders:
        return []
    st = store()
    facts: dict[RunRef, RunFacts] = {}
    for entry in auto.runs():
        kept = False
        if entry.terminal:
            record = st.runs.get(entry.run)
            cleanup = (record.details.get("cleanup") if record else None) or {}
            kept = bool(cleanup.get("kept")) if isinstance(cleanup, dict) else False
        facts[entry.run] = RunFacts(terminal=entry.terminal, kept=kept)
    report = sweep(cfg.state_dir, facts, folders=folders, grace_seconds=sweep_grace_seconds())
    for line in report.removed:
        log.info("sweeper removed %s", line)
    for line in report.errors:
        log.warning("sweeper: %s", line)
    if report.removed:
        publish([ev.sweep_event(report.removed, sweep_id=uuid.uuid4().hex, time=now())])
    return report.removed


@bp.timer_trigger(schedule=f"%{SWEEP_SCHEDULE}%", arg_name="timer", use_monitor=False)
def sweep_transient_resources(timer: func.TimerRequest) -> None:
    """Remove what finished or vanished runs left behind."""
    sweep_once()
