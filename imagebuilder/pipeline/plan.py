"""Pure planning of one build run: which phases and steps a template asks for, and how results map to
AIB's `lastRunStatus` (runState / runSubState / message) and run outputs.

Reads the stored template resource as plain JSON (the API validated it on PUT), so that orchestrators
can plan without I/O. Also defines the small envelopes that cross the durable boundary around the
provider results of `messages.py`: `Outcome` (what every phase activity returns) and `StatusUpdate`
(what the `run_status` activity persists).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from imagebuilder.pipeline import naming
from imagebuilder.pipeline.messages import ErrorInfo, Message

# AIB's RunSubState values, in the order a run goes through them.
QUEUED = "Queued"
BUILDING = "Building"
CUSTOMIZING = "Customizing"
OPTIMIZING = "Optimizing"
VALIDATING = "Validating"
DISTRIBUTING = "Distributing"
SUB_STATES = (QUEUED, BUILDING, CUSTOMIZING, OPTIMIZING, VALIDATING, DISTRIBUTING)


def forward_sub_state(current: str | None, new: str | None) -> str | None:
    """The sub-state a run has after `new` is reported: `new`, unless it would take the run back (a
    late or repeated report of an earlier phase), then `current`. A run's sub-state never goes back."""
    if new is None or current not in SUB_STATES or new not in SUB_STATES:
        return new if new is not None else current
    return new if SUB_STATES.index(new) >= SUB_STATES.index(current) else current


# AIB's RunState values.
RUNNING = "Running"
CANCELING = "Canceling"
SUCCEEDED = "Succeeded"
PARTIALLY_SUCCEEDED = "PartiallySucceeded"
FAILED = "Failed"
CANCELED = "Canceled"
TERMINAL_STATES = (SUCCEEDED, PARTIALLY_SUCCEEDED, FAILED, CANCELED)

DEFAULT_BUILD_TIMEOUT_MINUTES = 240  # AIB: 0 or omitted means 4 hours
LOG_TAIL_LINES = 20


class Outcome(Message):
    """What every phase activity returns: the provider's result (`done`), a `Pending` to poll, or a
    permanent failure the provider raised (`failed`, with `error`), plus the activity's own wall time
    (the benchmark's "work", as opposed to orchestration overhead)."""

    kind: Literal["done", "pending", "failed"]
    value: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    seconds: float = 0.0
    # the run status carried in the activity's input (`status`) could not be persisted: why
    status_error: str | None = None
    # `distribute` of a one-region target persisted the run output itself (no `run_status` call)
    output_written: bool = False
    # asked to (`deferEnd`), the step's end line(s), not written: the orchestration's next activity
    # writes them first (a phase activity with its first write, `run_status` before its status write)
    log: str | None = None


class StatusUpdate(Message):
    """Input of the `run_status` activity (besides the build): a run status or a run output to persist."""

    op: Literal["status", "output"] = "status"
    run_state: str | None = None
    run_sub_state: str | None = None
    message: str | None = None
    error: ErrorInfo | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    output_name: str | None = None
    output: dict[str, Any] | None = None


@dataclass(frozen=True)
class CustomizerStep:
    index: int
    type: str
    step: str


@dataclass(frozen=True)
class DistributeTarget:
    """One entry of `properties.distribute`: where it goes, and the regions it replicates to."""

    index: int
    type: str
    run_output_name: str
    regions: tuple[str, ...]


@dataclass(frozen=True)
class BuildPlan:
    """Everything the orchestration decides from the template, computed once per replay."""

    location: str
    customizers: tuple[CustomizerStep, ...]
    has_validations: bool
    source_validation_only: bool
    continue_distribute_on_failure: bool
    on_customizer_error: Literal["cleanup", "abort"]
    on_validation_error: Literal["cleanup", "abort"]
    timeout_minutes: int
    targets: tuple[DistributeTarget, ...]

    @classmethod
    def from_template(cls, resource: dict[str, Any]) -> BuildPlan:
        props = resource.get("properties") or {}
        location = str(resource.get("location") or "local")
        customize = props.get("customize") or []
        validate = props.get("validate") or {}
        handling = props.get("errorHandling") or {}
        timeout = int(props.get("buildTimeoutInMinutes") or 0)
        return cls(
            location=location,
            customizers=tuple(
                CustomizerStep(i, str(c.get("type") or ""), naming.customizer_step(i, c))
                for i, c in enumerate(customize)
            ),
            has_validations=bool(validate.get("inVMValidations")),
            source_validation_only=bool(validate.get("sourceValidationOnly")),
            continue_distribute_on_failure=bool(validate.get("continueDistributeOnFailure")),
            on_customizer_error=_on_error(handling.get("onCustomizerError")),
            on_validation_error=_on_error(handling.get("onValidationError")),
            timeout_minutes=timeout if timeout > 0 else DEFAULT_BUILD_TIMEOUT_MINUTES,
            targets=tuple(_target(i, d, location) for i, d in enumerate(props.get("distribute") or [])),
        )


def _on_error(value: Any) -> Literal["cleanup", "abort"]:
    return "abort" if str(value or "").lower() == "abort" else "cleanup"


