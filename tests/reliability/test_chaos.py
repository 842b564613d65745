"""Chaos: kill -9 of the runtime (its whole process group: sandboxes, QEMU, helpers) at a random point of
real builds, restart on the same state, and check: every run ends terminal (Succeeded), no step that had
finished before the kill ran again, the template and run records are all there, and the audit finds
nothing left. The phase each kill hit is read from the run's log at the moment of the kill."""

from __future__ import annotations

import contextlib
import json
import random
import re
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.audit import wait_clean
from tests.reliability.conftest import LONG, Rel, pick, record

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(3600)]

# Where a kill can be aimed: the log line that says the phase began.
PHASES = {
    "prepare": "==> prepare (source and artifacts): started",
    "create_env": "==> create build environment: started",
    "customize": "==> customize[1] (Shell: slow): started",
    "validate": "==> validate.inVMValidations: started",
    "generalize": "==> generalize: started",
    "capture": "==> capture: started",
    "distribute": "==> distribute",
    "cleanup": "==> cleanup: started",
}
STARTED = re.compile(r"^==> (.+): started$", re.MULTILINE)
FINISHED = re.compile(r"^==> (.+): (?:succeeded|done|skipped)\b.* in [0-9.]+s$", re.MULTILINE)


def _template(rel: Rel, debian: bool) -> dict[str, object]:
    customize = [
        {"type": "Shell", "name": "one", "inline": ["echo one | sudo tee -a /etc/steps"]},
        {
            "type": "Shell",
            "name": "slow",
            "inline": ["echo slow-start", "sleep 2", "echo slow | sudo tee -a /etc/steps"],
        },
        {"type": "Shell", "name": "three", "inline": ["echo three | sudo tee -a /etc/steps"]},
    ]
    if debian:
        t = rel.template("debian12-webserver.json", customize=customize)
        t["properties"].pop("validate", None)  # type: ignore[union-attr]
        t["properties"]["distribute"] = [{"type": "VHD", "runOutputName": "vhd"}]  # type: ignore[index]
        return t
    return rel.template(
        "busybox-webpage.json",
        customize=customize,
        validate={"inVMValidations": [{"type": "Shell", "name": "steps", "inline": ["test -s /etc/steps"]}]},
        distribute=[
            {"type": "VHD", "runOutputName": "vhd"},
            {
                "type": "ManagedImage",
                "runOutputName": "managed",
                "imageId": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rel/providers/"
                "Microsoft.Compute/images/chaos",
                "location": "westeurope",
            },
        ],
    )


ONCE_ONLY = ("prepare (source and artifacts)", "create build environment", "customize[")


def committed_steps(runtime_state: Path, template: str) -> set[str]:
    """Steps of `template`'s build whose completion the durable store had committed (in its history or
    waiting in its inbox): these must never run again."""
    db = sqlite3.connect(f"file:{runtime_state / 'durable.sqlite'}?mode=ro", uri=True)
    like = (template + "-%",)
    try:
        rows = list(db.execute("SELECT instance_id, event FROM history WHERE instance_id LIKE ?", like))
        rows += list(db.execute("SELECT instance_id, event FROM inbox WHERE instance_id LIKE ?", like))
    finally:
        db.close()
    steps: dict[tuple[str, int], str] = {}
    done: set[tuple[str, int]] = set()
    for instance, raw in rows:
        ev = json.loads(raw)
        if ev.get("EventType") == 4 and isinstance(ev.get("Input"), str):
            with contextlib.suppress(ValueError, AttributeError):
                step = json.loads(ev["Input"]).get("step")
                if isinstance(step, str):
                    steps[(instance, ev["EventId"])] = step
        elif ev.get("EventType") == 5:
            done.add((instance, ev.get("TaskScheduledId")))
    return {s for key, s in steps.items() if key in done and s.startswith(ONCE_ONLY)}


def _kill_during(rel: Rel, name: str, phase: str, jitter: float, wait: float) -> tuple[str, set[str]]:
    """Wait for `phase` to begin (plus `jitter` s), kill -9; return the phase running at the kill and
    the steps whose completion was committed by then."""
    rel.wait_log(name, PHASES[phase], timeout=wait)
    time.sleep(jitter)
    rel.runtime.kill9()
    text = rel.log_text(name)
    started = STARTED.findall(text)
    finished = set(FINISHED.findall(text))
    running = [s for s in started if s not in finished]
    at = running[-1] if running else (started[-1] if started else "before prepare")
    return at, committed_steps(rel.runtime.state_dir, name)


def test_kill_9_at_random_points_of_real_builds(rel: Rel) -> None:
    rng = random.Random(15)
    builds = pick(2, 20)
    debian_every = 7 if LONG else 0
    phases = list(PHASES)
    plan = [phases[i % len(phases)] for i in range(builds)] if LONG else ["customize", "capture"]
    hit: Counter[str] = Counter()
    reran = lost = 0
    leaked_total = 0
    names = []
    failures: list[str] = []
    for i, phase in enumerate(plan):
        debian = bool(debian_every) and i % debian_every == debian_every - 1
        name = f"chaos-{i}-{'deb' if debian else 'bb'}"
        names.append(name)
        rel.api.put_template(name, _template(rel, debian))
        rel.api.run(name)
        try:
            at, finished = _kill_during(rel, name, phase, rng.uniform(0, 1.5), 1200 if debian else 300)
        except AssertionError as exc:  # the phase never came: the build failed before it
            failures.append(f"{name}: {exc}: {rel.api.last_run_status(name)}")
            continue
        hit[at.split("[")[0].split(" (")[0]] += 1
        rel.runtime.start()
        rel.api.base_url = rel.runtime.base_url
        final = rel.api.watch(name, timeout=1800 if debian else 600, interval=0.5)
        if final["runState"] != "Succeeded":
            failures.append(f"{name} (killed during {at}): {final}")
        log = rel.log_text(name)
        for step in finished:  # committed before the kill: never again
            if log.count(f"==> {step}: started") != 1:
                reran += 1
                failures.append(f"{name}: {step} ran again after the kill")
        leaks = wait_clean(rel.provider_state, rel.cache_dir, rel.store)
        leaked_total += leaks.total()
        if leaks.total():
            failures.append(f"{name}: {leaks}")
    for name in names:  # nothing lost: every template and its run are still there
        if (
            rel.api.get_template(name).get("properties", {}).get("lastRunStatus", {}).get("runState")
            != "Succeeded"
        ):
            lost += 1
    record(
        "chaos",
        "kill -9 of the runtime mid-build, restart",
        builds,
        lost=lost + len([f for f in failures if "ran again" not in f and "Leaks(" not in f]) + reran,
        leaked=leaked_total,
        phases=dict(hit),
        note=f"{debian_every and builds // debian_every} Debian, the rest BusyBox; phases hit: "
        + ", ".join(f"{k} {v}" for k, v in sorted(hit.items())),
    )
    assert not failures, failures
    assert reran == 0 and lost == 0
