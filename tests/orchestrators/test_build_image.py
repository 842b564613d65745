"""The `build_image` / `distribute_image` orchestrations replayed through the SDK's registered handles
with hand-built DTFx history (tests/orchestrators/replay_host.py) and fake phase activities."""

from __future__ import annotations

import heapq
import itertools
from datetime import timedelta

from tests.orchestrators.fakes import FakeBuild, build_input, handles
from tests.orchestrators.replay_host import T0, Instance, ReplayHost, Scheduled, leaves, parse


def run(
    fake: FakeBuild, data: dict | None = None, host: ReplayHost | None = None
) -> tuple[ReplayHost, Instance]:
    host = host or ReplayHost(handles(), fake.activities())
    inst = host.run("build_image", data or build_input())
    assert inst.failed is None, inst.failed
    return host, inst


def phase_names(host: ReplayHost) -> list[str]:
    """Activities of the parent, with run_status calls shown as their sub-state or final state."""
    out = []
    mine = [c for c in host.calls if c.instance_id == "run-1"]
    for c in mine:
        if c.name in ("acquire_build_slot", "release_build_slot"):
            continue  # the build slot calls have their own tests
        p = c.payload if c.name == "run_status" else c.payload.get("status")
        if isinstance(p, dict):  # written by run_status, or carried by a phase's first activity
            out.append(f"status:{p['run_state']}/{p['run_sub_state']}")
        if c.name != "run_status":
            out.append(c.name if c.name != "customize" else f"customize[{c.payload['index']}]")
    return out


def test_happy_path_runs_every_phase_in_order_and_distributes_per_region() -> None:
    fake = FakeBuild()
    host, inst = run(fake)
    assert phase_names(host) == [
        "status:Running/Building",
        "prepare",
        "create_env",
        "status:Running/Customizing",
        "customize[0]",
        "customize[1]",
        "status:Running/Validating",
        "validate",
        "status:Running/Distributing",
        "generalize",
        "capture",
        "cleanup",
        "status:Succeeded/Distributing",
    ]
    # every phase rides on its first activity (Building on prepare, not on the acquire that got the
    # slot: its status write then runs alongside prepare's work); the end goes through run_status
    assert sum(c.name == "run_status" for c in host.calls if c.instance_id == "run-1") == 1
    acquires = [c.payload for c in host.calls if c.name == "acquire_build_slot"]
    assert acquires and not any("onGrant" in a for a in acquires)
    # one child per distribute target, one replication per region, run outputs persisted with status
    children = sorted({c.instance_id for c in host.calls if c.instance_id != "run-1"})
    assert children == ["run-1:distribute:0", "run-1:distribute:1", "run-1:distribute:2"]
    gallery = [
        c.payload["region"]
        for c in host.calls
        if c.instance_id == "run-1:distribute:1" and c.name == "distribute"
    ]
    assert gallery == ["westeurope", "northeurope"]
    assert set(fake.outputs) == {"managed", "gallery", "vhd"}
    assert fake.outputs["gallery"]["provisioningState"] == "Succeeded"
    assert [r["region"] for r in fake.outputs["gallery"]["regions"]] == ["westeurope", "northeurope"]
    assert fake.outputs["managed"]["artifactId"] == "/id/managed/westeurope"
    # a one-region target's distribute persisted its output: no run_status call in that child
    assert sorted(fake.outputs_by_distribute) == ["managed", "vhd"]
    outputs_via_status = [
        c.instance_id for c in host.calls if c.name == "run_status" and c.instance_id != "run-1"
    ]
    assert outputs_via_status == ["run-1:distribute:1"]
    assert fake.cleanups == [False]
    out = inst.output
    assert out["runState"] == "Succeeded" and out["runSubState"] == "Distributing"
    assert [o["status"] for o in out["outputs"]] == ["succeeded"] * 3
    assert set(out["phases"]) == {"Queued", "Building", "Customizing", "Validating", "Distributing"}
    assert out["buildSlot"]["polls"] == 1 and out["buildSlot"]["queuedSeconds"] == 0  # not waited
    assert fake.slot_calls == ["acquire", "release"]
    assert out["phases"]["Customizing"]["workSeconds"] == 4.0  # two customizers of 2 s each
    # generalize + capture + the longest of the targets (they replicate in parallel) + cleanup, 1 s each
    assert out["phases"]["Distributing"]["workSeconds"] == 4.0
    assert out["workSeconds"] > 0
    # custom status went through the sub-states in order and ended terminal
    seen = [s["runSubState"] for s in inst.custom_statuses]
    assert [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s] == [
        "Building",
        "Customizing",
        "Validating",
        "Distributing",
    ]
    assert inst.custom_status["runState"] == "Succeeded"
    final = fake.statuses[-1]
    assert final["run_state"] == "Succeeded" and final["details"]["outputs"]


