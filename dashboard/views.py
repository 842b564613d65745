"""What the dashboard's pages show, computed from store records: pure functions, no I/O.

The run timeline comes from the run record (`details.phases`, `details.steps` where a build recorded them,
the error) and from the step lines the build activities write to customization.log on every host
(`==> <step>: started` / `==> <step>: <status> in <s>s`), so it shows steps while they run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from imagebuilder.pipeline.resume import ResumeRefused, plan_resume
from imagebuilder.pipeline.schedule import CronSchedule, ScheduleError, time_zone
from imagebuilder.store import RunRecord, StoredTemplate, StoredTrigger

PHASES = ("Building", "Customizing", "Optimizing", "Validating", "Distributing")
TAIL_LINES = 200
_STEP_LINE = re.compile(
    r"^==> (?P<step>.+?): (?:(?P<started>started)|(?P<transient>transient failure)"
    r"|(?P<status>[A-Za-z]+) in (?P<seconds>\d+(?:\.\d+)?)s)"
)


@dataclass
class Step:
    """One step of a run as the timeline shows it."""

    name: str
    phase: str
    status: str = "running"
    seconds: float | None = None
    retries: int = 0
    cache: dict[str, Any] | None = None

    @property
    def cache_hit(self) -> bool | None:
        if not self.cache or "hit" not in self.cache:
            return None
        return bool(self.cache["hit"])


@dataclass
class Phase:
    name: str
    seconds: float | None
    state: str  # done | running | pending


@dataclass
class Failure:
    step: str | None
    code: str | None
    message: str
    exit_code: int | None
    tail: list[str] = field(default_factory=list)


def phase_of(step: str) -> str:
    """The runSubState a step belongs to (as the orchestration reports it)."""
    head = step.split(" ", 1)[0]
    if head.startswith("customize"):
        return "Customizing"
    if head.startswith("validate"):
        return "Validating"
    if head.startswith(("generalize", "capture", "distribute")):
        return "Distributing"
    if head.startswith("cleanup"):
        return "Cleanup"
    if head.startswith("optimize"):
        return "Optimizing"
    return "Building"


def _recorded_steps(details: dict[str, Any]) -> dict[str, dict[str, Any]]:
    steps = details.get("steps")
    out: dict[str, dict[str, Any]] = {}
    if isinstance(steps, list):
        for s in steps:
            if isinstance(s, dict) and isinstance(s.get("name") or s.get("step"), str):
                out[str(s.get("name") or s.get("step"))] = s
    return out


def _cache_of(recorded: dict[str, Any]) -> dict[str, Any] | None:
    for holder in (recorded, recorded.get("details") if isinstance(recorded.get("details"), dict) else {}):
        cache = holder.get("cache") if isinstance(holder, dict) else None
        if isinstance(cache, dict):
            return cache
    return None


def steps_of(run: RunRecord, log_text: str) -> list[Step]:
    """The run's steps in the order they started: from the log's step lines, completed by what the run
    record holds for each (status, seconds, cache); steps only the record knows come last."""
    steps: dict[str, Step] = {}
    for line in log_text.splitlines():
        m = _STEP_LINE.match(line)
        if not m:
            continue
        name = m.group("step")
        step = steps.setdefault(name, Step(name=name, phase=phase_of(name)))
        if m.group("started"):
            step.status = "running"
        elif m.group("transient"):
            step.retries += 1
        else:
            step.status = m.group("status").lower()
            step.seconds = float(m.group("seconds"))
    for name, recorded in _recorded_steps(run.details).items():
        step = steps.setdefault(name, Step(name=name, phase=phase_of(name)))
        if isinstance(recorded.get("status"), str):
            step.status = str(recorded["status"]).lower()
        seconds = recorded.get("duration_seconds", recorded.get("seconds"))
        if isinstance(seconds, int | float):
            step.seconds = float(seconds)
        step.cache = _cache_of(recorded)
    failed = (run.error or {}).get("step") if run.error else None
    if run.terminal:
        for step in steps.values():
            if step.status == "running":
                step.status = "failed" if step.name == failed else "interrupted"
    return list(steps.values())


def phases_of(run: RunRecord) -> list[Phase]:
    """The five phases (runSubState) with their durations; the current one is `running`."""
    recorded = run.details.get("phases") if isinstance(run.details.get("phases"), dict) else {}
    assert isinstance(recorded, dict)
    current = PHASES.index(run.run_sub_state) if run.run_sub_state in PHASES else -1
    failed_step = (run.error or {}).get("step") if run.run_state == "Failed" else None
    failed_phase = phase_of(str(failed_step)) if failed_step else None
    out = []
    for i, name in enumerate(PHASES):
        info = recorded.get(name)
        seconds = info.get("seconds") if isinstance(info, dict) else None
        if name == failed_phase:
            state = "failed"
        elif not run.terminal and i == current:
            state = "running"
        elif isinstance(info, dict):
            state = "done"
        elif not run.terminal:
            # phases are recorded with their durations when the run ends; before that, order tells
            state = ("skipped" if name == "Optimizing" else "done") if i < current else "pending"
        else:
            state = "skipped"
        out.append(Phase(name, float(seconds) if isinstance(seconds, int | float) else None, state))
    return out


def failure_of(run: RunRecord) -> Failure | None:
    error = run.error
    if not error or run.run_state not in ("Failed", "PartiallySucceeded"):
        return None
    tail = error.get("log_tail")
    code = error.get("exit_code")
    return Failure(
        step=str(error["step"]) if error.get("step") else None,
        code=str(error["code"]) if error.get("code") else None,
        message=str(error.get("message") or run.message),
        exit_code=code if isinstance(code, int) else None,
        tail=[str(x) for x in tail] if isinstance(tail, list) else [],
    )


@dataclass
class Resume:
    """Whether a failed run can be resumed with the template as it is now, and from which step."""

    possible: bool
    step: str | None = None
    reason: str | None = None


def resume_of(run: RunRecord, template: StoredTemplate) -> Resume | None:
    """None for runs that did not fail; else what POST .../run with resumeFromRunId would say."""
    if run.run_state != "Failed":
        return None
    try:
        plan = plan_resume(
            run_id=run.run.run_id,
            run_state=run.run_state,
            error=run.error,
            details=run.details,
            snapshot=run.template_snapshot,
            current=template.resource,
        )
    except ResumeRefused as exc:
        return Resume(False, reason=exc.message)
    return Resume(True, step=plan.failed_step)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def duration(run: RunRecord, now: datetime | None = None) -> float | None:
    if run.start_time is None:
        return None
    end = run.end_time or (None if run.terminal else (now or datetime.now(UTC)))
    return None if end is None else max(0.0, (end - run.start_time).total_seconds())


def local_file(uri: str | None) -> str | None:
    """The path of a file:// artifact URI (local provider outputs), else None."""
    if not uri or not uri.startswith("file://"):
        return None
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        return None
    return unquote(parts.path)


