"""Lifecycle events of runs as CloudEvents 1.0 (JSON): which events a status change means, their types,
and ids derived from (template, run, event) so that a retried publisher sends the same id again.

Types (prefix `Microsoft.VirtualMachineImages.ImageTemplates.`): RunStarted, RunPhaseChanged,
RunSucceeded, RunPartiallySucceeded, RunFailed, RunCanceled, RunSkipped, ReplicationFinished; and
`Microsoft.VirtualMachineImages.Sweeper.ResourcesRemoved` and `...Sweeper.ImageVersionRemoved` (retention).
Run events carry the CloudEvents `sequence`
extension (a string that sorts them in the order of the run). Pure: the time is an argument.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.pipeline.plan import SUB_STATES, forward_sub_state

PREFIX = "Microsoft.VirtualMachineImages.ImageTemplates."
RUN_STARTED = PREFIX + "RunStarted"
RUN_PHASE_CHANGED = PREFIX + "RunPhaseChanged"
RUN_SUCCEEDED = PREFIX + "RunSucceeded"
RUN_PARTIALLY_SUCCEEDED = PREFIX + "RunPartiallySucceeded"
RUN_FAILED = PREFIX + "RunFailed"
RUN_CANCELED = PREFIX + "RunCanceled"
RUN_SKIPPED = PREFIX + "RunSkipped"
REPLICATION_FINISHED = PREFIX + "ReplicationFinished"
SWEEP_REMOVED = "Microsoft.VirtualMachineImages.Sweeper.ResourcesRemoved"
VERSION_REMOVED = "Microsoft.VirtualMachineImages.Sweeper.ImageVersionRemoved"
SWEEPER_SOURCE = "/providers/Microsoft.VirtualMachineImages/sweeper"

_TERMINAL = {
    "Succeeded": RUN_SUCCEEDED,
    "PartiallySucceeded": RUN_PARTIALLY_SUCCEEDED,
    "Failed": RUN_FAILED,
    "Canceled": RUN_CANCELED,
}
_NAMESPACE = uuid.UUID("6f1f8a52-3c1e-4b52-9a51-4d1a0c8e7b21")
_MAX_TEXT = 4000


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:_MAX_TEXT]


def cloud_event(
    type_: str, source: str, subject: str, data: dict[str, Any], *, key: str, time: datetime
) -> dict[str, Any]:
    """One CloudEvent (structured JSON). `key` names the event within its source: same key, same id."""
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid5(_NAMESPACE, f"{source.lower()}|{key}")),
        "source": source,
        "type": type_,
        "subject": subject,
        "time": _iso(time),
        "datacontenttype": "application/json",
        "data": data,
    }


# A run moves forward through these, so the rank orders its events even where the queue does not
# (Azure Storage queues do not promise FIFO): the CloudEvents `sequence` extension, compared as strings.
_PHASES = SUB_STATES


def _rank(type_: str, data: dict[str, Any]) -> int:
    if type_ == RUN_STARTED:
        return 1
    if type_ == RUN_PHASE_CHANGED:
        sub = data.get("runSubState")
        return 2 + (_PHASES.index(sub) if sub in _PHASES else 0)
    if type_ == REPLICATION_FINISHED:
        return 10
    return 11  # the end: succeeded, failed, canceled, skipped


def _run_event(
    run: RunRef, type_: str, key: str, data: dict[str, Any], time: datetime, subject: str = ""
) -> dict[str, Any]:
    event = cloud_event(
        type_,
        run.template_id,
        subject or f"runs/{run.run_id}",
        {"templateName": run.template_name, "runId": run.run_id, **data},
        key=f"{run.run_id}/{key}",
        time=time,
    )
    event["sequence"] = f"{_rank(type_, data):02d}"
    return event


def status_events(
    run: RunRef,
    before: tuple[str, str | None],
    after: tuple[str | None, str | None],
    *,
    message: str | None,
    error: dict[str, Any] | None,
    time: datetime,
    freshness: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The events a status change of a run means, in order. `before` is (runState, runSubState) as
    stored; `after` the update (None keeps a field). A terminal run changes no more: no events. The end
    event carries `securityUpdatesPending` when the run recorded a freshness check (`freshness`)."""
    state, sub = before
    if state in _TERMINAL:
        return []
    new_state = after[0] or state
    new_sub = forward_sub_state(sub, after[1])  # the store keeps the sub-state from going back
    events: list[dict[str, Any]] = []
    if sub == "Queued" and new_sub not in (None, "Queued"):
        events.append(_run_event(run, RUN_STARTED, "started", {"runSubState": new_sub}, time))
    if new_sub != sub and new_sub is not None:
        events.append(
            _run_event(
                run,
                RUN_PHASE_CHANGED,
                f"phase/{new_sub}",
                {"runSubState": new_sub, "previousRunSubState": sub, "message": _cut(message)},
                time,
            )
        )
    if new_state in _TERMINAL:
        data: dict[str, Any] = {"runState": new_state, "message": _cut(message)}
        if freshness and isinstance(freshness.get("securityUpdatesPending"), int):
            data["securityUpdatesPending"] = freshness["securityUpdatesPending"]
        if error:
            data["error"] = {k: _cut(str(v)) for k, v in error.items() if k in ("code", "message", "step")}
        events.append(_run_event(run, _TERMINAL[new_state], new_state.lower(), data, time))
    return events


def replication_events(
    run: RunRef, output_name: str, output: dict[str, Any], *, time: datetime
) -> list[dict[str, Any]]:
    """ReplicationFinished for every region of a run output record (`properties` of a RunOutput with
    per-region results under `regions`, as the build records them)."""
    regions = output.get("regions")
    if not isinstance(regions, list):
        return []
    events = []
    for entry in regions:
        if not isinstance(entry, dict):
            continue
        region = str(entry.get("region") or "")
        err = entry.get("error") if isinstance(entry.get("error"), dict) else None
        data: dict[str, Any] = {
            "runOutputName": output_name,
            "region": region,
            "status": entry.get("status"),
            "artifactId": entry.get("artifactId") or entry.get("artifact_id"),
        }
        if err:
            data["error"] = {k: _cut(str(v)) for k, v in err.items() if k in ("code", "message", "step")}
        events.append(
            _run_event(
                run,
                REPLICATION_FINISHED,
                f"replication/{output_name.lower()}/{region.lower()}",
                data,
                time,
                subject=f"runs/{run.run_id}/runOutputs/{output_name}/regions/{region}",
            )
        )
    return events


def skipped_event(run: RunRef, reason: str, data: dict[str, Any], *, time: datetime) -> dict[str, Any]:
    return _run_event(run, RUN_SKIPPED, "skipped", {"reason": _cut(reason), **data}, time)


def sweep_event(removed: list[str], *, sweep_id: str, time: datetime) -> dict[str, Any]:
    return cloud_event(
        SWEEP_REMOVED,
        SWEEPER_SOURCE,
        f"sweeps/{sweep_id}",
        {"removed": [_cut(r) for r in removed[:200]], "count": len(removed)},
        key=sweep_id,
        time=time,
    )


def version_removed_event(
    version_id: str, *, reason: str, policy_from: str, time: datetime
) -> dict[str, Any]:
    """One gallery image version removed by retention (its id as the subject)."""
    return cloud_event(
        VERSION_REMOVED,
        SWEEPER_SOURCE,
        version_id,
        {"imageVersionId": version_id, "reason": _cut(reason), "policyFrom": _cut(policy_from)},
        key=f"retention|{version_id.lower()}|{_iso(time)}",
        time=time,
    )
