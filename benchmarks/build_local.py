"""Benchmark: the orchestration overhead of a build through the REST API on the local runtime, against
the same activities called one after the other in this process without the durable runtime (the
baseline, measured in the same invocation, builds interleaved).

Overhead of a build = wall - work:
  wall  the run record's EndTime - CreatedTime, both stamped by the app (POST .../run creates the run;
        the last `run_status` stamps its terminal state). Not the client's time to *see* the end: that
        adds the client's polling delay (up to its interval, plus a GET), which is the benchmark's own
        artifact, not orchestration (it was 0.05 s of the 0.6 s "overhead" measured before);
  work  details.workSeconds: each phase activity's own seconds inside its provider call on the critical
        path (distribute targets in parallel count their longest), as the orchestrator sums them.
So overhead is everything between the activities: history commits, replays, dispatch to the worker
process, the `run_status` activities persisting phase changes, the run log's start/end lines.

Per activity transition (durable builds, from the instance's history; timestamps taken by the host):
  queue     previous completion (TaskCompleted, SubOrchestrationCompleted, ExecutionStarted) -> the
            episode that schedules the next activity starts (completion commit, dispatch)
  replay    that episode: OrchestratorStarted -> OrchestratorCompleted (history to the worker process,
            the SDK replays the orchestrator, its actions back)
  activity  OrchestratorCompleted -> TaskCompleted minus the activity's own seconds (decision commit,
            dispatch and IPC to the worker, the activity's plumbing: input decoding, run log, store)
The direct chain's overhead is what the activities' plumbing costs without any durable machinery.

Default job (as benchmarks/rebuild.py, on the BusyBox base unless --base debian): a File customizer, a
Shell, a Shell writing a marker; a fixed VHD; no inVMValidations, shipped-image boot check off. Warm =
only the marker changed (steps 1-2 are step cache hits). Measures only; asserts nothing.

    .venv/bin/python benchmarks/build_local.py [--base busybox|debian] [--warm 5] [--template FILE]
                                               [--poll 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.demo import (  # noqa: E402
    ImageBuilderApi,
    LocalRuntime,
    load_template,
    serve_examples,
)
from imagebuilder.pipeline import naming  # noqa: E402
from imagebuilder.pipeline import plan as p  # noqa: E402
from imagebuilder.pipeline.messages import BuildInput, RunRef  # noqa: E402
from imagebuilder.store import open_store  # noqa: E402
from local_runtime.azurite import start_azurite  # noqa: E402

SOURCES = {
    "busybox": {"publisher": "ImageBuilderLocal", "offer": "busybox", "sku": "stable"},
    "debian": {"publisher": "Debian", "offer": "debian-12", "sku": "12"},
}


def job(url: str, base: str, marker: str) -> dict[str, Any]:
    """The rebuild job: File, a Shell (nginx on Debian, a copy on BusyBox), a Shell writing `marker`."""
    install = (
        [
            "sudo sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
            "--no-install-recommends nginx && apt-get clean'",
            "sudo install -D -m 0644 /tmp/index.html /var/www/html/index.html",
        ]
        if base == "debian"
        else ["sudo mkdir -p /srv/www", "sudo cp /tmp/index.html /srv/www/index.html"]
    )
    return {
        "location": "westeurope",
        "identity": {
            "type": "UserAssigned",
            "userAssignedIdentities": {
                "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/bench/providers/"
                "Microsoft.ManagedIdentity/userAssignedIdentities/bench": {}
            },
        },
        "properties": {
            "buildTimeoutInMinutes": 120,
            "source": {"type": "PlatformImage", **SOURCES[base], "version": "latest"},
            "customize": [
                {
                    "type": "File",
                    "name": "page",
                    "sourceUri": f"{url}/www/index.html",
                    "destination": "/tmp/index.html",
                },
                {"type": "Shell", "name": "install", "inline": install},
                {"type": "Shell", "name": "marker", "inline": [f"echo {marker} | sudo tee /marker"]},
            ],
            "distribute": [{"type": "VHD", "runOutputName": "vhd"}],
        },
    }


def epoch(stamp: str | datetime | None) -> float:
    if stamp is None:
        return float("nan")
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    text = stamp.replace("Z", "+00:00")
    return datetime.fromisoformat(text).astimezone(UTC).timestamp()


# ------------------------------------------------------------------------------------- durable builds
def durable_build(
    api: ImageBuilderApi, store: Any, name: str, template: dict[str, Any], poll: float = 1.0
) -> dict[str, Any]:
    api.put_template(name, template)
    t0 = time.monotonic()
    api.run(name)
    final = api.watch(name, timeout=3600, interval=poll)
    client_wall = time.monotonic() - t0
    record = store.runs.latest(api.subscription, api.resource_group, name)
    if final.get("runState") != "Succeeded" or record is None:
        raise SystemExit(f"{name}: {final}")
    return measure(record, client_wall)


def measure(record: Any, client_wall: float | None = None) -> dict[str, Any]:
    wall = record.end_time.timestamp() - record.created_time.timestamp()
    work = float(record.details.get("workSeconds") or 0.0)
    return {"record": record, "wall": wall, "work": work, "overhead": wall - work, "client": client_wall}


def transitions(db: Path, instance_id: str) -> list[dict[str, Any]]:
    """Per scheduled activity of the instance and its distribute children, in order: name, seconds
    (its own), and the queue / replay / activity intervals (see the module docstring)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        ids = [
            r[0]
            for r in con.execute(
                "SELECT instance_id FROM instances WHERE instance_id=? OR instance_id LIKE ? ORDER BY created",
                (instance_id, instance_id + ":%"),
            )
        ]
        out: list[dict[str, Any]] = []
        for iid in ids:
            events = [
                json.loads(r[0])
                for r in con.execute("SELECT event FROM history WHERE instance_id=? ORDER BY idx", (iid,))
            ]
            out.extend(_instance_transitions(events, child=iid != instance_id))
        return out
    finally:
        con.close()


