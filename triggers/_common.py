"""Shared plumbing of the trigger adapters: app settings (with the defaults the `%SETTING%` schedules
need), the store, the probe of a template's inputs, and the two ways a trigger ends: a run started the
way the API's run operation starts one (`api._builds.start_build`), or a skipped run recorded with its
reason (runState Canceled, message "Skipped: ...", `details.skipped`), visible in the runs listing.

Timer schedules are binding expressions (`%IMAGEBUILDER_..._SCHEDULE%`), which the Functions host
resolves from app settings and refuses when unset: `apply_setting_defaults` (called when the trigger
modules are imported, before the host reads the bindings) fills in every-minute defaults locally; on
Azure set them as app settings.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df

from api._arm import ArmError, in_thread
from api._builds import new_run_id, run_ref, start_build
from imagebuilder.pipeline import events as ev
from imagebuilder.pipeline.fingerprint import RunInputs, fingerprint_of, recorded_inputs, source_version
from imagebuilder.provenance.mirror import DEFAULT_SECURITY_MIRROR, check_freshness
from imagebuilder.provenance.sbom import Inventory
from imagebuilder.providers.probe import probe_prepare, probe_run
from imagebuilder.providers.registry import get_provider
from imagebuilder.settings import Settings
from imagebuilder.store import RunInProgressError, RunRecord, Store, StoredTemplate, open_store
from imagebuilder.store.automation import Automation, open_automation
from imagebuilder.store.events import EventQueue, open_events, publish_quietly

log = logging.getLogger("triggers")

SOURCE_TRIGGER_SCHEDULE = "IMAGEBUILDER_SOURCE_TRIGGER_SCHEDULE"
SCHEDULE_TRIGGER_SCHEDULE = "IMAGEBUILDER_SCHEDULE_TRIGGER_SCHEDULE"
SWEEP_SCHEDULE = "IMAGEBUILDER_SWEEP_SCHEDULE"
ARTIFACTS_CONTAINER = "IMAGEBUILDER_ARTIFACTS_CONTAINER"
SETTING_DEFAULTS = {
    SOURCE_TRIGGER_SCHEDULE: "0 * * * * *",  # every minute
    SCHEDULE_TRIGGER_SCHEDULE: "0 * * * * *",  # every minute: Schedule triggers fire at most once a tick
    SWEEP_SCHEDULE: "30 */5 * * * *",  # every 5 minutes
    ARTIFACTS_CONTAINER: "image-artifacts",
}
MAX_FAILURES = "IMAGEBUILDER_TRIGGER_MAX_FAILURES"  # consecutive failures before a trigger is disabled (3)
SWEEP_GRACE = "IMAGEBUILDER_SWEEP_GRACE_SECONDS"  # age before an ownerless run folder is removed (600)
RETENTION_DRY_RUN = "IMAGEBUILDER_RETENTION_DRY_RUN"  # true: retention only logs what it would remove


def apply_setting_defaults() -> None:
    """Give the schedule settings their defaults when the app settings leave them out."""
    for name, value in SETTING_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _int_setting(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() else default


def max_failures() -> int:
    return max(1, _int_setting(MAX_FAILURES, 3))


def sweep_grace_seconds() -> int:
    return _int_setting(SWEEP_GRACE, 600)


def retention_dry_run() -> bool:
    """IMAGEBUILDER_RETENTION_DRY_RUN: the sweeper lists what retention would remove, removes nothing."""
    return os.environ.get(RETENTION_DRY_RUN, "").strip().lower() in ("1", "true", "yes")


def settings() -> Settings:
    return Settings.from_env()


def store() -> Store:
    return open_store(settings().storage_connection)


def automation() -> Automation:
    return open_automation(settings().storage_connection)


def events() -> EventQueue:
    return open_events(settings().storage_connection)


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def publish(items: list[dict[str, Any]]) -> None:
    """Publish events; a queue outage is logged, never fails the caller."""
    publish_quietly(settings().storage_connection, items)


# -- inputs ---------------------------------------------------------------------------------------------


def probe(stored: StoredTemplate, *, with_artifacts: bool) -> tuple[str | None, RunInputs]:
    """(source version, inputs) of the template now: `latest` resolved, artifacts hashed (always with
    providers other than local). Raises the provider's `ProviderError`s (they name the field)."""
    cfg = settings()
    resource = stored.resource
    if cfg.provider == "local":
        from imagebuilder.providers.local.probe import probe_inputs

        probed = probe_inputs(resource, with_artifacts=with_artifacts, state_dir=cfg.state_dir)
    else:
        build = probe_run(resource, stored.subscription_id, stored.resource_group, stored.name)
        probed = probe_prepare(get_provider(cfg.provider), build)
    version = probed.source.exact_version or probed.source.id
    inputs = fingerprint_of(resource, probed.source.exact_version, probed.artifacts)
    return version, inputs


