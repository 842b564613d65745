"""Evaluating the triggers of templates: `SourceImage` (AIB: build when the source's latest version
differs from the one the last successful run built), `Schedule` (ours: NCRONTAB + time zone, optionally
only when the input fingerprint changed and/or only when security updates are pending for the last
image) and a replaced artifact blob (same fingerprint rule).

Each trigger's `properties.status` ({code, message, time}) says what the last evaluation did: code
`Healthy`, `Unhealthy` (it failed; failures are counted: evaluation errors, and runs it started that
failed) or `Disabled` (after IMAGEBUILDER_TRIGGER_MAX_FAILURES consecutive failures, with the reason;
PUT the trigger again to re-enable it). A disabled trigger is not evaluated.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import azure.durable_functions as df

from api._arm import ArmError, in_thread
from imagebuilder.pipeline.fingerprint import source_version, uses_blob
from imagebuilder.pipeline.messages import RunRef
from imagebuilder.pipeline.schedule import ScheduleError, due
from imagebuilder.providers.base import ProviderError
from imagebuilder.store import ConcurrencyError, Store, StoredTemplate, StoredTrigger
from imagebuilder.store.automation import Automation, TriggerState
from triggers._common import (
    Busy,
    automation,
    baseline,
    iso,
    max_failures,
    now,
    probe,
    record_skipped,
    security_now,
    start_run,
    store,
)

log = logging.getLogger("triggers.evaluate")

HEALTHY, UNHEALTHY, DISABLED = "Healthy", "Unhealthy", "Disabled"
_REFRESH = timedelta(minutes=10)


@dataclass
class Verdict:
    """What one evaluation concluded: a status, and whether it counts as a failure."""

    message: str
    failed: bool = False


def _props(trigger: StoredTrigger) -> dict[str, Any]:
    props = trigger.resource.get("properties")
    return props if isinstance(props, dict) else {}


def status_code(trigger: StoredTrigger) -> str:
    status = _props(trigger).get("status")
    return str(status.get("code") or "") if isinstance(status, dict) else ""


def _write_status(st: Store, trigger: StoredTrigger, code: str, message: str) -> None:
    """Keep `properties.status` current (written when it changes, or every 10 minutes)."""
    old = _props(trigger).get("status") or {}
    stamp = now()
    if isinstance(old, dict) and old.get("code") == code and old.get("message") == message:
        try:
            last = datetime.fromisoformat(str(old.get("time", "")).replace("Z", "+00:00"))
            if stamp - last < _REFRESH:
                return
        except ValueError:
            pass
    resource = json.loads(json.dumps(trigger.resource))
    resource.setdefault("properties", {})["status"] = {"code": code, "message": message, "time": iso(stamp)}
    try:
        st.triggers.put(
            trigger.subscription_id,
            trigger.resource_group,
            trigger.template_name,
            trigger.name,
            resource,
            etag=trigger.etag,
        )
    except ConcurrencyError:
        log.info("trigger %s changed while evaluated; its status is written next time", trigger.name)


def _account_previous_run(st: Store, state: TriggerState, stored: StoredTemplate) -> None:
    """Count the outcome of the last run this trigger started, once."""
    run_id = state.data.get("lastRunId")
    if not run_id or state.data.get("countedRunId") == run_id:
        return
    ref = RunRef(
        subscription_id=stored.subscription_id,
        resource_group=stored.resource_group,
        template_name=stored.name,
        run_id=str(run_id),
    )
    run = st.runs.get(ref)
    if run is None or not run.terminal:
        return
    state.data["countedRunId"] = run_id
    if run.run_state in ("Failed", "PartiallySucceeded"):
        state.data["failures"] = int(state.data.get("failures") or 0) + 1
        state.data["lastError"] = f"run {run_id} {run.run_state}: {run.message.splitlines()[0][:300]}"
    elif run.run_state == "Succeeded":
        state.data["failures"] = 0


def _conclude(
    st: Store, auto: Automation, trigger: StoredTrigger, state: TriggerState, verdict: Verdict
) -> None:
    if verdict.failed:
        state.data["failures"] = int(state.data.get("failures") or 0) + 1
        state.data["lastError"] = verdict.message
    failures = int(state.data.get("failures") or 0)
    if failures >= max_failures():
        code = DISABLED
        message = (
            f"Disabled after {failures} consecutive failures; the last: {state.data.get('lastError')}. "
            "Fix the cause, then PUT the trigger again to re-enable it."
        )
        state.data["disabled"] = True
    elif verdict.failed or failures:
        code = UNHEALTHY
        message = (
            verdict.message
            if verdict.failed
            else f"{verdict.message} (earlier failure: {state.data.get('lastError')})"
        )
    else:
        code, message = HEALTHY, verdict.message
    try:
        auto.save_trigger_state(trigger, state)
    except ConcurrencyError:
        log.info("state of trigger %s written concurrently; keeping the other write", trigger.name)
        return
    _write_status(st, trigger, code, message[:2000])


def _load(st: Store, trigger: StoredTrigger) -> StoredTemplate | None:
    stored = st.templates.get(trigger.subscription_id, trigger.resource_group, trigger.template_name)
    if stored is None or stored.provisioning_state == "Deleting":
        return None
    return stored


def _prepare_state(auto: Automation, trigger: StoredTrigger) -> TriggerState | None:
    """The trigger's state, or None when it is disabled. A trigger PUT again (status no longer
    Disabled) starts over with no failures."""
    state = auto.trigger_state(trigger)
    if status_code(trigger) == DISABLED:
        return None
    if state.data.get("disabled"):
        state.data = {"triggerCreatedAt": state.data.get("triggerCreatedAt")}
    return state


async def evaluate(client: df.DurableOrchestrationClient, trigger: StoredTrigger) -> None:
    """Evaluate one trigger of kind SourceImage or Schedule (others are left alone)."""
    kind = _props(trigger).get("kind")
    if kind not in ("SourceImage", "Schedule"):
        return
    st, auto = store(), automation()
    state = await in_thread(_prepare_state, auto, trigger)
    if state is None:
        return
    stored = await in_thread(_load, st, trigger)
    if stored is None:
        return
    if kind == "Schedule":
        at = await in_thread(_due, trigger, state)
        if at is None:
            return
        if isinstance(at, Verdict):
            await in_thread(_conclude, st, auto, trigger, state, at)
            return
    await in_thread(_account_previous_run, st, state, stored)
    try:
        if kind == "SourceImage":
            verdict = await _source_image(client, st, stored, trigger, state)
        else:
            verdict = await _schedule(client, st, stored, trigger, state)
    except Busy as exc:
        verdict = Verdict(f"a build is in progress; nothing started ({exc})")
    except (ProviderError, ArmError, ScheduleError) as exc:
        verdict = Verdict(f"evaluation failed: {exc}", failed=True)
    await in_thread(_conclude, st, auto, trigger, state, verdict)


def _due(trigger: StoredTrigger, state: TriggerState) -> datetime | Verdict | None:
    props = _props(trigger)
    last = state.data.get("lastOccurrence")
    # first evaluation (or re-enabled by a PUT): occurrences count from the trigger's last PUT
    since = datetime.fromisoformat(last) if isinstance(last, str) else trigger.last_modified_at
    moment = now()
    try:
        occurrence = due(str(props.get("schedule") or ""), props.get("timeZone"), since, moment)
    except ScheduleError as exc:
        return Verdict(f"schedule cannot be evaluated: {exc}", failed=True)
    if occurrence is None:
        return None
    state.data["lastOccurrence"] = moment.isoformat()
    return occurrence


async def _source_image(
    client: df.DurableOrchestrationClient,
    st: Store,
    stored: StoredTemplate,
    trigger: StoredTrigger,
    state: TriggerState,
) -> Verdict:
    version, _ = await in_thread(probe, stored, with_artifacts=False)
    last_ok, _ = await in_thread(baseline, st, stored)
    built = source_version(last_ok.details) if last_ok else None
    if built == version:
        return Verdict(
            f"source at version {version}, which run {last_ok.run.run_id if last_ok else ''} built"
        )
    if state.data.get("lastVersion") == version and state.data.get("lastRunId"):
        return Verdict(
            f"source version {version} is new, but the run started for it ({state.data['lastRunId']}) did "
            "not succeed; waiting for a newer version (run the template to retry)"
        )
    reason = {
        "kind": "SourceImage",
        "trigger": trigger.name,
        "sourceVersion": version,
        "previousVersion": built,
    }
    record = await start_run(client, st, stored, reason)
    state.data.update(lastVersion=version, lastRunId=record.run.run_id)
    was = f"the last successful run built {built}" if built else "no run has succeeded yet"
    return Verdict(f"source version {version} ({was}): started run {record.run.run_id}")


async def _schedule(
    client: df.DurableOrchestrationClient,
    st: Store,
    stored: StoredTemplate,
    trigger: StoredTrigger,
    state: TriggerState,
) -> Verdict:
    props = _props(trigger)
    occurrence = state.data.get("lastOccurrence")
    reason: dict[str, Any] = {"kind": "Schedule", "trigger": trigger.name, "occurrence": occurrence}
    only_inputs = bool(props.get("onlyWhenInputsChanged"))
    only_security = bool(props.get("onlyWhenSecurityUpdatesPending"))
    if only_inputs or only_security:
        _, inputs = await in_thread(probe, stored, with_artifacts=True)
        last_ok, before = await in_thread(baseline, st, stored)
        reason["fingerprint"] = inputs.fingerprint
        # Build when any asked-for condition holds (or nothing succeeded yet); skip when none does.
        build = last_ok is None or before is None
        why_not: list[str] = []
        if not build and only_inputs and before is not None and last_ok is not None:
            if before.fingerprint != inputs.fingerprint:
                build = True
            else:
                why_not.append(
                    f"inputs unchanged since run {last_ok.run.run_id} "
                    f"(fingerprint {inputs.fingerprint[:12]}; onlyWhenInputsChanged)"
                )
        if not build and only_security and last_ok is not None:
            fresh = await in_thread(security_now, st, last_ok)
            pending = int((fresh or {}).get("securityUpdatesPending") or 0)
            if pending:
                build = True
                reason["securityUpdatesPending"] = pending
                reason["packages"] = [p["name"] for p in (fresh or {}).get("packages", [])][:50]
            elif fresh is None:
                why_not.append(
                    f"run {last_ok.run.run_id} recorded no Debian package inventory to check "
                    "(onlyWhenSecurityUpdatesPending)"
                )
            elif fresh.get("error"):
                why_not.append(
                    f"the security suite could not be read ({fresh['error']}; onlyWhenSecurityUpdatesPending)"
                )
            else:
                why_not.append(
                    f"no security updates pending for the image of run {last_ok.run.run_id} in "
                    f"{fresh.get('suite')} (onlyWhenSecurityUpdatesPending)"
                )
        if not build:
            why = "; ".join(why_not)
            skipped = await in_thread(record_skipped, st, stored, why, reason, inputs)
            if skipped is None:
                return Verdict("due, but a build is in progress; nothing started")
            return Verdict(f"due; {why}: recorded skipped run {skipped.run.run_id}")
    record = await start_run(client, st, stored, reason)
    state.data["lastRunId"] = record.run.run_id
    return Verdict(f"due; started run {record.run.run_id}")


async def _artifact_rule(
    client: df.DurableOrchestrationClient,
    st: Store,
    stored: StoredTemplate,
    reason: dict[str, Any],
    *,
    record_skip: bool,
) -> str:
    """Build if the template's inputs changed since its last successful run; else record a skipped run
    (with `record_skip`). Raises `Busy` when a build is in progress."""
    last = await in_thread(st.runs.latest, stored.subscription_id, stored.resource_group, stored.name)
    if last is not None and last.active:
        raise Busy(f"run {last.run.run_id} is {last.run_state}")
    if last is None or stored.provisioning_state != "Succeeded":
        # Never built (or still being created): a replaced artifact is a REbuild trigger; the template's
        # first build is its own (run, autoRun, upload), which fetches the artifact as it is then.
        return "not built yet: nothing to rebuild"
    _, inputs = await in_thread(probe, stored, with_artifacts=True)
    last_ok, before = await in_thread(baseline, st, stored)
    reason = {**reason, "fingerprint": inputs.fingerprint}
    if last_ok is not None and before is not None and before.fingerprint == inputs.fingerprint:
        why = f"{reason['uri']} was replaced, but the inputs are unchanged since run {last_ok.run.run_id}"
        if not record_skip:
            return "unchanged"
        skipped = await in_thread(record_skipped, st, stored, why, reason, inputs)
        return f"skipped ({skipped.run.run_id if skipped else 'a build is in progress'})"
    record = await start_run(client, st, stored, reason)
    return f"started run {record.run.run_id}"


async def artifact_replaced(client: df.DurableOrchestrationClient, blob_url: str) -> list[str]:
    """A blob in our storage was replaced: each template that fetches it builds if its input fingerprint
    changed since its last successful run, and records a skipped run if not. A template that is building
    is checked again once its build is over (`recheck_deferred`). Returns what it did."""
    st, auto = store(), automation()
    done: list[str] = []
    uri = blob_url.split("?", 1)[0]
    for sub, rg, name in await in_thread(auto.template_keys):
        stored = await in_thread(st.templates.get, sub, rg, name)
        if stored is None or stored.provisioning_state == "Deleting":
            continue
        paths = uses_blob(stored.resource, blob_url)
        if not paths:
            continue
        reason: dict[str, Any] = {"kind": "ArtifactChanged", "uri": uri, "fields": paths}
        try:
            done.append(f"{name}: " + await _artifact_rule(client, st, stored, reason, record_skip=True))
        except Busy as exc:
            await in_thread(auto.mark_pending, sub, rg, stored.name, reason)
            done.append(f"{name}: a build is in progress ({exc}); checked again when it ends")
        except (ProviderError, ArmError) as exc:
            log.warning("artifact %s replaced: template %s not evaluated: %s", uri, name, exc)
            done.append(f"{name}: failed: {exc}")
    return done


async def recheck_deferred(client: df.DurableOrchestrationClient) -> list[str]:
    """Templates whose artifact changed while they were building: apply the fingerprint rule now that
    the build is over (no skipped run when unchanged: the change was already built)."""
    st, auto = store(), automation()
    done: list[str] = []
    for sub, rg, name, reason, etag in await in_thread(auto.pending):
        stored = await in_thread(st.templates.get, sub, rg, name)
        try:
            if stored is not None and stored.provisioning_state != "Deleting":
                done.append(f"{name}: " + await _artifact_rule(client, st, stored, reason, record_skip=False))
        except Busy:
            continue  # still building: next time
        except (ProviderError, ArmError) as exc:
            log.warning("deferred check of %s (%s) failed: %s", name, reason.get("uri"), exc)
            done.append(f"{name}: failed: {exc}")
        try:
            await in_thread(auto.clear_pending, sub, rg, name, etag)
        except ConcurrencyError:
            pass  # marked again meanwhile: checked again next time
    return done
