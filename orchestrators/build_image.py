"""The `build_image` orchestration: one run of one template, phase by phase, with cleanup on every path.

Queued (waiting for one of the app's build slots, IMAGEBUILDER_MAX_CONCURRENT_BUILDS: the
`acquire_build_slot` activity is called on durable timers with backoff until it grants one, first come
first served) → Building (prepare, create_env) → Customizing (one activity per customizer) → Optimizing
(only when the template asks) → Validating (inVMValidations) → Distributing (generalize, capture, then
one `distribute_image` sub-orchestration per distribute target). Every phase change and the end are
reported as custom status and persisted: the end and a Queued wait through the `run_status` activity,
every phase by its first activity alongside its work (`status` in its input: Building by `prepare`).
Each step is raced against the `buildTimeoutInMinutes` durable timer (time spent Queued does not count)
and the external event `cancel` (also while Queued; one that arrives while the final cleanup runs still
ends the run Canceled); whichever way the run ends,
`cleanup` runs (once the run held a slot), the end is recorded, and then `release_build_slot` gives the
slot (or the place in the queue) back. Pure: no I/O, no clock (only `context.current_utc_datetime`),
JSON across the boundary.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from datetime import datetime, timedelta
from typing import Any

import azure.durable_functions as df

from imagebuilder.pipeline import naming
from imagebuilder.pipeline import plan as p
from imagebuilder.pipeline.messages import (
    BuildEnv,
    BuildInput,
    CaptureResult,
    CleanupReport,
    ErrorInfo,
    Pending,
    PrepareResult,
    StepResult,
)

bp = df.Blueprint()

# Transient failures (a raised TransientProviderError, a lost storage connection) are retried by the
# host; permanent ones come back as `Outcome(kind="failed")` and are never retried.
RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=5_000, max_number_of_attempts=3)
# After a cancel or a timeout, how long to let the interrupted step notice that cleanup removed its
# environment before the run is declared over (the step cannot be stopped from here).
SETTLE_GRACE = timedelta(minutes=2)
# While Queued: the first in line asks again after 1 s, and that acquire waits inside the activity up to
# SLOT_WAIT_SECONDS for its slot (activities/build_slots.py: a slot changes hands in a fraction of a
# second; only the first in line does, so waiting holds at most one of the host's activity slots); the
# others within the limit ask every 2 s growing to 5 s, those further back 2 s per place beyond the
# limit, growing 1.5x per unchanged answer, up to 30 s, so a long queue costs little history.
SLOT_WAIT_SECONDS = 10
STEP_QUEUE = "waiting for a build slot"
BUILDING_MESSAGE = "resolving the source and fetching artifacts"


def slot_poll_seconds(position: int, limit: int, unchanged: int) -> float:
    """Seconds until a waiter at `position` (1 = next in line) asks again, after `unchanged` answers
    that did not move it."""
    growth = 1.5 ** min(unchanged, 10)
    if position <= 1:
        return 1.0
    if position <= limit:
        return round(min(5.0, 2.0 * growth), 3)
    return round(min(30.0, 2.0 * (position - limit) * growth), 3)


def slot_message(grant: dict[str, Any]) -> str:
    """The run's message while it waits: why, and where it stands."""
    ahead = int(grant.get("position") or 1) - 1
    return (
        f"waiting for a build slot: {grant.get('inUse')} of {grant.get('limit')} in use "
        f"(IMAGEBUILDER_MAX_CONCURRENT_BUILDS); {ahead} run(s) ahead in the queue"
    )


Gen = Generator[Any, Any, Any]