def test_the_run_record_lists_each_customize_step_with_its_cache_outcome() -> None:
    fake = FakeBuild()
    _, inst = run(fake)
    steps = fake.statuses[-1]["details"]["steps"]
    assert [s["status"] for s in steps] == ["succeeded", "succeeded"]
    assert [s["cache"]["hit"] for s in steps] == [True, False]
    assert steps[0]["cache"] == {"id": f"{0:064x}", "hit": True, "seconds": 0.1}
    assert inst.output["steps"] == steps
    failing = FakeBuild(fail_customizer=1)
    run(failing)
    assert [s["status"] for s in failing.statuses[-1]["details"]["steps"]] == ["succeeded", "failed"]


def test_deadline_timer_is_build_timeout_and_cancel_event_is_raced() -> None:
    fake = FakeBuild()
    host = ReplayHost(handles(), fake.activities())
    inst = host.start("build_image", build_input(buildTimeoutInMinutes=7))
    # first episode: persists Building (not raced); the first raced step carries the timer and event
    host.pending_children, host.retry_timers = [], {}
    while not any(c.name == "prepare" for c in host.calls):
        at, _, i, ev = heapq.heappop(host.queue)
        host.clock = max(host.clock, at)
        host.deliver(i, ev)
    state, _ = host.invoke(inst)
    flat = leaves(state["actions"][0])
    timers = [a for a in flat if a["actionType"] == 5]
    events = [a for a in flat if a["actionType"] == 6]
    assert parse(timers[0]["fireAt"]) == T0 + timedelta(minutes=7)
    assert events[0]["externalEventName"] == "cancel"
    any_action = [a for a in state["actions"][0] if a["actionType"] == 11]
    assert any_action, "the step is raced (WhenAny) against the deadline and the cancel event"


def test_default_timeout_is_four_hours() -> None:
    fake = FakeBuild()
    host = ReplayHost(handles(), fake.activities())
    inst = host.run("build_image", build_input(buildTimeoutInMinutes=0))
    timer = next(e for e in inst.history if e["EventType"] == 10)
    assert parse(timer["FireAt"]) == T0 + timedelta(minutes=240)


def test_host_timeout_scale_shortens_the_deadline() -> None:
    fake = FakeBuild(hang_customizer=0, timeout_scale=0.05)
    _, inst = run(fake, build_input(buildTimeoutInMinutes=6))
    timer = next(e for e in inst.history if e["EventType"] == 10)
    assert parse(timer["FireAt"]) == T0 + timedelta(seconds=18)
    assert (
        "timed out after 6 minute(s) (buildTimeoutInMinutes, scaled by 0.05 by the host)"
        in inst.output["message"]
    )


def test_customizer_failure_skips_the_rest_and_still_cleans_up() -> None:
    fake = FakeBuild(fail_customizer=0)
    host, inst = run(fake)
    names = phase_names(host)
    assert names[-2:] == ["cleanup", "status:Failed/Customizing"]
    assert "customize[1]" not in names and "generalize" not in names and "distribute" not in host.names()
    assert fake.cleanups == [False]
    msg = inst.output["message"]
    assert "customize[0] (File: page)" in msg
    assert "exit code 3" in msg
    assert "E: Unable to locate package nope" in msg
    assert "customization.log" in msg
    assert fake.statuses[-1]["error"]["exit_code"] == 3


def test_abort_keeps_the_build_environment_and_says_where() -> None:
    fake = FakeBuild(fail_customizer=1)
    _, inst = run(fake, build_input(errorHandling={"onCustomizerError": "abort"}))
    assert fake.cleanups == [True]
    assert inst.output["runState"] == "Failed"
    assert (
        "kept for inspection (errorHandling abort): /var/lib/imagebuilder/builds/tpl-r1"
        in inst.output["message"]
    )