@dataclass
class Region:
    region: str
    status: str
    artifact_id: str | None
    artifact_uri: str | None
    error: str | None


@dataclass
class Output:
    name: str
    type: str
    status: str
    artifact_id: str | None
    artifact_uri: str | None
    regions: list[Region]
    downloadable: bool


def outputs_of(outputs: list[dict[str, Any]]) -> list[Output]:
    out = []
    for o in outputs:
        props = o.get("properties") or {}
        regions = []
        for r in props.get("regions") or []:
            if not isinstance(r, dict):
                continue
            err = r.get("error")
            regions.append(
                Region(
                    region=str(r.get("region") or ""),
                    status=str(r.get("status") or ""),
                    artifact_id=r.get("artifactId"),
                    artifact_uri=r.get("artifactUri"),
                    error=str(err.get("message") if isinstance(err, dict) else err) if err else None,
                )
            )
        uri = props.get("artifactUri")
        out.append(
            Output(
                name=str(o.get("name") or ""),
                type=str(props.get("type") or ""),
                status=str(props.get("status") or props.get("provisioningState") or ""),
                artifact_id=props.get("artifactId"),
                artifact_uri=uri,
                regions=regions,
                downloadable=str(props.get("type")) == "VHD" and local_file(uri) is not None,
            )
        )
    return out


def documents_of(run: RunRecord, outputs: list[Output]) -> dict[str, Any]:
    """What the run record says exists beyond outputs: an SBOM per output (in `details.sbom.formats`) and
    the signed provenance, both recorded when the image's inventory was captured."""
    sbom = run.details.get("sbom")
    if not isinstance(sbom, dict):
        return {"sbom": [], "formats": [], "provenance": False, "contents": None}
    formats = [str(f) for f in sbom.get("formats") or ["spdx"]]
    return {
        "sbom": [o.name for o in outputs],
        "formats": formats,
        "provenance": True,
        "contents": ", ".join(
            f"{sbom[k]} {k}" for k in ("packages", "files") if isinstance(sbom.get(k), int) and sbom[k]
        )
        or None,
    }


@dataclass
class TriggerView:
    name: str
    kind: str
    schedule: str | None
    status: str | None
    next_run: datetime | None


def trigger_view(trigger: StoredTrigger, now: datetime) -> TriggerView:
    props = trigger.resource.get("properties") or {}
    kind = str(props.get("kind") or "")
    schedule = props.get("schedule") if kind == "Schedule" else None
    nxt = None
    if isinstance(schedule, str):
        try:
            nxt = CronSchedule.parse(schedule).next_after(now, time_zone(props.get("timeZone")))
        except ScheduleError:
            nxt = None
    status = props.get("status")
    return TriggerView(
        name=trigger.name,
        kind=kind,
        schedule=schedule if isinstance(schedule, str) else None,
        status=str(status.get("code")) if isinstance(status, dict) and status.get("code") else None,
        next_run=nxt,
    )


@dataclass
class TemplateRow:
    template: StoredTemplate
    last_run: RunRecord | None
    triggers: list[TriggerView]

    @property
    def next_run(self) -> datetime | None:
        times = [t.next_run for t in self.triggers if t.next_run is not None]
        return min(times) if times else None


def cache_hits(run: RunRecord) -> tuple[int, int] | None:
    """(steps taken from the step cache, steps with a cache verdict) of a run, None when it has none."""
    steps = [s for s in _recorded_steps(run.details).values() if isinstance(_cache_of(s), dict)]
    if not steps:
        return None
    return sum(1 for s in steps if (_cache_of(s) or {}).get("hit")), len(steps)


def typical_seconds(runs: list[RunRecord], before: RunRecord) -> float | None:
    """How long the template's last successful run before `before` took: what to expect of this one."""
    done = [
        r
        for r in runs
        if r.run_state == "Succeeded" and r.created_time < before.created_time and duration(r) is not None
    ]
    return duration(max(done, key=lambda r: r.created_time)) if done else None


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_time(moment: datetime | None) -> str:
    if moment is None:
        return "–"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