def _instance_transitions(events: list[dict[str, Any]], *, child: bool) -> list[dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    last_done = float("nan")
    started = float("nan")
    for e in events:
        t, kind = epoch(e["Timestamp"]), e["EventType"]
        if kind == 0:  # ExecutionStarted
            last_done = t
        elif kind == 12:  # OrchestratorStarted
            started = t
        elif kind == 13:  # OrchestratorCompleted
            for row in rows.values():
                if row.get("answered") is None:
                    row["answered"] = t
        elif kind == 4:  # TaskScheduled
            payload = json.loads(e.get("Input") or "{}")
            step = payload.get("step") or payload.get("runSubState") or payload.get("op") or ""
            rows[e["EventId"]] = {
                "name": e["Name"],
                "step": str(step),
                "child": child,
                "queue": started - last_done,
                "started": started,
                "answered": None,
            }
        elif kind in (5, 6) and e.get("TaskScheduledId") in rows:  # TaskCompleted / TaskFailed
            row = rows[e["TaskScheduledId"]]
            result = json.loads(e.get("Result") or "null") if kind == 5 else None
            own = float(result.get("seconds") or 0.0) if isinstance(result, dict) else 0.0
            row["seconds"] = own
            row["replay"] = row["answered"] - row["started"]
            row["activity"] = t - row["answered"] - own
            row["done"] = t
            last_done = t
        elif kind in (8, 9):  # a sub-orchestration ended
            last_done = t
    return [r for r in rows.values() if "done" in r]


# ------------------------------------------------------------------------------------ the direct chain
REQUESTS = [0]  # HTTP requests this process sent to storage (the direct chain's activities run here)


def count_requests() -> None:
    import requests.adapters

    send = requests.adapters.HTTPAdapter.send

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        REQUESTS[0] += 1
        return send(self, *args, **kwargs)

    requests.adapters.HTTPAdapter.send = counted  # type: ignore[method-assign]


class DirectChain:
    """The build's activities called in order in this process, as the worker process calls them
    (`local_runtime.durable.calls.run_activity_sync`: JSON in, JSON out), with the payloads the
    orchestrator sends: no durable runtime, no worker process, no history."""

    def __init__(self, store: Any) -> None:
        from local_runtime.durable import calls
        from local_runtime.indexing import index_functions, load_app

        self.calls = calls
        self.store = store
        self.timings: list[tuple[str, float, float]] = []
        self.requests_before_call = 0
        self.functions = {
            (f.durable_name or f.name).lower(): f
            for f in index_functions(load_app(ROOT, "function_app.py"))
            if f.trigger_type == "activityTrigger"
        }

    def call(self, name: str, payload: dict[str, Any]) -> Any:
        self.requests_before_call = REQUESTS[0]
        t0 = time.perf_counter()
        text = self.calls.run_activity_sync(self.functions[name.lower()], json.dumps(payload), str(ROOT))
        value = json.loads(text)
        own = float(value.get("seconds") or 0.0) if isinstance(value, dict) else 0.0
        self.timings.append((name, time.perf_counter() - t0 - own, own))
        return value

    def build(self, api: ImageBuilderApi, name: str, template: dict[str, Any]) -> dict[str, Any]:
        from api._builds import new_run_id

        api.put_template(name, template)
        stored = self.store.templates.get(api.subscription, api.resource_group, name)
        ref = RunRef(
            subscription_id=api.subscription,
            resource_group=api.resource_group,
            template_name=name,
            run_id=new_run_id(),
        )
        self.store.runs.create(ref, template_snapshot=stored.resource)
        first_request = REQUESTS[0]
        build = BuildInput(run=ref, template=stored.resource).model_dump(mode="json")
        plan = p.BuildPlan.from_template(stored.resource)
        work = 0.0

        carry: dict[str, Any] | None = None
        lines = ""  # end lines steps left unwritten (deferEnd), for the next activity, as in build_image

        def status(sub_state: str, message: str, **extra: Any) -> dict[str, Any]:
            update = p.StatusUpdate(run_state=extra.pop("state", p.RUNNING), run_sub_state=sub_state,
                                    message=message, **extra)  # fmt: skip
            return {"build": build, **update.model_dump(mode="json")}

        def phase(activity: str, step: str, **args: Any) -> p.Outcome:
            nonlocal work, carry, lines
            payload = {"build": build, "step": step, **args}
            if carry is not None:  # a phase's status rides on its first activity, as in build_image
                payload["status"], carry = carry, None
            if lines:
                payload["log"], lines = lines, ""
            outcome = p.Outcome.model_validate(self.call(activity, payload))
            if outcome.kind != "done" or outcome.status_error:
                raise SystemExit(f"direct chain: {step}: {outcome}")
            work += outcome.seconds
            lines += outcome.log or ""
            return outcome

        slot = {"build": build, "holder": f"direct-{ref.run_id}", "waitSeconds": 0}
        grant = self.call(naming.ACTIVITY_ACQUIRE_SLOT, slot)
        if not grant.get("granted"):
            raise SystemExit("direct chain: no build slot (another build is running?)")
        carry = status(p.BUILDING, "resolving the source and fetching artifacts")  # rides on prepare
        prepared = phase(naming.ACTIVITY_PREPARE, naming.STEP_PREPARE, deferEnd=True).value
        env = phase(
            naming.ACTIVITY_CREATE_ENV, naming.STEP_CREATE_ENV, prepared=prepared, deferEnd=True
        ).value
        carry = status(p.CUSTOMIZING, "customizing")
        for c in plan.customizers:
            phase(naming.ACTIVITY_CUSTOMIZE, c.step, env=env, index=c.index, deferEnd=True)
        if plan.has_validations:
            carry = status(p.VALIDATING, "running inVMValidations")
            phase(naming.ACTIVITY_VALIDATE, naming.STEP_VALIDATE, env=env, deferEnd=True)
        carry = status(p.DISTRIBUTING, "generalizing")
        phase(naming.ACTIVITY_GENERALIZE, naming.STEP_GENERALIZE, env=env, deferEnd=True)
        captured = phase(naming.ACTIVITY_CAPTURE, naming.STEP_CAPTURE, env=env).value
        for t in plan.targets:
            longest = 0.0
            written = False
            one = {"writeOutput": True} if len(t.regions) == 1 else {}  # as distribute_image
            for region in t.regions:
                before = work
                step = naming.distribute_step(t.index, t.run_output_name, region)
                done = phase(naming.ACTIVITY_DISTRIBUTE, step, captured=captured, target_index=t.index,
                             region=region, **one)  # fmt: skip
                written = done.output_written
                longest, work = max(longest, work - before), before
            work += longest
            if not written:
                update = p.StatusUpdate(
                    op="output", output_name=t.run_output_name, output={"status": "Succeeded"}
                )
                self.call(naming.ACTIVITY_RUN_STATUS, {"build": build, **update.model_dump(mode="json")})
        # as build_image: cleanup's end line rides on the final status write
        phase(naming.ACTIVITY_CLEANUP, naming.STEP_CLEANUP, keep=False, deferEnd=True)
        final = status(p.DISTRIBUTING, "done", state=p.SUCCEEDED, details={"workSeconds": round(work, 3)})
        self.call(naming.ACTIVITY_RUN_STATUS, {**final, **({"log": lines} if lines else {})})
        self.call(naming.ACTIVITY_RELEASE_SLOT, slot)  # after the end is recorded, as build_image does
        requests = self.requests_before_call - first_request  # up to the final status (release not)
        record = self.store.runs.get(ref)
        return {**measure(record), "requests": requests}


# ------------------------------------------------------------------------------------------ reporting
def machine() -> str:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if "model name" in ln), "?",
    )  # fmt: skip
    load = os.getloadavg()
    return f"{os.cpu_count()} vCPU {cpu}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def line(label: str, r: dict[str, Any]) -> str:
    client = f" (client saw the end after {r['client']:.2f} s)" if r.get("client") else ""
    return (
        f"{label:<14} wall {r['wall']:7.2f} s  work {r['work']:7.2f} s  overhead {r['overhead']:6.3f} s "
        f"= {100 * r['overhead'] / r['wall']:5.1f} %{client}"
    )


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def keyed(rows: list[dict[str, Any]]) -> dict[tuple[bool, str, str, int], dict[str, Any]]:
    """Transitions by (child, activity, step, n-th such call): builds line up even when one retried
    an activity or scheduled one more."""
    seen: dict[tuple[bool, str, str], int] = {}
    out: dict[tuple[bool, str, str, int], dict[str, Any]] = {}
    for row in rows:
        base = (row["child"], row["name"], row["step"])
        seen[base] = seen.get(base, 0) + 1
        out[(*base, seen[base])] = row
    return out