class Interrupted(Exception):
    """The deadline timer or the `cancel` event won the race against a step (orchestrator-internal)."""

    def __init__(self, reason: str, step: str, inflight: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.step = step
        self.inflight = inflight


class StepFailed(Exception):
    """A phase returned a permanent failure (orchestrator-internal)."""

    def __init__(self, error: ErrorInfo, *, keep: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.keep = keep


def load_input(raw: Any) -> dict[str, Any]:
    """Orchestration inputs arrive as a dict, or as JSON text when a client encoded them twice."""
    if isinstance(raw, str):
        raw = json.loads(raw)
    if not isinstance(raw, dict):
        raise ValueError(f"orchestration input must be a JSON object, got {type(raw).__name__}")
    return raw


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Steps:
    """Calling phase activities from an orchestration: retries, Pending polling, racing, work time."""

    def __init__(self, context: df.DurableOrchestrationContext, build_json: dict[str, Any]) -> None:
        self.ctx = context
        self.build_json = build_json
        self.race_with: list[Any] = []  # tasks that interrupt a step when they finish first
        self.race_names: dict[int, str] = {}
        self.step = ""
        self.work_seconds = 0.0
        # a phase's status for the phase's first activity to persist alongside its work (see BuildRun.phase)
        self.carry: dict[str, Any] | None = None
        # end lines steps left unwritten (`deferEnd`), for the next activity to write first
        self.log_lines = ""

    def wait(self, task: Any, *, race: bool = True) -> Gen:
        """Yield `task`, raced against the interrupting tasks; return its value or raise its error."""
        if not race or not self.race_with:
            result = yield task
            return result
        for interrupter in self.race_with:  # fired while we were not racing: do not start the step
            if interrupter.is_completed:
                raise Interrupted(self.race_names.get(id(interrupter), "interrupted"), self.step, None)
        winner = yield self.ctx.task_any([task, *self.race_with])
        if winner is task:
            if isinstance(task.result, Exception):
                raise task.result
            return task.result
        raise Interrupted(self.race_names.get(id(winner), "interrupted"), self.step, task)

    def attempt(self, activity: str, payload: dict[str, Any], *, race: bool) -> Gen:
        """One activity call with the host's retries; what still raises after them is a StepFailed."""
        try:
            raw = yield from self.wait(self.ctx.call_activity_with_retry(activity, RETRY, payload), race=race)
        except (Interrupted, StepFailed):
            raise
        except Exception as exc:
            attempts = RETRY.max_number_of_attempts
            raise StepFailed(p.error_from_exception(str(exc), step=self.step, attempts=attempts)) from None
        outcome = p.Outcome.model_validate(raw)
        self.work_seconds += outcome.seconds
        if outcome.log:
            self.log_lines += outcome.log
        return outcome

    def call(
        self, activity: str, args: dict[str, Any], *, step: str, race: bool = True, defer_end: bool = False
    ) -> Gen:
        """Run one phase activity to its final value (polling `Pending` with durable timers).
        A permanent failure, or a transient one that outlasted the retries, raises `StepFailed`.
        `defer_end`: the step answers its end line instead of writing it (see `log_lines`); lines
        earlier steps left are handed to this one (written first: with its first write, or answered
        back with its own end line), also when it fails or is interrupted (it still runs)."""
        self.step = step
        payload = {"build": self.build_json, "step": step, **args}
        if defer_end:
            payload["deferEnd"] = True
        if self.log_lines:
            payload["log"], self.log_lines = self.log_lines, ""
        carried = self.carry
        if carried is not None:
            payload["status"] = carried
        outcome = yield from self.attempt(activity, payload, race=race)
        if carried is not None and outcome.status_error is None and self.carry is carried:
            self.carry = None  # persisted; else the next activity (or run_status) carries it again
        while outcome.kind == "pending":
            pending = Pending.model_validate(outcome.value)
            fire_at = self.ctx.current_utc_datetime + timedelta(seconds=max(1, pending.retry_after_seconds))
            yield from self.wait(self.ctx.create_timer(fire_at), race=race)
            poll = {"build": self.build_json, "step": step, "pending": outcome.value}
            outcome = yield from self.attempt(naming.ACTIVITY_POLL, poll, race=race)
        if outcome.kind == "failed":
            raise StepFailed(outcome.error or ErrorInfo(code="StepFailed", message="failed", step=step))
        return outcome.value


class BuildRun:
    """The state of one `build_image` execution, rebuilt identically on every replay."""

    def __init__(self, context: df.DurableOrchestrationContext) -> None:
        self.ctx = context
        self.build = BuildInput.model_validate(load_input(context.get_input()))
        self.build_json = self.build.model_dump(mode="json")
        self.plan = p.BuildPlan.from_template(self.build.template)
        self.started = context.current_utc_datetime
        self.steps = Steps(context, self.build_json)
        self.deadline: Any = None
        self.timeout_scale = 1.0
        self.run_state = p.RUNNING
        self.sub_state = p.QUEUED
        self.message = "queued"
        self.phases: dict[str, dict[str, Any]] = {}
        self._phase_work_start = 0.0
        self.outputs: list[dict[str, Any]] = []
        self.step_reports: list[dict[str, Any]] = []
        self.cancel: Any = None
        self.slot_requested = False  # an acquire was sent: the pool may list us, release on every path
        self.slot_held = False
        self.queued_for = timedelta(0)
        self.slot: dict[str, Any] = {}  # the grant: limit, ticket (arrival number), grant number, polls
        self._acquire_task: Any = None
        # the answer of the acquire that granted the slot (timeoutScale; statusWritten: it wrote Building,
        # as acquires did for orchestrations started before Building rode on prepare)
        self.grant: dict[str, Any] = {}

    # ---- status -----------------------------------------------------------------------------------
    def custom_status(self, **extra: Any) -> dict[str, Any]:
        return {
            "runState": self.run_state,
            "runSubState": self.sub_state,
            "message": self.message,
            "startTime": iso(self.started),
            "step": self.steps.step or None,
            **extra,
        }

    def _close_phase(self) -> None:
        now = self.ctx.current_utc_datetime
        current = self.phases.get(self.sub_state)
        if current is not None and "end" not in current:
            current["end"] = iso(now)
            current["seconds"] = round((now - self.ctx_time(current["start"])).total_seconds(), 3)
            current["workSeconds"] = round(self.steps.work_seconds - self._phase_work_start, 3)

    def ctx_time(self, stamp: str) -> datetime:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=self.started.tzinfo)

    def phase(self, sub_state: str, message: str, *, carried: bool = True) -> Gen:
        """Enter a phase: custom status at once, then persisted by the phase's first activity alongside
        its work (`status` in its input: one activity transition less per phase change), or through
        `run_status` (carried=False; returns its answer). A carried status no activity took is persisted
        through `run_status` before the next phase."""
        self._close_phase()
        if self.steps.carry is not None:
            yield from self.persist()
        self.sub_state, self.message = sub_state, message
        self.phases[sub_state] = {"start": iso(self.ctx.current_utc_datetime)}
        self._phase_work_start = self.steps.work_seconds
        if carried:
            self.ctx.set_custom_status(self.custom_status())
            self.steps.carry = self.status_update().model_dump(mode="json")
            return None
        ack = yield from self.persist()
        return ack

    def arm(self, scale: float) -> None:
        """Start racing every step against the build timeout (from the orchestration's start, plus the
        time it waited Queued for a build slot) and the `cancel` event. `scale` is the host's test knob
        (1.0 unless set; see activities/run_status)."""
        self.timeout_scale = scale
        budget = timedelta(minutes=self.plan.timeout_minutes) * scale
        self.deadline = self.ctx.create_timer(self.started + self.queued_for + budget)
        cancel = self.cancel_event()
        self.steps.race_with = [self.deadline, cancel]
        self.steps.race_names = {id(self.deadline): "timeout", id(cancel): "cancel"}

    def cancel_event(self) -> Any:
        """The one task waiting for the `cancel` event (made once: raced while Queued and after)."""
        if self.cancel is None:
            self.cancel = self.ctx.wait_for_external_event(naming.CANCEL_EVENT)
        return self.cancel

    def wait_for_slot(self) -> Gen:
        """Stay Queued until the pool grants a build slot, raced against `cancel` only (the build timeout
        starts once the slot is held). The message says why it waits and where it stands; it is persisted
        only when that changes."""
        ctx, steps = self.ctx, self.steps
        cancel = self.cancel_event()
        steps.race_with = [cancel]
        steps.race_names = {id(cancel): "cancel"}
        steps.step = STEP_QUEUE
        queued_at = ctx.current_utc_datetime
        self.phases[p.QUEUED] = {"start": iso(queued_at)}
        # the grant answers the host's timeoutScale: Building then rides on prepare (no run_status call)
        payload: dict[str, Any] = {"build": self.build_json, "holder": ctx.instance_id, "waitSeconds": 0}
        where: tuple[Any, ...] | None = None
        unchanged = 0
        polls = 0
        while True:
            self.slot_requested = True
            self._acquire_task = ctx.call_activity_with_retry(naming.ACTIVITY_ACQUIRE_SLOT, RETRY, payload)
            grant = yield from steps.wait(self._acquire_task)
            polls += 1
            if grant.get("granted"):
                self.slot_held = True
                if polls > 1 or payload["waitSeconds"]:
                    self.queued_for = ctx.current_utc_datetime - queued_at
                self.slot = {k: grant.get(k) for k in ("limit", "ticket", "grant")} | {"polls": polls}
                self.grant = {k: grant[k] for k in ("timeoutScale", "statusWritten") if k in grant}
                return
            now = (grant.get("position"), grant.get("inUse"), grant.get("limit"))
            if now != where:
                where, unchanged = now, 0
                self.message = slot_message(grant)
                slot = {k: grant.get(k) for k in ("position", "inUse", "limit", "waiting")}
                yield from self.persist(details={"buildSlot": {**slot, "since": iso(queued_at)}})
            else:
                unchanged += 1
            position, limit = int(grant.get("position") or 1), int(grant.get("limit") or 1)
            # next in line: the next acquire waits for the slot inside the activity
            payload = {**payload, "waitSeconds": SLOT_WAIT_SECONDS if position <= 1 else 0}
            delay = slot_poll_seconds(position, limit, unchanged)
            yield from steps.wait(ctx.create_timer(ctx.current_utc_datetime + timedelta(seconds=delay)))

    def settle_acquire(self, interrupted: Interrupted) -> Gen:
        """A cancel that interrupted an acquire in flight: let it finish first (bounded), so it cannot
        grant a slot after the release, and so a Building status it wrote (acquires of orchestrations
        started before Building rode on prepare did) is what the run ends with (a sub-state never goes
        back). If it still grants later, the run is terminal by then
        and the next acquire reclaims the slot."""
        inflight = self._acquire_task
        if inflight is None or interrupted.inflight is not inflight:
            return
        if not inflight.is_completed:
            grace = self.ctx.create_timer(self.ctx.current_utc_datetime + timedelta(minutes=1))
            yield self.ctx.task_any([inflight, grace])
            if not grace.is_completed:
                grace.cancel()
        answer = inflight.result if inflight.is_completed else None
        if isinstance(answer, dict) and answer.get("granted") and answer.get("statusWritten"):
            self._close_phase()
            self.sub_state = p.BUILDING
            self.phases[p.BUILDING] = {"start": iso(self.ctx.current_utc_datetime)}

    def release_slot(self) -> Gen:
        """Give the slot (or the place in the queue) back; a failure is reported, not raised (the run is
        terminal by then, so the next acquire reclaims the slot anyway)."""
        if not self.slot_requested:
            return None
        payload = {"build": self.build_json, "holder": self.ctx.instance_id}
        try:
            yield self.ctx.call_activity_with_retry(naming.ACTIVITY_RELEASE_SLOT, RETRY, payload)
        except Exception as exc:  # storage gone for good: the terminal run makes the entry stale
            return f"releasing the build slot failed ({exc}); it is reclaimed once this run is terminal"
        return None

    def status_update(
        self, error: ErrorInfo | None = None, details: dict[str, Any] | None = None
    ) -> p.StatusUpdate:
        return p.StatusUpdate(
            run_state=self.run_state,
            run_sub_state=self.sub_state,
            message=self.message,
            error=error,
            details=details or {},
        )

    def persist(self, *, error: ErrorInfo | None = None, details: dict[str, Any] | None = None) -> Gen:
        self.ctx.set_custom_status(self.custom_status())
        self.steps.carry = None  # this write supersedes a carried status
        update = self.status_update(error, details)
        payload = {"build": self.build_json, **update.model_dump(mode="json")}
        lines = self.steps.log_lines
        if lines:  # a step's end line it left to this write (appended before the status is)
            payload["log"] = lines
        ack = yield self.ctx.call_activity_with_retry(naming.ACTIVITY_RUN_STATUS, RETRY, payload)
        if lines:
            self.steps.log_lines = ""
        return ack

    # ---- the phases -------------------------------------------------------------------------------
    def work(self) -> Gen:
        """Everything up to the end of distribution. Returns the validation error that
        continueDistributeOnFailure let through, if any."""
        plan, steps = self.plan, self.steps
        ack: Any = self.grant
        if self.grant.get("statusWritten"):  # written by the acquire that granted the slot (earlier runs)
            self._close_phase()
            self.sub_state, self.message = p.BUILDING, BUILDING_MESSAGE
            self.phases[p.BUILDING] = {"start": iso(self.ctx.current_utc_datetime)}
            self._phase_work_start = self.steps.work_seconds
            self.ctx.set_custom_status(self.custom_status())
        elif "timeoutScale" in self.grant:
            yield from self.phase(p.BUILDING, BUILDING_MESSAGE)  # persisted by prepare alongside its work
        else:
            ack = yield from self.phase(p.BUILDING, BUILDING_MESSAGE, carried=False)
        scale = ack.get("timeoutScale") if isinstance(ack, dict) else None
        self.arm(float(scale) if isinstance(scale, int | float) and scale > 0 else 1.0)
        prepared = PrepareResult.model_validate(
            (yield from steps.call(naming.ACTIVITY_PREPARE, {}, step=naming.STEP_PREPARE, defer_end=True))
        )
        if prepared.status != "succeeded":
            raise StepFailed(prepared.error or ErrorInfo(code="PrepareFailed", message="prepare failed"))
        self.message = "creating the build environment"
        env = BuildEnv.model_validate(
            (
                yield from steps.call(
                    naming.ACTIVITY_CREATE_ENV,
                    {"prepared": prepared.model_dump(mode="json")},
                    step=naming.STEP_CREATE_ENV,
                    defer_end=True,
                )
            )
        )
        env_json = env.model_dump(mode="json")

        if plan.source_validation_only:
            yield from self.phase(p.VALIDATING, "validating the source image (sourceValidationOnly)")
            result = yield from self.validate(env_json)
            if result.status == "failed":
                raise StepFailed(self.step_error(result, naming.STEP_VALIDATE), keep=self.keep_on_validation)
            return None

        if plan.customizers:
            yield from self.phase(p.CUSTOMIZING, f"running {len(plan.customizers)} customizer(s)")
        for c in plan.customizers:
            self.message = f"running {c.step}"
            result = StepResult.model_validate(
                (
                    yield from steps.call(
                        naming.ACTIVITY_CUSTOMIZE,
                        {"env": env_json, "index": c.index},
                        step=c.step,
                        defer_end=True,
                    )
                )
            )
            self.step_reports.append(step_report(c.step, result))
            if result.status == "failed":
                raise StepFailed(self.step_error(result, c.step), keep=plan.on_customizer_error == "abort")

        if (self.build.template.get("properties") or {}).get("optimize"):
            yield from self.phase(p.OPTIMIZING, p.optimize_message(self.build.template))

        validation_error: ErrorInfo | None = None
        if plan.has_validations:
            yield from self.phase(p.VALIDATING, "running inVMValidations")
            result = yield from self.validate(env_json)
            if result.status == "failed":
                validation_error = self.step_error(result, naming.STEP_VALIDATE)
                if not plan.continue_distribute_on_failure:
                    raise StepFailed(validation_error, keep=self.keep_on_validation)

        yield from self.phase(p.DISTRIBUTING, "generalizing the build environment")
        generalized = yield from steps.call(
            naming.ACTIVITY_GENERALIZE, {"env": env_json}, step=naming.STEP_GENERALIZE, defer_end=True
        )
        gen = StepResult.model_validate(generalized)
        if gen.status == "failed":
            raise StepFailed(self.step_error(gen, naming.STEP_GENERALIZE))
        self.message = "capturing the image"
        captured = CaptureResult.model_validate(
            (yield from steps.call(naming.ACTIVITY_CAPTURE, {"env": env_json}, step=naming.STEP_CAPTURE))
        )
        if captured.status != "succeeded":
            raise StepFailed(
                captured.error or ErrorInfo(code="CaptureFailed", message="capture failed", step="capture")
            )
        if plan.targets:
            self.message = f"distributing to {len(plan.targets)} target(s)"
            self.ctx.set_custom_status(self.custom_status())
            children = [
                self.ctx.call_sub_orchestrator(
                    naming.DISTRIBUTE_ORCHESTRATION,
                    {
                        "build": self.build_json,
                        "captured": captured.model_dump(mode="json"),
                        "target_index": t.index,
                    },
                    naming.distribute_instance_id(self.ctx.instance_id, t.index),
                )
                for t in plan.targets
            ]
            steps.step = "distribute"
            self.outputs = list((yield from steps.wait(self.ctx.task_all(children))))
            # targets distribute in parallel: their work on the critical path is the longest one
            steps.work_seconds += max((float(o.get("workSeconds") or 0) for o in self.outputs), default=0.0)
        return validation_error

    @property
    def keep_on_validation(self) -> bool:
        return self.plan.on_validation_error == "abort"

    def validate(self, env_json: dict[str, Any]) -> Gen:
        value = yield from self.steps.call(
            naming.ACTIVITY_VALIDATE, {"env": env_json}, step=naming.STEP_VALIDATE, defer_end=True
        )
        return StepResult.model_validate(value)

    @staticmethod
    def step_error(result: StepResult, step: str) -> ErrorInfo:
        if result.error is not None:
            return result.error if result.error.step else result.error.model_copy(update={"step": step})
        return ErrorInfo(code="StepFailed", message=f"{step} failed", step=step, exit_code=result.exit_code)

    def cleanup(self, keep: bool, *, last: bool = False) -> Gen:
        """Cleanup is never raced: it runs to the end on every path. When nothing else can write to the
        run's log after it (`last`: no interrupted step still running), its end line rides on the run's
        final status write (`deferEnd`), one log append less."""
        raw = yield from self.steps.call(
            naming.ACTIVITY_CLEANUP, {"keep": keep}, step=naming.STEP_CLEANUP, race=False, defer_end=last
        )
        return CleanupReport.model_validate(raw)

    # ---- the whole run ----------------------------------------------------------------------------
    def run(self) -> Gen:
        failure: ErrorInfo | None = None
        validation_error: ErrorInfo | None = None
        interrupted: Interrupted | None = None
        keep = False
        try:
            yield from self.wait_for_slot()
            validation_error = yield from self.work()
            keep = validation_error is not None and self.keep_on_validation
        except Interrupted as exc:
            interrupted = exc
        except StepFailed as exc:
            failure, keep = exc.error, exc.keep
        except Exception as exc:  # an activity that still raised after its retries, or a bad result
            failure = p.error_from_exception(str(exc), step=self.steps.step or "orchestration")
        if interrupted is not None and not self.slot_held:
            yield from self.settle_acquire(interrupted)
        if interrupted is not None and interrupted.reason == "cancel":
            self.run_state, self.message = p.CANCELING, f"canceling during {interrupted.step}: cleaning up"
            yield from self.persist()

        self.message = "cleaning up" if not keep else "cleaning up (keeping the build environment: abort)"
        self.ctx.set_custom_status(self.custom_status())
        cleanup_error: str | None = None
        report = CleanupReport()
        if self.slot_held:  # before that nothing was made: nothing to clean up
            try:
                report = yield from self.cleanup(keep, last=interrupted is None)
            except StepFailed as exc:
                cleanup_error = exc.error.message
            except Exception as exc:
                cleanup_error = str(exc).strip().splitlines()[0] if str(exc).strip() else "cleanup failed"
            if interrupted is not None:
                yield from self.settle(interrupted, keep)
        self._close_phase()
        if interrupted is None and failure is None and self.cancel is not None and self.cancel.is_completed:
            # A cancel accepted (202) while the run was ending: its work was done and cleanup is never
            # raced, but the request stands and the run ends Canceled, not Succeeded.
            interrupted = Interrupted("cancel", self.steps.step or naming.STEP_CLEANUP, None)

        state, message = self.conclude(failure, validation_error, interrupted, report)
        if cleanup_error or report.errors:
            problems = [*report.errors, *([cleanup_error] if cleanup_error else [])]
            message += "\ncleanup problems: " + "; ".join(problems)
        self.run_state, self.message = state, message
        details: dict[str, Any] = {
            "phases": self.phases,
            "workSeconds": round(self.steps.work_seconds, 3),
            "cleanup": report.model_dump(mode="json"),
            "outputs": self.outputs,
            "steps": self.step_reports,
            "endTime": iso(self.ctx.current_utc_datetime),
        }
        if self.slot_requested:
            details["buildSlot"] = {
                "held": self.slot_held,
                **self.slot,
                "queuedSeconds": round(self.queued_for.total_seconds(), 3),
            }
        if self.deadline is not None and not self.deadline.is_completed:
            self.deadline.cancel()
        yield from self.persist(error=failure or validation_error, details=details)
        # released after the run is recorded as over, so the API never shows more runs past Queued
        # than there are slots (the next run's Building comes after this run's end)
        release_error = yield from self.release_slot()
        if release_error:
            details["buildSlot"]["releaseError"] = release_error
        return {**self.custom_status(), **details, "error": _dump(failure or validation_error)}

    def settle(self, interrupted: Interrupted, keep: bool) -> Gen:
        """After cleanup removed the environment under it, let the interrupted step finish (bounded),
        then sweep once more in case it made something after the first cleanup. The end line it left
        unwritten (`deferEnd`) goes to the run's log with that second cleanup."""
        inflight = interrupted.inflight
        if inflight is None:
            return
        if not inflight.is_completed:
            grace = self.ctx.create_timer(self.ctx.current_utc_datetime + SETTLE_GRACE)
            yield self.ctx.task_any([inflight, grace])
            if not grace.is_completed:
                grace.cancel()
        if inflight.is_completed:
            raw = inflight.result
            if isinstance(raw, dict) and isinstance(raw.get("log"), str):
                self.steps.log_lines += raw["log"]
            try:
                yield from self.cleanup(keep)
            except Exception as exc:  # the first cleanup's report stands
                self.message = f"second cleanup after the interrupted step failed: {exc}"

    def conclude(
        self,
        failure: ErrorInfo | None,
        validation_error: ErrorInfo | None,
        interrupted: Interrupted | None,
        report: CleanupReport,
    ) -> tuple[str, str]:
        if interrupted is not None:
            if interrupted.reason == "cancel":
                delivered = ", ".join(f"{o['runOutputName']}: {o['status']}" for o in self.outputs)
                return p.CANCELED, f"canceled by request during {interrupted.step} ({self.sub_state})" + (
                    f"; delivered before the cancel: {delivered}" if delivered else ""
                )
            scaled = "" if self.timeout_scale == 1.0 else f", scaled by {self.timeout_scale:g} by the host"
            return p.FAILED, (
                f"build timed out after {self.plan.timeout_minutes} minute(s) (buildTimeoutInMinutes"
                f"{scaled}) during {interrupted.step} ({self.sub_state})"
            )
        if failure is not None:
            return p.FAILED, p.failure_message(failure, kept=report.kept)
        if validation_error is not None:
            delivered = ", ".join(f"{o['runOutputName']}: {o['status']}" for o in self.outputs)
            return p.FAILED, (
                p.failure_message(validation_error, kept=report.kept)
                + f"\ndistributed anyway (continueDistributeOnFailure): {delivered or 'nothing'}"
            )
        if self.plan.source_validation_only:
            return (
                p.SUCCEEDED,
                "source image validated; nothing is built or distributed (sourceValidationOnly)",
            )
        if not self.outputs:
            return p.SUCCEEDED, "built and captured; the template has no distribute targets"
        state = p.final_run_state(self.outputs)
        lines = []
        for o in self.outputs:
            line = f"{o['runOutputName']}: {o['status']}"
            failed = [r for r in o.get("regions", []) if r.get("status") != "succeeded"]
            if failed:
                line += (
                    " (failed in "
                    + ", ".join(
                        f"{r.get('region')}: {(r.get('error') or {}).get('message', 'failed')}"
                        for r in failed
                    )
                    + ")"
                )
            lines.append(line)
        return state, "; ".join(lines)


def step_report(name: str, result: StepResult) -> dict[str, Any]:
    """One customize step as the run record lists it (`details.steps`): its outcome, its seconds and,
    from providers with a step cache, `cache` = {"id", "hit", "seconds"} (hit: reused, not run)."""
    report: dict[str, Any] = {
        "name": name,
        "status": result.status,
        "seconds": round(result.duration_seconds, 3),
    }
    cache = result.details.get("cache")
    if isinstance(cache, dict):
        report["cache"] = cache
    return report


def _dump(error: ErrorInfo | None) -> dict[str, Any] | None:
    return None if error is None else error.model_dump(mode="json")


@bp.orchestration_trigger(context_name="context")
def build_image(context: df.DurableOrchestrationContext) -> Gen:
    """One run of one template. Input: BuildInput JSON. Output: the final lastRunStatus plus details."""
    result = yield from BuildRun(context).run()
    return result