def test_timeout_during_a_stuck_customizer_fails_the_run_and_cleans_up() -> None:
    fake = FakeBuild(hang_customizer=1)
    host, inst = run(fake, build_input(buildTimeoutInMinutes=1))
    assert inst.output["runState"] == "Failed"
    assert "timed out after 1 minute(s)" in inst.output["message"]
    assert "customize[1]" in inst.output["message"]
    assert fake.cleanups == [False]  # the stuck step never finishes: no second sweep
    cleanup_at = next(c.at for c in host.calls if c.name == "cleanup")
    assert cleanup_at == T0 + timedelta(minutes=1)
    assert "generalize" not in host.names()


def test_cancel_during_a_customizer_reports_canceling_then_canceled_after_cleanup() -> None:
    fake = FakeBuild(hang_customizer=0)
    host = ReplayHost(handles(), fake.activities())

    def cancel_when_customizing(h: ReplayHost, inst: Instance, item: Scheduled) -> None:
        if item.name == "customize":
            h.raise_event(inst.instance_id, "cancel", "user asked", after=5)

    host.on_schedule.append(cancel_when_customizing)
    _, inst = run(fake, host=host)
    states = [s["run_state"] for s in fake.statuses]
    assert states[-2:] == ["Canceling", "Canceled"]
    assert fake.cleanups == [False]
    assert inst.output["runState"] == "Canceled"
    assert "customize[0]" in inst.output["message"]
    assert "generalize" not in host.names()


def _cancelled_during_a_long_first_step() -> tuple[FakeBuild, Instance]:
    """A build whose first customizer takes 60 s and is cancelled a second after it was scheduled."""
    fake = FakeBuild()
    host = ReplayHost(handles(), fake.activities(), durations={"customize": 60})

    def cancel_soon(h: ReplayHost, inst: Instance, item: Scheduled) -> None:
        if item.name == "customize" and item.input and '"index": 0' in item.input:
            h.raise_event(inst.instance_id, "cancel", None, after=1)

    host.on_schedule.append(cancel_soon)
    _, inst = run(fake, host=host)
    return fake, inst


def test_cancel_when_the_step_finishes_after_cleanup_sweeps_twice() -> None:
    fake, inst = _cancelled_during_a_long_first_step()
    assert inst.output["runState"] == "Canceled"
    assert fake.cleanups == [False, False]


def test_cancel_accepted_while_cleanup_runs_after_the_work_ends_canceled() -> None:
    """The API accepts a cancel (202) until the run is recorded as over; one that arrives while cleanup
    runs after the last distribution still ends the run Canceled (saying what was delivered)."""
    fake = FakeBuild()
    host = ReplayHost(handles(), fake.activities(), durations={"cleanup": 10})

    def cancel_in_cleanup(h: ReplayHost, inst: Instance, item: Scheduled) -> None:
        if item.name == "cleanup" and inst.instance_id == "run-1":
            h.raise_event(inst.instance_id, "cancel", "user asked", after=2)

    host.on_schedule.append(cancel_in_cleanup)
    _, inst = run(fake, host=host)
    assert inst.output["runState"] == "Canceled", inst.output
    assert (
        "during cleanup" in inst.output["message"] and "delivered before the cancel" in inst.output["message"]
    )
    assert fake.cleanups == [False]


def test_transient_failure_is_retried_by_the_host() -> None:
    fake = FakeBuild(transient_customizer={1: 1})
    host, inst = run(fake)
    assert inst.output["runState"] == "Succeeded"
    assert host.names("run-1").count("customize") == 3  # customize[0], customize[1] twice


def test_transient_failures_past_the_retry_budget_fail_the_run_naming_the_step() -> None:
    fake = FakeBuild(transient_customizer={0: 5})
    host, inst = run(fake)
    assert inst.output["runState"] == "Failed"
    assert host.names("run-1").count("customize") == 3
    assert "customize[0] (File: page)" in inst.output["message"]
    assert "sandbox busy" in inst.output["message"]
    assert "still failing after 3 attempts" in inst.output["message"]
    assert fake.cleanups == [False]


def test_one_failed_region_makes_the_run_partially_succeeded() -> None:
    fake = FakeBuild(fail_regions={"northeurope"})
    _, inst = run(fake)
    assert inst.output["runState"] == "PartiallySucceeded"
    assert fake.outputs["gallery"]["status"] == "partial"
    assert fake.outputs["managed"]["status"] == "succeeded"
    assert "northeurope: no space in northeurope" in inst.output["message"]


