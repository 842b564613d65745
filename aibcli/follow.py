"""`aib run --follow`: a live view of one run (phases with durations, steps with their time and step
cache verdict, an ETA from the template's last successful run), then the run outputs. Read by polling
the run (`.../runs/{runId}`, whose `details.steps` the build writes at its end) and its customization.log,
whose `==> step: started` / `==> step: STATUS in Ns` lines mark the steps and `[step] cache hit` /
`[step] ran in` lines the step cache's verdict while the run goes on. On a terminal it redraws in place
(rich Live); otherwise it prints one line per change."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from aibcli.client import TERMINAL, ApiError, Client

PHASES = ("Queued", "Building", "Customizing", "Optimizing", "Validating", "Distributing")
_STARTED = re.compile(r"^==> (.+): started$")
_ENDED = re.compile(r"^==> (.+): (\w+) in ([\d.]+)s$")
_CACHE_HIT = re.compile(r"^\[(.+?)\] cache hit (\S+)")  # the local provider's step cache
_RAN = re.compile(r"^\[(.+?)\] ran in ")


def _time(stamp: Any) -> datetime | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def _seconds(run: dict[str, Any]) -> float | None:
    props = run.get("properties") or {}
    start, end = _time(props.get("startTime")), _time(props.get("endTime"))
    return (end - start).total_seconds() if start and end else None


def expected_seconds(runs: list[dict[str, Any]]) -> float | None:
    """How long the template's last successful run took (the ETA's basis), if it had one."""
    for run in reversed(runs):
        if (run.get("properties") or {}).get("runState") in ("Succeeded", "PartiallySucceeded"):
            return _seconds(run)
    return None


@dataclass
class View:
    """What the screen shows, rebuilt from each poll."""

    run_id: str
    expected: float | None
    started: float = field(default_factory=time.monotonic)
    phase_seen: dict[str, float] = field(default_factory=dict)  # sub state -> monotonic first seen
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {status, seconds, cache}
    run: dict[str, Any] = field(default_factory=dict)

    def update(self, run: dict[str, Any], log: str) -> None:
        self.run = run
        props = run.get("properties") or {}
        sub = props.get("runSubState")
        if sub and sub not in self.phase_seen:
            self.phase_seen[sub] = time.monotonic()
        for line in log.splitlines():
            m = _ENDED.match(line)
            if m:
                self.steps.setdefault(m.group(1), {}).update(status=m.group(2), seconds=float(m.group(3)))
                continue
            m = _STARTED.match(line)
            if m:
                self.steps.setdefault(m.group(1), {"status": "running"})
                continue
            m = _CACHE_HIT.match(line) or _RAN.match(line)
            if m and m.group(1) in self.steps:
                self.steps[m.group(1)]["cache"] = {"hit": m.re is _CACHE_HIT}
        details = props.get("details") or {}
        for rec in details.get("steps") or []:
            if isinstance(rec, dict) and rec.get("name") in self.steps and rec.get("cache"):
                self.steps[str(rec["name"])]["cache"] = rec["cache"]

    @property
    def state(self) -> str:
        return str((self.run.get("properties") or {}).get("runState") or "Running")

    def phase_rows(self) -> list[tuple[str, str, str]]:
        props = self.run.get("properties") or {}
        recorded = (props.get("details") or {}).get("phases") or {}
        current = props.get("runSubState")
        done = self.state in TERMINAL
        order = [p for p in PHASES if p in self.phase_seen or p in recorded]
        rows = []
        for i, phase in enumerate(order):
            if phase in recorded and "seconds" in recorded[phase]:
                rows.append((phase, "done", f"{recorded[phase]['seconds']:.1f}s"))
                continue
            start = self.phase_seen.get(phase, self.started)
            later = [self.phase_seen[p] for p in order[i + 1 :] if p in self.phase_seen]
            if later:
                rows.append((phase, "done", f"{later[0] - start:.1f}s"))
            elif phase == current and not done:
                rows.append((phase, "running", f"{time.monotonic() - start:.1f}s"))
            else:
                rows.append((phase, "done" if done else "", ""))
        return rows

    def render(self) -> Group:
        elapsed = time.monotonic() - self.started
        props = self.run.get("properties") or {}
        head = Text(f"run {self.run_id}  {self.state}/{props.get('runSubState') or '-'}  {elapsed:.0f}s")
        if self.expected and self.state not in TERMINAL:
            left = self.expected - elapsed
            head.append(f"  ETA {max(0, left):.0f}s" + (" (overdue)" if left < 0 else ""))
            head.append(f" (last success took {self.expected:.0f}s)", style="dim")
        phases = Table(title="phases", show_edge=False, pad_edge=False, title_justify="left")
        for col in ("phase", "state", "time"):
            phases.add_column(col)
        for row in self.phase_rows():
            phases.add_row(*row)
        steps = Table(title="steps", show_edge=False, pad_edge=False, title_justify="left")
        for col in ("step", "state", "time", "cache"):
            steps.add_column(col)
        for name, info in self.steps.items():
            cache = info.get("cache") or {}
            verdict = "" if not cache else ("hit" if cache.get("hit") else "miss")
            secs = info.get("seconds")
            steps.add_row(
                name, str(info.get("status", "")), f"{secs:.1f}s" if secs is not None else "", verdict
            )
        parts: list[Any] = [head, phases, steps]
        if props.get("message"):
            parts.append(Text(f"message: {props['message']}"))
        return Group(*parts)


def outputs_table(outputs: list[dict[str, Any]]) -> Table:
    table = Table(title="outputs", show_edge=False, pad_edge=False, title_justify="left")
    for col in ("runOutputName", "state", "artifact"):
        table.add_column(col)
    for out in outputs:
        props = out.get("properties") or {}
        artifact = props.get("artifactId") or props.get("artifactUri") or ""
        table.add_row(str(out.get("name")), str(props.get("provisioningState") or ""), str(artifact))
    return table


def follow_run(
    cl: Client, rg: str, name: str, run_id: str, *, console: Console, interval: float = 0.5
) -> dict[str, Any]:
    """Show the run until it ends; returns its final record."""
    try:
        expected = expected_seconds([r for r in cl.runs(rg, name) if r.get("name") != run_id])
    except ApiError:
        expected = None
    view = View(run_id, expected)
    if console.is_terminal:
        with Live(view.render(), console=console, refresh_per_second=4, transient=False) as live:
            while True:
                _poll(cl, rg, name, run_id, view)
                live.update(view.render())
                if view.state in TERMINAL:
                    break
                time.sleep(interval)
    else:
        last: list[str] = []
        while True:
            _poll(cl, rg, name, run_id, view)
            props = view.run.get("properties") or {}
            lines = [f"{props.get('runState')}/{props.get('runSubState')}"]
            lines += [f"{n}: {i.get('status')}" for n, i in view.steps.items()]
            for line in lines:
                if line not in last:
                    console.print(line)
            last = lines
            if view.state in TERMINAL:
                console.print(view.render())
                break
            time.sleep(interval)
    props = view.run.get("properties") or {}
    console.print(outputs_table(props.get("outputs") or []))
    console.print(f"run {run_id}: {view.state}")
    if view.state not in ("Succeeded", "PartiallySucceeded") and props.get("message"):
        console.print(props["message"])
    return view.run


def _poll(cl: Client, rg: str, name: str, run_id: str, view: View) -> None:
    run = cl.run(rg, name, run_id)
    try:
        log = cl.log(rg, name, run_id)
    except ApiError:
        log = ""
    view.update(run, log)
