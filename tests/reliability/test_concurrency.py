"""Concurrency: N BusyBox builds started at once on this 2-core machine (8 in the long suite) under a build
slot limit (IMAGEBUILDER_MAX_CONCURRENT_BUILDS=2): every one finishes, never more than the limit past
Queued (in the pool, sampled, and in the run records' own times), the waiting ones seen Queued with why
through the REST API, slots handed out first come first served, and the peak memory of the runtime and
its worker processes reported. Also: cancel while Queued, and a host killed while a run holds the only
slot (restarted on the same state, and restarted with its durable state lost: the stale slot and queue
entry are reclaimed once their runs are settled)."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from examples.demo import LocalRuntime
from imagebuilder.settings import Settings
from imagebuilder.store.slots import open_slots
from local_runtime.azurite import Azurite
from tests.reliability.audit import wait_clean
from tests.reliability.conftest import Rel, open_rel, pick, record

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(3600)]

LIMIT = 2
WAITING = "waiting for a build slot"


@contextlib.contextmanager
def limited(
    az: Azurite, factory: pytest.TempPathFactory, mp: pytest.MonkeyPatch, limit: int
) -> Iterator[Rel]:
    """A private runtime whose app setting IMAGEBUILDER_MAX_CONCURRENT_BUILDS is `limit`."""
    mp.setenv("IMAGEBUILDER_MAX_CONCURRENT_BUILDS", str(limit))  # the runtime inherits the environment
    base = factory.mktemp("conc")
    with open_rel(az, base, factory.getbasetemp() / "rel-cache") as rel:
        yield rel


def conn(rel: Rel) -> str:
    return rel.env["AzureWebJobsStorage"]


def pool_of(rel: Rel) -> str:
    return Settings.from_env({**os.environ, **rel.runtime.env}).build_slot_pool


def _template(rel: Rel, script: list[str]) -> dict[str, Any]:
    return rel.template(
        "busybox-webpage.json",
        customize=[{"type": "Shell", "name": "work", "inline": script}],
        validate={},
        distribute=[{"type": "VHD", "runOutputName": "vhd"}],
    )


def _status(path: str) -> dict[str, str]:
    out = {}
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            out[name] = value.strip()
    except OSError:
        pass
    return out


def _kb(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


class Sampler(threading.Thread):
    """Every ~0.5 s: the pool's holders (the truth), each template's lastRunStatus through the REST API,
    and the resident memory of the runtime host and its Python worker processes (not of the builds'
    sandboxes and QEMU, which are bounded per step by the sandbox limits)."""

    def __init__(self, rel: Rel, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.rel, self.names = rel, names
        self.slots = open_slots(conn(rel))
        self.pool = pool_of(rel)
        self.stop = threading.Event()
        self.max_holders = 0
        self.samples = 0
        self.queued_seen: dict[str, str] = {}  # template -> a message seen while Queued
        self.hwm_kb: dict[int, int] = {}  # pid -> peak resident (VmHWM)
        self.host_pids: set[int] = set()
        self.peak_sum_kb = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # a restart in progress: the next sample will do
                self.errors.append(str(exc))
            self.stop.wait(0.5)

    def sample(self) -> None:
        self.samples += 1
        self.max_holders = max(self.max_holders, len(self.slots.state(self.pool).holders))
        self.memory()
        for name in self.names:
            status = self.rel.api.last_run_status(name)
            if status.get("runSubState") == "Queued" and WAITING in str(status.get("message")):
                self.queued_seen.setdefault(name, str(status["message"]))

    def memory(self) -> None:
        proc = self.rel.runtime.proc
        if proc is None or proc.poll() is not None:
            return
        host = proc.pid
        self.host_pids.add(host)
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            pgrp = int(stat.rsplit(")", 1)[1].split()[2])
            if pgrp != host or (pid != host and b"local_runtime" not in cmdline):
                continue
            status = _status(f"/proc/{pid}/status")
            total += _kb(status.get("VmRSS"))
            self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), _kb(status.get("VmHWM")))
        self.peak_sum_kb = max(self.peak_sum_kb, total)

    def figures(self) -> dict[str, float]:
        host = max((kb for pid, kb in self.hwm_kb.items() if pid in self.host_pids), default=0)
        workers = [kb for pid, kb in self.hwm_kb.items() if pid not in self.host_pids]
        return {
            "hostPeakMB": round(host / 1024),
            "workerPeakMB": round(max(workers, default=0) / 1024),
            "workers": len(workers),
            "sumPeakMB": round(self.peak_sum_kb / 1024),
        }


def last_run(rel: Rel, name: str) -> dict[str, Any]:
    runs = rel.api.runs(name)
    assert runs, f"{name} has no run"
    props: dict[str, Any] = runs[-1]["properties"]
    return props


def _time(stamp: str) -> float:
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + stamp[19:-1])


def max_past_queued(runs: list[dict[str, Any]]) -> int:
    """The most runs past Queued at once by the runs' own records: each from the start of its Building
    phase (after its slot was granted) to its recorded end (before its slot was given back)."""
    edges = []
    for props in runs:
        building = (props["details"].get("phases") or {}).get("Building")
        if building:
            edges.append((_time(building["start"]), 1))
            edges.append((_time(props["details"]["endTime"]), -1))
    current = peak = 0
    for _, step in sorted(edges):  # at one instant an end (-1) sorts before a start
        current += step
        peak = max(peak, current)
    return peak


def handoffs(runs: list[dict[str, Any]], limit: int) -> list[float]:
    """Seconds from a run's recorded end to the next waiter's Building start (the slot changing hands:
    release, the waiter's acquire answering, its Building status)."""
    ends = sorted(_time(r["details"]["endTime"]) for r in runs)
    starts = sorted(_time(r["details"]["phases"]["Building"]["start"]) for r in runs)
    return [round(starts[i] - ends[i - limit], 2) for i in range(limit, len(runs))]


def test_builds_started_at_once_wait_for_slots_first_come_first_served(
    e2e_azurite: Azurite, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = pick(3, 8)
    names = [f"conc-{i}" for i in range(n)]
    with limited(e2e_azurite, tmp_path_factory, monkeypatch, LIMIT) as rel:
        for name in names:  # one script each: no step cache hits between them, every build works
            rel.api.put_template(name, _template(rel, ["sleep 2", f"echo {name} | sudo tee /etc/conc"]))
        sampler = Sampler(rel, names)
        sampler.start()
        start = time.monotonic()
        threads = [threading.Thread(target=rel.api.run, args=(name,)) for name in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        finals = {name: rel.api.watch(name, timeout=1800, interval=1.0) for name in names}
        wall = time.monotonic() - start
        sampler.stop.set()
        sampler.join(30)
        runs = {name: last_run(rel, name) for name in names}
        pool = open_slots(conn(rel)).state(pool_of(rel))
        leaks = wait_clean(rel.provider_state, rel.cache_dir, rel.store)

    failed = [name for name, f in finals.items() if f["runState"] != "Succeeded"]
    slots = {name: props["details"]["buildSlot"] for name, props in runs.items()}
    by_ticket = sorted(slots.values(), key=lambda s: s["ticket"])
    grants_in_ticket_order = [s["grant"] for s in by_ticket]
    recorded_peak = max_past_queued(list(runs.values()))
    queued_s = sorted(round(s["queuedSeconds"]) for s in slots.values())
    gaps = sorted(handoffs(list(runs.values()), LIMIT))
    mem = sampler.figures()
    record(
        "concurrency",
        f"{n} builds started at once (2 cores), at most {LIMIT} building",
        n,
        lost=len(failed),
        leaked=leaks.total(),
        note=(
            f"all done in {wall:.0f} s; at most {max(sampler.max_holders, recorded_peak)} past Queued; "
            f"{len(sampler.queued_seen)} seen Queued via REST; granted first come first served; "
            f"queued s: {queued_s}; slot handoff median {gaps[len(gaps) // 2] if gaps else 0} s, "
            f"worst {max(gaps, default=0)} s; peak RSS host {mem['hostPeakMB']} MB, worker {mem['workerPeakMB']} MB "
            f"({mem['workers']} workers), host+workers {mem['sumPeakMB']} MB"
        ),
        **mem,
    )
    assert not failed, {name: finals[name] for name in failed}
    assert sampler.samples > 10 and sampler.max_holders <= LIMIT, sampler.max_holders
    assert recorded_peak <= LIMIT, recorded_peak
    assert recorded_peak == LIMIT, "the limit is used, not only respected"
    assert len(sampler.queued_seen) >= n - LIMIT, (sampler.queued_seen, sampler.errors[-3:])
    assert all(f"of {LIMIT} in use" in m for m in sampler.queued_seen.values()), sampler.queued_seen
    assert grants_in_ticket_order == sorted(grants_in_ticket_order), by_ticket  # FCFS: no overtaking
    assert sum(1 for s in slots.values() if s["polls"] > 1) >= n - LIMIT
    assert not pool.holders and not pool.queue, pool  # every slot given back
    assert mem["hostPeakMB"] > 0 and mem["sumPeakMB"] < 4096, mem  # bounded: not growing per build
    assert leaks.total() == 0, leaks


def test_cancel_while_queued_ends_canceled_at_once_and_leaves_the_queue(
    e2e_azurite: Azurite, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with limited(e2e_azurite, tmp_path_factory, monkeypatch, 1) as rel:
        rel.api.put_template("holder", _template(rel, ["sleep 25"]))
        rel.api.put_template("waiter", _template(rel, ["echo never"]))
        rel.api.put_template("next", _template(rel, ["echo next | sudo tee /etc/next"]))
        rel.api.run("holder")
        _wait(rel, "holder", lambda s: s.get("runSubState") not in (None, "Queued"), 300)
        rel.api.run("waiter")
        queued = _wait(rel, "waiter", lambda s: WAITING in str(s.get("message")), 120)
        assert queued["runState"] == "Running" and queued["runSubState"] == "Queued"
        rel.api.run("next")  # behind the waiter: moves up when the waiter leaves
        _wait(rel, "next", lambda s: WAITING in str(s.get("message")), 120)
        asked = time.monotonic()
        rel.api.cancel("waiter")
        final = rel.api.watch("waiter", timeout=120, interval=0.2)
        took = time.monotonic() - asked
        holder_then = rel.api.last_run_status("holder")
        waiter = last_run(rel, "waiter")
        rest = {name: rel.api.watch(name, timeout=900, interval=1.0) for name in ("holder", "next")}
        log = rel.log_text("waiter")
        pool = open_slots(conn(rel)).state(pool_of(rel))
        leaks = wait_clean(rel.provider_state, rel.cache_dir, rel.store)
    record(
        "concurrency",
        "cancel while Queued",
        1,
        lost=int(final["runState"] != "Canceled"),
        leaked=leaks.total(),
        note=f"Canceled {took:.1f} s after the request, nothing built",
    )
    assert final["runState"] == "Canceled" and waiter["runSubState"] == "Queued", (final, waiter)
    assert holder_then["runState"] == "Running", "it ended while the holder still built"
    assert "==> prepare" not in log, "a run canceled while Queued builds nothing"
    assert waiter["details"]["buildSlot"]["held"] is False
    assert {name: f["runState"] for name, f in rest.items()} == {"holder": "Succeeded", "next": "Succeeded"}
    assert not pool.holders and not pool.queue, pool
    assert leaks.total() == 0, leaks


def _wait(rel: Rel, name: str, ok: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = rel.api.last_run_status(name)
        if ok(status):
            return status
        assert status.get("runState") in ("Running", "Canceling", None), (name, status)  # ended early
        time.sleep(0.3)
    raise AssertionError(f"{name}: still {status} after {timeout:.0f} s")


def test_a_killed_hosts_slot_is_given_back_after_a_restart_and_reclaimed_when_its_state_is_lost(
    e2e_azurite: Azurite, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with limited(e2e_azurite, tmp_path_factory, monkeypatch, 1) as rel:
        slots, pool = open_slots(conn(rel)), pool_of(rel)
        for name in ("a", "b", "c", "d"):
            rel.api.put_template(name, _template(rel, ["sleep 8", f"echo {name} | sudo tee /etc/{name}"]))

        # 1. kill -9 while `a` holds the only slot and `b` waits; restart on the same state: the
        #    orchestrations resume, `a` finishes and gives the slot back, `b` builds after it
        rel.api.run("a")
        _wait(rel, "a", lambda s: s.get("runSubState") not in (None, "Queued"), 300)
        rel.api.run("b")
        _wait(rel, "b", lambda s: WAITING in str(s.get("message")), 120)
        assert list(slots.state(pool).holders) and len(slots.state(pool).queue) == 1
        rel.runtime.kill9()
        rel.runtime.start()
        rel.api.base_url = rel.runtime.base_url
        resumed = {name: rel.api.watch(name, timeout=900, interval=1.0) for name in ("a", "b")}
        runs = [last_run(rel, name) for name in ("a", "b")]
        after_restart = slots.state(pool)

        # 2. kill -9 while `c` holds the slot and `d` waits, then start a host with the same provider
        #    state but new durable state (the orchestrations are gone for good): their runs stay Running
        #    until settled (`c` by a cancel, `d` by the slot settler), which makes their pool entries
        #    stale; then the next run gets the slot
        rel.api.run("c")
        _wait(rel, "c", lambda s: s.get("runSubState") not in (None, "Queued"), 300)
        rel.api.run("d")
        _wait(rel, "d", lambda s: WAITING in str(s.get("message")), 120)
        rel.runtime.kill9()
        lost = LocalRuntime(state_dir=rel.runtime.state_dir.parent / "runtime-2", env=rel.runtime.env)
        killed, rel.runtime = rel.runtime, lost.start()
        try:
            rel.api.base_url, rel.api.key = rel.runtime.base_url, rel.runtime.key
            rel.api.put_template("e", _template(rel, ["echo e | sudo tee /etc/e"]))
            rel.api.run("e")
            stuck = _wait(rel, "e", lambda s: WAITING in str(s.get("message")), 120)
            time.sleep(3)
            still = rel.api.last_run_status("e")
            rel.api.cancel("c")  # no orchestration to tell: settled Canceled at once
            _admin(rel, "settle_build_slots")  # `d`: its orchestration is unknown to the host now
            _wait(rel, "d", lambda s: s.get("runState") not in ("Running", "Canceling"), 60)
            settled = {name: last_run(rel, name) for name in ("c", "d")}
            final_e = rel.api.watch("e", timeout=900, interval=1.0)
            after_reclaim = slots.state(pool)
            # what the lost run `c` left (its build root) is the sweeper's: run it now, not in 5 min
            master = rel.runtime.keys["masterKey"]
            swept = requests.post(
                f"{rel.runtime.base_url}/admin/functions/sweep_transient_resources?code={master}",
                json={"input": ""},
                timeout=30,
            )
            assert swept.status_code == 202, swept.text
            leaks = wait_clean(rel.provider_state, rel.cache_dir, rel.store, timeout=60)
        finally:
            lost.stop()
            rel.runtime = killed

    record(
        "concurrency",
        "kill -9 while a run holds the only slot: restart; durable state lost",
        2,
        lost=sum(1 for f in resumed.values() if f["runState"] != "Succeeded")
        + int(final_e["runState"] != "Succeeded"),
        leaked=leaks.total(),
        note="resumed runs gave the slot back; lost runs' slot and queue entry reclaimed once settled "
        "(a cancel; the slot settler), their build root removed by the sweeper",
    )
    assert {n: f["runState"] for n, f in resumed.items()} == {"a": "Succeeded", "b": "Succeeded"}, resumed
    assert max_past_queued(runs) == 1
    assert runs[0]["details"]["buildSlot"]["grant"] < runs[1]["details"]["buildSlot"]["grant"]
    assert not after_restart.holders and not after_restart.queue, after_restart
    # the slot stayed taken while the dead runs were unsettled: never granted twice
    assert "1 of 1 in use" in stuck["message"] and still["runSubState"] == "Queued", still
    assert settled["c"]["runState"] == "Canceled", settled["c"]
    assert settled["d"]["runState"] == "Failed" and "orchestration is gone" in settled["d"]["message"]
    assert final_e["runState"] == "Succeeded", final_e
    assert not after_reclaim.holders and not after_reclaim.queue, after_reclaim
    assert leaks.total() == 0, leaks


def _admin(rel: Rel, function: str) -> None:
    master = rel.runtime.keys["masterKey"]
    resp = requests.post(
        f"{rel.runtime.base_url}/admin/functions/{function}?code={master}", json={"input": ""}, timeout=30
    )
    assert resp.status_code == 202, resp.text


def test_a_terminated_orchestrations_slot_is_settled_and_given_to_the_next_run(
    e2e_azurite: Azurite, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with limited(e2e_azurite, tmp_path_factory, monkeypatch, 1) as rel:
        slots, pool = open_slots(conn(rel)), pool_of(rel)
        rel.api.put_template("t", _template(rel, ["sleep 20"]))
        rel.api.put_template("w", _template(rel, ["echo w | sudo tee /etc/w"]))
        rel.api.run("t")
        _wait(rel, "t", lambda s: s.get("runSubState") not in (None, "Queued"), 300)
        rel.api.run("w")
        _wait(rel, "w", lambda s: WAITING in str(s.get("message")), 120)
        (holder,) = slots.state(pool).holders
        master = rel.runtime.keys["masterKey"]
        resp = requests.post(
            f"{rel.runtime.base_url}/runtime/webhooks/durabletask/instances/{holder}/terminate"
            f"?reason=test&code={master}",
            timeout=30,
        )
        assert resp.status_code == 202, resp.text
        time.sleep(3)
        before = (rel.api.last_run_status("t"), rel.api.last_run_status("w"))
        _admin(rel, "settle_build_slots")  # the timer, now instead of on its 5-minute tick
        final_w = rel.api.watch("w", timeout=600, interval=1.0)
        final_t = last_run(rel, "t")
        after = slots.state(pool)
        # a terminated orchestration does not stop its activity: the step runs out its 20 s (and may
        # still write in its run folder); then what the terminated build left is the sweeper's
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not re.search(
            r"\(Shell: work\): (?!started)", rel.log_text("t")
        ):
            time.sleep(0.5)
        _admin(rel, "sweep_transient_resources")
        leaks = wait_clean(rel.provider_state, rel.cache_dir, rel.store, timeout=90)
    record(
        "concurrency",
        "orchestration terminated while it holds the only slot",
        1,
        lost=int(final_w["runState"] != "Succeeded"),
        leaked=leaks.total(),
        note="settled by the slot settler (sweep schedule), the next run built",
    )
    # terminated, the run still said Running and the waiter waited: nothing granted twice
    assert before[0]["runState"] == "Running" and before[1]["runSubState"] == "Queued", before
    assert final_t["runState"] == "Failed" and "Terminated" in final_t["message"], final_t
    assert final_w["runState"] == "Succeeded", final_w
    assert not after.holders and not after.queue, after
    assert leaks.total() == 0, leaks