def test_validation_failure_stops_distribution_unless_continue_distribute_on_failure() -> None:
    fake = FakeBuild(fail_validation=True)
    host, inst = run(fake)
    assert inst.output["runState"] == "Failed" and "validate.inVMValidations" in inst.output["message"]
    assert "distribute" not in host.names() and fake.cleanups == [False]

    fake = FakeBuild(fail_validation=True)
    validate = {
        "inVMValidations": [{"type": "Shell", "name": "c", "inline": ["false"]}],
        "continueDistributeOnFailure": True,
    }
    host, inst = run(fake, build_input(validate=validate, errorHandling={"onValidationError": "abort"}))
    assert inst.output["runState"] == "Failed"
    assert "distributed anyway (continueDistributeOnFailure)" in inst.output["message"]
    assert set(fake.outputs) == {"managed", "gallery", "vhd"}
    assert fake.cleanups == [True]


def test_source_validation_only_validates_the_source_and_builds_nothing() -> None:
    fake = FakeBuild()
    validate = {
        "inVMValidations": [{"type": "Shell", "name": "c", "inline": ["true"]}],
        "sourceValidationOnly": True,
    }
    host, inst = run(fake, build_input(validate=validate, customize=[]))
    assert phase_names(host) == [
        "status:Running/Building",
        "prepare",
        "create_env",
        "status:Running/Validating",
        "validate",
        "cleanup",
        "status:Succeeded/Validating",
    ]
    assert "sourceValidationOnly" in inst.output["message"]


def test_checksum_failure_in_prepare_fails_before_any_build_resource() -> None:
    fake = FakeBuild(fail_prepare=True)
    host, inst = run(fake)
    assert phase_names(host) == ["status:Running/Building", "prepare", "cleanup", "status:Failed/Building"]
    assert "sha256" in inst.output["message"] and "expected bb" in inst.output["message"]


def test_pending_results_are_polled_with_durable_timers() -> None:
    fake = FakeBuild(pending_capture=2)
    host, inst = run(fake)
    assert inst.output["runState"] == "Succeeded"
    assert host.names("run-1").count("poll") == 2
    polls = [c.at for c in host.calls if c.name in ("capture", "poll")]
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(polls)] == [31.0, 31.0]


def test_replay_is_deterministic_same_actions_every_episode() -> None:
    fake = FakeBuild()
    host, inst = run(fake)
    state1, _ = host.invoke(inst)
    state2, _ = host.invoke(inst)
    assert state1 == state2 and state1["isDone"]


def test_a_deadline_that_fires_between_steps_starts_no_further_step() -> None:
    fake = FakeBuild(timeout_scale=0.05)
    # the 18 s deadline fires while the Optimizing status is written through run_status (17 s to 20 s:
    # no activity of its own carries it), between steps
    host = ReplayHost(
        handles(),
        fake.activities(),
        durations={"customize": 6.0, "run_status": 3.0, "acquire_build_slot": 3.0},
    )
    template = build_input(buildTimeoutInMinutes=6, optimize={"vmBoot": {"state": "Enabled"}})
    _, inst = run(fake, template, host=host)
    assert inst.output["runState"] == "Failed" and "timed out" in inst.output["message"]
    assert "validate" not in host.names(), "no step starts once the deadline has passed"
    assert fake.cleanups == [False]


def test_cancel_while_the_granting_acquire_is_in_flight_ends_canceled_before_building() -> None:
    """A cancel arriving while the acquire that gets the slot is in flight lets it finish (so it cannot
    hold a slot after the release); the run ends Canceled in Queued (Building was never reported:
    prepare would have carried it), nothing was built, so nothing is cleaned up, and the slot goes
    back."""
    fake = FakeBuild()
    host = ReplayHost(handles(), fake.activities())

    def cancel_at_once(h: ReplayHost, inst: Instance, item: Scheduled) -> None:
        if item.name == "acquire_build_slot":
            h.raise_event(inst.instance_id, "cancel", "user asked")

    host.on_schedule.append(cancel_at_once)
    _, inst = run(fake, host=host)
    assert inst.output["runState"] == "Canceled" and inst.output["runSubState"] == "Queued"
    states = [(s["run_state"], s["run_sub_state"]) for s in fake.statuses]
    assert states == [("Canceling", "Queued"), ("Canceled", "Queued")], fake.statuses
    assert "prepare" not in host.names() and fake.cleanups == []
    assert fake.slot_calls == ["acquire", "release"]
    assert host.names()[-1] == "release_build_slot"


