"""Resuming a failed run (POST .../run with `{"resumeFromRunId": "<runId>"}`): which step the new run
starts at, and whether it may. Pure: it compares the failed run's template snapshot, its recorded steps
and artifacts with the template as it is now.

A resume is refused (`ResumeRefused`, an API 400 naming the changed member in `target`) when the failed
run did not fail in a customizer, or when what the steps before the failed one depend on changed since:
the source, a customizer before it, or (checked after the new run fetched them) an artifact they use.
The failed customizer itself may change: that is the fix being resumed. The steps before it are reused
from the step cache; a step cache miss re-runs a step rather than reusing a stale one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from imagebuilder.pipeline.artifacts import build_artifacts

_CUSTOMIZE_STEP = re.compile(r"^customize\[(\d+)\]")


class ResumeRefused(Exception):
    """The run cannot resume from the given run; `target` is the JSON path of what changed."""

    def __init__(self, message: str, target: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.target = target


@dataclass(frozen=True)
class ResumePlan:
    """The new run starts at `customize[failed_index]`; steps before it come from the step cache."""

    from_run_id: str
    failed_index: int
    failed_step: str
    artifacts: tuple[dict[str, Any], ...]  # the failed run's staged artifacts used before the failed step

    def as_details(self) -> dict[str, Any]:
        return {
            "runId": self.from_run_id,
            "failedStep": self.failed_step,
            "failedIndex": self.failed_index,
            "artifacts": list(self.artifacts),
        }


def _props(template: dict[str, Any]) -> dict[str, Any]:
    props = template.get("properties") or {}
    return props if isinstance(props, dict) else {}


def failed_customizer(
    run_state: str, error: dict[str, Any] | None, details: dict[str, Any]
) -> tuple[int, str]:
    """(index, step name) of the customizer the run failed in; ResumeRefused when it did not fail in one."""
    if run_state != "Failed":
        raise ResumeRefused(
            f"only a failed run can be resumed; this run is {run_state}", target="resumeFromRunId"
        )
    step = str((error or {}).get("step") or "")
    if not step:
        failed = [s for s in details.get("steps") or [] if s.get("status") == "failed"]
        step = str(failed[-1].get("name")) if failed else ""
    match = _CUSTOMIZE_STEP.match(step)
    if not match:
        raise ResumeRefused(
            f"the run failed in {step or 'an unknown step'}, not in a customizer; run the template again "
            "instead (only a failed customize step can be resumed from)",
            target="resumeFromRunId",
        )
    return int(match.group(1)), step


_CUSTOMIZE_REF = re.compile(r"^properties\.customize\[(\d+)\]\.")


def _artifact_uris_before(template: dict[str, Any], index: int) -> set[str]:
    """The URIs the customizers before `index` fetch (from the one list, `build_artifacts`)."""
    uris = set()
    for ref in build_artifacts(template):
        match = _CUSTOMIZE_REF.match(ref.target)
        if match and int(match.group(1)) < index:
            uris.add(ref.uri)
    return uris


def plan_resume(
    *,
    run_id: str,
    run_state: str,
    error: dict[str, Any] | None,
    details: dict[str, Any],
    snapshot: dict[str, Any],
    current: dict[str, Any],
) -> ResumePlan:
    """Check that the failed run `run_id` (its state, error, details and template snapshot) can be
    resumed with the template `current`; return where the new run starts."""
    index, step = failed_customizer(run_state, error, details)
    before, now = _props(snapshot), _props(current)
    if before.get("source") != now.get("source"):
        raise ResumeRefused(
            f"the template's source changed since run {run_id}; every step depends on it, so run the "
            "template again instead of resuming",
            target="properties.source",
        )
    old_steps = before.get("customize") or []
    new_steps = now.get("customize") or []
    if len(new_steps) <= index:
        raise ResumeRefused(
            f"run {run_id} failed at {step}, but the template now has {len(new_steps)} customizer(s)",
            target="properties.customize",
        )
    for i in range(index):
        if i >= len(old_steps) or old_steps[i] != new_steps[i]:
            raise ResumeRefused(
                f"properties.customize[{i}] changed since run {run_id}, before its failed step {step}; "
                "resuming would reuse a result built from the old step: run the template again",
                target=f"properties.customize[{i}]",
            )
    uris = _artifact_uris_before(current, index)
    artifacts = tuple(a for a in details.get("artifacts") or [] if a.get("uri") in uris)
    return ResumePlan(from_run_id=run_id, failed_index=index, failed_step=step, artifacts=artifacts)


def changed_artifacts(plan: dict[str, Any], staged: list[dict[str, Any]]) -> list[str]:
    """After the new run fetched its artifacts: those used before the failed step whose content differs
    from the failed run's (one line each, naming the URI and both checksums)."""
    now = {a.get("uri"): a.get("sha256") for a in staged}
    lines = []
    for old in plan.get("artifacts") or []:
        uri, sha = old.get("uri"), old.get("sha256")
        if uri in now and now[uri] != sha:
            lines.append(
                f"{uri} (sha256 {str(sha)[:12]}... in run {plan.get('runId')}, now {str(now[uri])[:12]}...)"
            )
    return lines
