"""The sweeper timer: removes transient resources that finished or vanished runs left behind (with the
local provider: run folders, their processes, mounts and loop devices; see
`imagebuilder.providers.local.sweep`), never those of a running run, and reports what it removed in
the log and as a `Microsoft.VirtualMachineImages.Sweeper.ResourcesRemoved` event. Schedule: app setting
IMAGEBUILDER_SWEEP_SCHEDULE (default every 5 minutes); IMAGEBUILDER_SWEEP_GRACE_SECONDS (600) is how old
a folder no run owns must be before it goes.

Retention: each sweep applies the templates' `retention.keepLast` / `retention.maxAgeDays` tags to the
provider's gallery (the local gallery, where image definitions' own `retention` counts too; with the Azure
provider the Azure Compute Gallery image definitions the templates publish to, through azure-mgmt-compute),
see `imagebuilder.provenance.retention`;
one `...Sweeper.ImageVersionRemoved` event per version removed. IMAGEBUILDER_RETENTION_DRY_RUN=true only
logs what it would remove.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import azure.durable_functions as df
import azure.functions as func

from imagebuilder.pipeline import events as ev
from imagebuilder.pipeline.messages import RunRef
from imagebuilder.provenance.retention import policies_from_templates
from imagebuilder.settings import Settings
from triggers._common import (
    SWEEP_SCHEDULE,
    automation,
    now,
    publish,
    retention_dry_run,
    settings,
    store,
    sweep_grace_seconds,
)

if TYPE_CHECKING:
    from imagebuilder.providers.azure.provider import AzureProvider

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
    retained = apply_retention_once(dry_run=retention_dry_run())
    if cfg.provider != "local":
        log.info("sweeper: the %s provider cleans up its own resources; nothing more to sweep", cfg.provider)
        return retained
    from imagebuilder.providers.local.sweep import RunFacts, run_folders, sweep

    folders = run_folders(cfg.state_dir)  # first: see run_folders
    if not folders:
        return retained
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
    return [*retained, *report.removed]


def apply_retention_once(*, dry_run: bool) -> list[str]:
    """Apply retention to the provider's gallery (the local gallery, or Azure Compute Gallery image
    definitions the templates name); returns the version ids removed (or, in a dry run, that would be:
    then nothing is removed and no event goes out)."""
    st = store()
    templates = []
    for sub, rg, name in automation().template_keys():
        stored = st.templates.get(sub, rg, name)
        if stored is not None:
            templates.append((name, stored.resource))
    removed, events = retention_pass(settings(), templates, dry_run=dry_run, moment=now())
    if events:
        publish(events)
    return removed


def retention_pass(
    cfg: Settings,
    templates: list[tuple[str, dict[str, Any]]],
    *,
    dry_run: bool,
    moment: datetime,
    azure: AzureProvider | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """One retention pass over `templates` (name, ARM resource) with the configured provider: the
    version ids removed (or that would be) and one ImageVersionRemoved event per version removed."""
    found = policies_from_templates(templates)
    for error in found.errors:
        log.warning("retention: %s", error)
    if cfg.provider == "azure":
        from imagebuilder.providers.azure.provider import AzureProvider
        from imagebuilder.providers.azure.retention import apply_retention as azure_retention

        provider = azure or AzureProvider()
        report = azure_retention(
            provider.clients, found.policies, found.protected, now=moment, dry_run=dry_run
        )
    else:
        from imagebuilder.providers.local.retention import apply_retention

        report = apply_retention(cfg.state_dir, found.policies, found.protected, now=moment, dry_run=dry_run)
    for error in report.errors:
        log.warning("retention: %s", error)
    verb = "would remove" if dry_run else "removed"
    for item in report.removed:
        log.info("retention %s %s: %s (policy of %s)", verb, item.version_id, item.reason, item.policy_from)
    events = (
        []
        if dry_run
        else [
            ev.version_removed_event(
                item.version_id, reason=item.reason, policy_from=item.policy_from, time=moment
            )
            for item in report.removed
        ]
    )
    return [item.version_id for item in report.removed], events


@bp.timer_trigger(schedule=f"%{SWEEP_SCHEDULE}%", arg_name="timer", use_monitor=False)
def sweep_transient_resources(timer: func.TimerRequest) -> None:
    """Remove what finished or vanished runs left behind."""
    sweep_once()