def test_optimizing_is_reported_between_customizing_and_validating_when_asked() -> None:
    fake = FakeBuild()
    host, inst = run(fake, build_input(optimize={"vmBoot": {"state": "Enabled"}}))
    subs = [s for s in phase_names(host) if s.startswith("status:Running/")]
    assert subs == [
        "status:Running/Building",
        "status:Running/Customizing",
        "status:Running/Optimizing",
        "status:Running/Validating",
        "status:Running/Distributing",
    ]
    assert inst.output["runState"] == "Succeeded"


def test_a_run_waits_queued_for_a_build_slot_then_builds_and_gives_it_back() -> None:
    fake = FakeBuild(queued_polls=4, timeout_scale=0.05)
    host, inst = run(fake, build_input(buildTimeoutInMinutes=6))
    # waiting: Queued with why and where, persisted when that changes (positions 2, 2, 1, 1)
    queued = [s for s in fake.statuses if s["run_sub_state"] == "Queued"]
    assert [s["details"]["buildSlot"]["position"] for s in queued] == [2, 1]
    assert "waiting for a build slot: 2 of 2 in use" in queued[0]["message"]
    assert "1 run(s) ahead" in queued[0]["message"]
    subs = [s["run_sub_state"] for s in fake.statuses]
    order = ["Queued", "Building", "Customizing", "Validating", "Distributing"]
    assert [order.index(s) for s in subs] == sorted(order.index(s) for s in subs), "never backwards"
    assert fake.slot_calls == ["acquire"] * 5 + ["release"]
    # the slot goes back after the end is recorded: the API never shows more runs past Queued than slots
    assert [c.name for c in host.calls if c.instance_id == "run-1"][-2:] == [
        "run_status",
        "release_build_slot",
    ]
    assert fake.statuses[-1]["run_state"] == "Succeeded"
    out = inst.output
    assert out["runState"] == "Succeeded"
    # 4 waits on durable timers (2 s, 3 s at place 2 within the limit of 2; 1 s, 1 s at place 1, whose
    # acquires then wait inside the activity, waitSeconds) plus the 5 calls of 1 s each
    waits = [c.payload["waitSeconds"] for c in host.calls if c.name == "acquire_build_slot"]
    assert waits == [0, 0, 0, 10, 10]
    assert out["buildSlot"]["polls"] == 5 and out["buildSlot"]["queuedSeconds"] >= 9
    assert (out["buildSlot"]["ticket"], out["buildSlot"]["grant"]) == (7, 5)
    assert out["phases"]["Queued"]["seconds"] >= 9
    # the 18 s build timeout started once the slot was held: a build of ~16 s does not time out
    assert out["buildSlot"]["queuedSeconds"] + out["phases"]["Building"]["seconds"] < 40


def test_cancel_while_queued_ends_canceled_without_building_and_leaves_the_queue() -> None:
    fake = FakeBuild(queued_polls=1000)
    host = ReplayHost(handles(), fake.activities())

    def cancel_in_queue(h: ReplayHost, inst: Instance, item: Scheduled) -> None:
        if item.name == "acquire_build_slot" and fake.slot_calls.count("acquire") == 3:
            h.raise_event(inst.instance_id, "cancel", "user asked")

    host.on_schedule.append(cancel_in_queue)
    _, inst = run(fake, host=host)
    out = inst.output
    assert out["runState"] == "Canceled" and out["runSubState"] == "Queued"
    assert "waiting for a build slot" in out["message"]
    assert "prepare" not in host.names() and fake.cleanups == [], "nothing was made: no cleanup"
    assert fake.slot_calls[-1] == "release" and fake.slot_calls.count("release") == 1
    assert out["buildSlot"]["held"] is False
    assert [s["run_state"] for s in fake.statuses][-2:] == ["Canceling", "Canceled"]


def test_a_phase_status_its_first_activity_could_not_write_is_carried_by_the_next() -> None:
    fake = FakeBuild(carried_status_fails=1)
    host, inst = run(fake)
    assert inst.output["runState"] == "Succeeded"
    names = phase_names(host)
    # prepare carried Building and could not write it: create_env carries it again
    assert names[:4] == ["status:Running/Building", "prepare", "status:Running/Building", "create_env"]
    assert names[4:7] == ["status:Running/Customizing", "customize[0]", "customize[1]"]
    subs = [s["run_sub_state"] for s in fake.statuses]
    assert subs[:3] == ["Building", "Customizing", "Validating"]