def last_succeeded(st: Store, stored: StoredTemplate) -> RunRecord | None:
    """The template's last run that Succeeded and recorded what it was built from."""
    for run in reversed(st.runs.list(stored.subscription_id, stored.resource_group, stored.name)):
        if run.run_state == "Succeeded" and source_version(run.details) is not None:
            return run
    return None


def baseline(st: Store, stored: StoredTemplate) -> tuple[RunRecord | None, RunInputs | None]:
    run = last_succeeded(st, stored)
    return run, (recorded_inputs(run.template_snapshot, run.details) if run else None)


def security_now(st: Store, run: RunRecord) -> dict[str, Any] | None:
    """Pending security updates for the image `run` built, checked against its mirror's security suite
    now (the mirror its capture used). None when the run recorded no Debian package inventory."""
    inventory = st.runs.sbom_inventory(run.run)
    if not inventory:
        return None
    recorded = run.details.get("freshness")
    mirror = recorded.get("mirror") if isinstance(recorded, dict) else None
    return check_freshness(
        Inventory.model_validate(inventory), security_mirror=str(mirror or DEFAULT_SECURITY_MIRROR)
    )


# -- outcomes -------------------------------------------------------------------------------------------


class Busy(Exception):
    """The template already has a build in progress (not a failure of the trigger)."""


async def start_run(
    client: df.DurableOrchestrationClient, st: Store, stored: StoredTemplate, reason: dict[str, Any]
) -> RunRecord:
    """Start a run exactly as the API's run operation does, and record why on it (`details.trigger`).
    Raises `Busy` when a run is in progress, `ArmError` when it could not start."""
    try:
        record = await start_build(client, st, stored)
    except ArmError as exc:
        if exc.status == 409:
            raise Busy(exc.message) from None
        raise
    await in_thread(st.runs.set_status, record.run, details={"trigger": reason})
    log.info("trigger %s started run %s of %s", reason.get("kind"), record.run.run_id, stored.name)
    return record


def record_skipped(
    st: Store, stored: StoredTemplate, reason: str, trigger: dict[str, Any], inputs: RunInputs
) -> RunRecord | None:
    """Record a run that did not build: Canceled, message `Skipped: <reason>`. None if a run is active."""
    ref = run_ref(stored, new_run_id())
    try:
        st.runs.create(ref, template_snapshot=stored.resource)
    except RunInProgressError:
        return None
    skipped = {
        "reason": reason,
        "fingerprint": inputs.fingerprint,
        "sourceVersion": inputs.source_exact_version,
    }
    record = st.runs.set_status(
        ref,
        run_state="Canceled",
        message=f"Skipped: {reason}",
        details={"skipped": skipped, "trigger": trigger},
    )
    publish([ev.skipped_event(ref, reason, {"trigger": trigger.get("kind")}, time=now())])
    log.info("trigger %s skipped a run of %s: %s", trigger.get("kind"), stored.name, reason)
    return record


apply_setting_defaults()