def target_regions(distributor: dict[str, Any], location: str) -> tuple[str, ...]:
    """The regions a distribute target replicates to: SharedImage `targetRegions` (or the deprecated
    `replicationRegions`), ManagedImage its `location`, VHD the template's location."""
    kind = str(distributor.get("type") or "")
    if kind == "SharedImage":
        regions = [str(r.get("name")) for r in distributor.get("targetRegions") or [] if r.get("name")]
        regions = regions or [str(r) for r in distributor.get("replicationRegions") or []]
        regions = regions or [location]
    elif kind == "ManagedImage":
        regions = [str(distributor.get("location") or location)]
    else:
        regions = [location]
    return tuple(dict.fromkeys(regions))  # unique, in order


def _target(index: int, distributor: dict[str, Any], location: str) -> DistributeTarget:
    return DistributeTarget(
        index=index,
        type=str(distributor.get("type") or ""),
        run_output_name=str(distributor.get("runOutputName") or f"distribute{index}"),
        regions=target_regions(distributor, location),
    )


_RESTATED = re.compile(r"^\s*(failed\b)?\s*(with exit code -?\d+)?\s*[:\-]?\s*")
_ONLY_EXIT_CODE = re.compile(r"^(exited )?with (exit )?code -?\d+\.?$")


def _without_restated_step(message: str, where: str) -> str:
    """The cause in a provider's message, without the step name and "failed" it often restates (said
    once in the head) and without a bare exit code (also in the head); never drops the cause itself."""
    text = message.strip()
    if text.startswith(where):
        text = _RESTATED.sub("", text[len(where) :], count=1)
    return "" if _ONLY_EXIT_CODE.match(text) else text


def failure_message(error: ErrorInfo, *, step: str | None = None, kept: list[str] | None = None) -> str:
    """AIB-style message of a failed run: which step, its exit code, the last lines, where the log is."""
    where = error.step or step or "unknown step"
    head = f"step {where} failed"
    if error.exit_code is not None:
        head += f" with exit code {error.exit_code}"
    head += f" [{error.code}]"
    cause = _without_restated_step(error.message, where)
    if cause:
        head += f": {cause}"
    parts = [head]
    tail = error.log_tail[-LOG_TAIL_LINES:]
    if tail:
        parts.append("last lines of output:\n" + "\n".join(f"  {line}" for line in tail))
    if error.log_uri:
        parts.append(f"full log: {error.log_uri}")
    if kept:
        parts.append("kept for inspection (errorHandling abort): " + ", ".join(kept))
    return "\n".join(parts)


def error_from_exception(
    text: str, *, step: str, attempts: int | None = None, log_uri: str | None = None
) -> ErrorInfo:
    """An activity that still raised after its retries: the SDK hands over text only."""
    first = text.strip().splitlines()[0] if text.strip() else "activity failed"
    if attempts:
        first += f" (still failing after {attempts} attempts)"
    code = "RetriesExhausted" if attempts else "ActivityFailed"
    return ErrorInfo(code=code, message=first[:2000], step=step, log_uri=log_uri)


def output_status(regions: list[dict[str, Any]]) -> Literal["succeeded", "partial", "failed"]:
    """A run output over its regions: all succeeded, some, or none."""
    ok = sum(1 for r in regions if r.get("status") == "succeeded")
    if regions and ok == len(regions):
        return "succeeded"
    return "partial" if ok else "failed"


def final_run_state(outputs: list[dict[str, Any]]) -> str:
    """Succeeded when every output succeeded everywhere, PartiallySucceeded when some region or target
    failed but something was delivered, Failed when nothing was."""
    states = [o.get("status") for o in outputs]
    if all(s == "succeeded" for s in states):
        return SUCCEEDED
    if any(s in ("succeeded", "partial") for s in states):
        return PARTIALLY_SUCCEEDED
    return FAILED


def run_output_record(target: DistributeTarget, regions: list[dict[str, Any]], status: str) -> dict[str, Any]:
    """The persisted run output (ARM `RunOutputProperties` plus per-region detail)."""
    ok = [r for r in regions if r.get("status") == "succeeded"]
    first = ok[0] if ok else {}
    return {
        "artifactId": first.get("artifact_id"),
        "artifactUri": first.get("artifact_uri"),
        "provisioningState": "Succeeded" if status == "succeeded" else "Failed",
        "status": status,
        "type": target.type,
        "regions": [
            {
                "region": r.get("region"),
                "status": r.get("status"),
                "artifactId": r.get("artifact_id"),
                "artifactUri": r.get("artifact_uri"),
                "error": r.get("error"),
            }
            for r in regions
        ],
    }


def optimize_message(template: dict[str, Any]) -> str:
    """What the Optimizing phase says it does: plainly, nothing to the image. Image Builder's
    `optimize.vmBoot` primes Windows images so VMs created from them boot faster; no step of this build
    changes the image for it (a Linux image boots as built), and `optimize.workload` is not run."""
    optimize = (template.get("properties") or {}).get("optimize") or {}
    parts = []
    vm_boot = optimize.get("vmBoot") if isinstance(optimize, dict) else None
    if isinstance(vm_boot, dict) and str(vm_boot.get("state", "")).lower() == "enabled":
        parts.append(
            "optimize.vmBoot is Enabled: no boot-optimization step runs in this build; the image is "
            "distributed as customized (Image Builder's vmBoot optimization primes Windows images)"
        )
    workload = optimize.get("workload") if isinstance(optimize, dict) else None
    if isinstance(workload, dict) and str(workload.get("state", "")).lower() == "enabled":
        parts.append("optimize.workload is Enabled: its script is fetched and checksummed, not run")
    return "; ".join(parts) or "optimize: no optimization step applies; image unchanged"