def test_an_acquire_that_wrote_building_itself_is_not_followed_by_a_second_building() -> None:
    """Orchestrations started before Building rode on prepare sent `onGrant`: their granting acquire
    answers statusWritten (replayed from their history), and prepare then carries no status."""
    fake = FakeBuild()
    acquire = fake.acquire_build_slot

    def old_acquire(p: dict) -> dict:
        answer = acquire(p)
        fake.statuses.append(
            {"run_state": "Running", "run_sub_state": "Building", "message": "m", "error": None}
        )
        return {**answer, "statusWritten": True}

    fake.acquire_build_slot = old_acquire  # type: ignore[method-assign]
    host, inst = run(fake)
    assert inst.output["runState"] == "Succeeded"
    assert phase_names(host)[:3] == ["prepare", "create_env", "status:Running/Customizing"]
    assert [s["run_sub_state"] for s in fake.statuses][:2] == ["Building", "Customizing"]
    assert "Building" in inst.output["phases"]


def test_waiters_that_could_be_next_ask_often_and_the_rest_back_off() -> None:
    from orchestrators.build_image import slot_poll_seconds

    assert slot_poll_seconds(1, 2, 7) == 1.0  # then it waits inside the activity
    assert slot_poll_seconds(2, 2, 0) == 2.0 and slot_poll_seconds(2, 2, 9) == 5.0  # within the limit
    assert slot_poll_seconds(3, 2, 0) == 2.0 and slot_poll_seconds(6, 2, 0) == 8.0
    assert slot_poll_seconds(3, 2, 2) == 4.5 and slot_poll_seconds(3, 2, 50) == 30.0


def test_a_run_output_its_distribute_could_not_write_goes_through_run_status() -> None:
    written = FakeBuild()
    run(written)
    fake = FakeBuild(output_writes_fail=True)
    host, inst = run(fake)
    assert inst.output["runState"] == "Succeeded" and fake.outputs_by_distribute == []
    children = sorted(
        c.instance_id for c in host.calls if c.name == "run_status" and c.instance_id != "run-1"
    )
    assert children == ["run-1:distribute:0", "run-1:distribute:1", "run-1:distribute:2"]
    assert fake.outputs == written.outputs, "the same records either way"


def test_each_step_leaves_its_end_line_to_the_next_activity_and_the_log_tells_the_story() -> None:
    """A step's end line rides on the next activity's first write (cleanup's on the final status write);
    capture, followed by the distribute children, and each region's distribute write their own."""
    fake = FakeBuild()
    host, _ = run(fake)
    parent = [c for c in host.calls if c.instance_id == "run-1"]
    deferred = [c.name for c in parent if c.payload.get("deferEnd")]
    assert deferred == [
        "prepare",
        "create_env",
        "customize",
        "customize",
        "validate",
        "generalize",
        "cleanup",
    ]
    story = "".join(text for who, text in fake.log_lines if who != "distribute")
    steps = [
        "prepare (source and artifacts)",
        "create build environment",
        "customize[0] (File: page)",
        "customize[1] (Shell: setup)",
        "validate.inVMValidations",
        "generalize",
        "capture",
        "cleanup",
    ]
    assert story == "".join(f"==> {s}: started\n==> {s}: done in 1.0s\n" for s in steps)
    assert [who for who, _ in fake.log_lines if who != "distribute"] == ["capture", "run_status"]
    final = [c.payload for c in parent if c.name == "run_status"][-1]
    assert final["run_state"] == "Succeeded" and final["log"].startswith("==> cleanup: started")


def test_an_interrupted_steps_end_line_goes_out_with_the_second_cleanup() -> None:
    """After a cancel the interrupted step may still write to the log: the first cleanup writes its own
    end line; the step's own, answered once it ended, goes out with the second sweep."""
    fake, inst = _cancelled_during_a_long_first_step()
    assert inst.output["runState"] == "Canceled" and fake.cleanups == [False, False]
    assert [who for who, _ in fake.log_lines] == ["cleanup", "cleanup"]
    story = "".join(text for _, text in fake.log_lines)
    for step in ("prepare (source and artifacts)", "create build environment", "customize[0] (File: page)"):
        assert story.count(f"==> {step}: done in 1.0s\n") == 1, story
    assert story.count("==> cleanup: done in 1.0s\n") == 2