def report_transitions(durable: list[dict[str, Any]]) -> None:
    """Median per activity over the warm durable builds (the same job: the same activity sequence)."""
    builds = [keyed(b["transitions"]) for b in durable]
    if not builds:
        return
    order = list(dict.fromkeys(k for b in builds for k in b))
    print("\nper activity transition, durable warm builds (median ms; own = the activity's seconds):")
    print(f"  {'activity':<13} {'step':<28} {'queue':>7} {'replay':>7} {'activity':>9} {'sum':>7} {'own':>8}")
    for child, activity, step, _ in order:
        rows = [b[key] for b in builds for key in [(child, activity, step, _)] if key in b]
        q, r, a = (med([x[k] for x in rows]) * 1000 for k in ("queue", "replay", "activity"))
        own = med([x["seconds"] for x in rows]) * 1000
        name = ("  " if child else "") + activity
        print(f"  {name:<13} {step[:28]:<28} {q:7.1f} {r:7.1f} {a:9.1f} {q + r + a:7.1f} {own:8.1f}")
    totals = {
        k: med([sum(x[k] for x in b["transitions"]) for b in durable]) * 1000
        for k in ("queue", "replay", "activity")
    }
    q, r, a = totals["queue"], totals["replay"], totals["activity"]
    n = med([float(len(b["transitions"])) for b in durable])
    print(f"  {f'all {n:.0f}':<42} {q:7.1f} {r:7.1f} {a:9.1f} {q + r + a:7.1f}")
    outside = med([b["overhead"] - sum(x["queue"] + x["replay"] + x["activity"] for x in b["transitions"])
                   for b in durable])  # fmt: skip
    print(f"  outside the transitions (POST .../run to the orchestration's start): {1000 * outside:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", choices=sorted(SOURCES), default="busybox")
    parser.add_argument(
        "--template", type=Path, help="a template file instead of the job (cold + warm reruns)"
    )
    parser.add_argument("--warm", type=int, default=5)
    parser.add_argument("--no-direct", action="store_true", help="skip the direct-chain baseline")
    parser.add_argument("--cache", type=Path, help="base image cache (default: an empty one, cold)")
    parser.add_argument(
        "--poll",
        type=float,
        default=1.0,
        help="seconds between the client's status GETs while a build runs (each is a function call "
        "in the app's worker, alongside the build: benchmarks/rebuild.py polls every 0.1 s)",
    )
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-build-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        with start_azurite(tmp / "azurite") as az, serve_examples() as url:
            env = {
                "IMAGEBUILDER_PROVIDER": "local",
                "AzureWebJobsStorage": az.connection_string,
                "IMAGEBUILDER_STATE_DIR": str(tmp / "provider"),
                "IMAGEBUILDER_CACHE_DIR": str(args.cache or tmp / "cache"),
                "IMAGEBUILDER_STEP_CACHE_DIR": str(tmp / "steps"),
                "IMAGEBUILDER_LOCAL_BOOT_CHECK": "off",
            }
            os.environ.update(env)  # the direct chain's activities read the same settings
            runtime = LocalRuntime(state_dir=tmp / "runtime", env=env).start()
            db = tmp / "runtime" / "durable.sqlite"
            try:
                api = ImageBuilderApi(runtime.base_url, runtime.key, resource_group="bench")
                store = open_store(az.connection_string)
                direct = None if args.no_direct else DirectChain(store)
                count_requests()

                def template(marker: str) -> dict[str, Any]:
                    if args.template:
                        return load_template(args.template.resolve(), url)
                    return job(url, args.base, marker)

                cold = durable_build(api, store, "bench-cold", template("cold"), args.poll)
                print(line("cold durable", cold))
                durable: list[dict[str, Any]] = []
                baseline: list[dict[str, Any]] = []
                for i in range(1, args.warm + 1):
                    r = durable_build(api, store, f"bench-warm{i}", template(f"warm{i}"), args.poll)
                    iid = naming.build_instance_id(r["record"].run)
                    end = r["record"].end_time.timestamp()  # what starts after the end is not in its wall
                    r["transitions"] = [t for t in transitions(db, iid) if t["started"] <= end]
                    durable.append(r)
                    print(line(f"warm{i} durable", r))
                    if direct is not None:
                        d = direct.build(api, f"bench-direct{i}", template(f"direct{i}"))
                        baseline.append(d)
                        print(line(f"warm{i} direct", d))
                report_transitions(durable)
                summarize(durable, baseline)
            finally:
                runtime.stop()
    print(f"machine at the end: {machine()}")
    return 0


def summarize(durable: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> None:
    if not durable:
        return
    over = med([r["overhead"] for r in durable])
    wall = med([r["wall"] for r in durable])
    n = med([float(len(r.get("transitions") or [])) for r in durable])
    print(f"\nwarm durable builds: median wall {wall:.2f} s, overhead {over:.3f} s = {100 * over / wall:.1f} % "
          f"(goal < 5 %), {n:.0f} activities: {1000 * over / max(n, 1):.1f} ms per activity")  # fmt: skip
    if baseline:
        base = med([r["overhead"] for r in baseline])
        bwall = med([r["wall"] for r in baseline])
        print(f"direct chain (same activities, no durable runtime): median wall {bwall:.2f} s, "
              f"overhead {base:.3f} s = {100 * base / bwall:.1f} %, "
              f"{med([r['requests'] for r in baseline]):.0f} storage requests")  # fmt: skip
        print(f"durable machinery: {over - base:+.3f} s per build = {1000 * (over - base) / max(n, 1):+.1f} ms "
              f"per activity transition; wall durable / direct = {wall / bwall:.2f}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
