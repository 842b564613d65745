"""Fake phase activities for orchestrator unit tests (the only place a fake provider is allowed): each
returns the `Outcome` JSON a real activity would, driven by a few knobs per test."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from imagebuilder.pipeline import plan as pl
from imagebuilder.pipeline.messages import (
    BuildEnv,
    CaptureResult,
    CleanupReport,
    ErrorInfo,
    Pending,
    PrepareResult,
    ReplicationResult,
    SourceInfo,
    StepResult,
)
from imagebuilder.pipeline.plan import Outcome
from tests.orchestrators.replay_host import Hang

_HANDLES: dict[str, Any] = {}


def handles() -> dict[str, Any]:
    """The registered orchestrator handles, indexed once like the worker does."""
    if not _HANDLES:
        from orchestrators import build_image, distribute_image

        app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
        app.register_functions(build_image.bp)
        app.register_functions(distribute_image.bp)
        for fn in app.get_functions():
            _HANDLES[fn.get_function_name()] = fn.get_user_function()
    return _HANDLES


def template(**props: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "location": "westeurope",
        "properties": {
            "source": {
                "type": "PlatformImage",
                "publisher": "Local",
                "offer": "busybox",
                "sku": "1",
                "version": "latest",
            },
            "customize": [
                {
                    "type": "File",
                    "name": "page",
                    "sourceUri": "file:///x/index.html",
                    "destination": "/srv/index.html",
                },
                {"type": "Shell", "name": "setup", "inline": ["echo hi"]},
            ],
            "validate": {
                "inVMValidations": [{"type": "Shell", "name": "check", "inline": ["test -f /srv/index.html"]}]
            },
            "distribute": [
                {
                    "type": "ManagedImage",
                    "runOutputName": "managed",
                    "imageId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/img",
                    "location": "westeurope",
                },
                {
                    "type": "SharedImage",
                    "runOutputName": "gallery",
                    "galleryImageId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/def",
                    "targetRegions": [{"name": "westeurope"}, {"name": "northeurope"}],
                },
                {"type": "VHD", "runOutputName": "vhd"},
            ],
        },
    }
    base["properties"].update(props)
    return base


def build_input(**props: Any) -> dict[str, Any]:
    return {
        "run": {"subscription_id": "sub", "resource_group": "rg", "template_name": "tpl", "run_id": "r1"},
        "template": template(**props),
    }


def done(model: Any, seconds: float = 1.0) -> dict[str, Any]:
    return Outcome(kind="done", value=model.model_dump(mode="json"), seconds=seconds).model_dump(mode="json")


@dataclass
class FakeBuild:
    """Knobs: which customizer fails or hangs, which region fails, transient failures, pending ops."""

    fail_customizer: int | None = None
    hang_customizer: int | None = None
    transient_customizer: dict[int, int] = field(default_factory=dict)  # index -> failures before success
    fail_regions: set[str] = field(default_factory=set)
    fail_validation: bool = False
    fail_prepare: bool = False
    pending_capture: int = 0  # how many Pending answers before the capture result
    statuses: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    cleanups: list[bool] = field(default_factory=list)
    timeout_scale: float | None = None
    queued_polls: int = 0  # how many acquire_build_slot answers say "wait" before the grant
    carried_status_fails: int = 0  # how many carried status writes fail (the activity says why)
    slot_calls: list[str] = field(default_factory=list)
    output_writes_fail: bool = False  # distribute cannot persist the run output it was asked to write
    outputs_by_distribute: list[str] = field(default_factory=list)
    log_lines: list[tuple[str, str]] = field(default_factory=list)  # (written by, text)

    def activities(self) -> dict[str, Any]:
        plain = {
            "prepare": self.prepare,
            "create_env": lambda p: done(BuildEnv(provider="fake", handle={"root": "/tmp/fake-root"})),
            "customize": self.customize,
            "validate": self.validate,
            "generalize": lambda p: done(StepResult(status="succeeded", step=p["step"])),
            "capture": self.capture,
            "distribute": self.distribute,
            "cleanup": self.cleanup,
            "run_status": self.run_status,
            "poll": self.poll,
            "acquire_build_slot": self.acquire_build_slot,
            "release_build_slot": self.release_build_slot,
        }
        own = ("run_status", "acquire_build_slot", "release_build_slot")
        return {name: fn if name in own else self.carrying(name, fn) for name, fn in plain.items()}

    def carrying(self, name: str, fn: Any) -> Any:
        """A phase activity that persists the run status it carries (`status`, a phase's first one) and
        writes the run's log as activities/_common does: the lines earlier steps left (`log`) and its
        started line first, its end line last, or answered instead of written (`deferEnd`)."""

        def call(p: dict[str, Any]) -> Any:
            if isinstance(p.get("status"), dict):
                if self.carried_status_fails > 0:  # the step runs; its status write did not happen
                    self.carried_status_fails -= 1
                    return self.logging(name, p, {**fn(p), "status_error": "ServiceRequestError: x"})
                self.run_status(p["status"])
            return self.logging(name, p, fn(p))

        return call

    def logging(self, name: str, p: dict[str, Any], out: Any) -> Any:
        head = f"{p.get('log') or ''}==> {p['step']}: started\n"
        kind = out.get("kind") if isinstance(out, dict) else None
        if kind not in ("done", "failed", "pending"):
            return out  # a hanging step: it writes once it ends
        end = f"==> {p['step']}: {kind} in 1.0s\n"
        if p.get("deferEnd") and kind != "pending":
            return {**out, "log": head + end}
        self.log_lines.append((name, head + end))
        return out

    def acquire_build_slot(self, p: dict[str, Any]) -> Any:
        self.slot_calls.append("acquire")
        if self.queued_polls > 0:
            self.queued_polls -= 1
            position = 1 + self.queued_polls // 2
            return {"granted": False, "position": position, "inUse": 2, "limit": 2, "waiting": position}
        grant = {"granted": True, "position": 0, "inUse": 1, "limit": 2, "waiting": 0, "reclaimed": []}
        grant |= {"ticket": 7, "grant": 5, "timeoutScale": self.timeout_scale}
        on_grant = p.get("onGrant")  # sent by orchestrations of an earlier version (activities/build_slots)
        if not isinstance(on_grant, dict):
            return grant
        self.statuses.append({k: on_grant.get(k) for k in ("run_state", "run_sub_state", "message", "error")})
        return {**grant, "statusWritten": True}

    def release_build_slot(self, p: dict[str, Any]) -> Any:
        self.slot_calls.append("release")
        return {"released": True}

    def prepare(self, p: dict[str, Any]) -> Any:
        if self.fail_prepare:
            err = ErrorInfo(
                code="ChecksumMismatch",
                message="sha256 of file:///x/index.html is aa, expected bb",
                step=p["step"],
            )
            return done(PrepareResult(status="failed", error=err))
        return done(
            PrepareResult(
                status="succeeded",
                source=SourceInfo(type="PlatformImage", id="Local:busybox:1:1.0.0", exact_version="1.0.0"),
            )
        )

    def customize(self, p: dict[str, Any]) -> Any:
        i = p["index"]
        if self.hang_customizer == i:
            return Hang()
        if self.transient_customizer.get(i, 0) > 0:
            self.transient_customizer[i] -= 1
            raise RuntimeError("TransientProviderError: sandbox busy")
        if self.fail_customizer == i:
            err = ErrorInfo(
                code="CustomizerFailed",
                message="script exited with 3",
                exit_code=3,
                log_tail=["installing", "E: Unable to locate package nope"],
                log_uri="http://127.0.0.1:10000/devstoreaccount1/logs/tpl/r1/customization.log",
            )
            return done(StepResult(status="failed", step=p["step"], exit_code=3, error=err))
        cache = {"id": f"{i:064x}", "hit": i == 0, "seconds": 0.1 if i == 0 else 2.0}
        result = StepResult(status="succeeded", step=p["step"], exit_code=0, details={"cache": cache})
        return done(result, seconds=2.0)

    def validate(self, p: dict[str, Any]) -> Any:
        if self.fail_validation:
            err = ErrorInfo(code="ValidationFailed", message="test -f failed", exit_code=1, step=p["step"])
            return done(StepResult(status="failed", step=p["step"], exit_code=1, error=err))
        return done(StepResult(status="succeeded", step=p["step"]))

    def capture(self, p: dict[str, Any]) -> Any:
        if self.pending_capture > 0:
            return Outcome(
                kind="pending",
                value=Pending(operation={"op": "capture"}, retry_after_seconds=30).model_dump(mode="json"),
            ).model_dump(mode="json")
        return done(CaptureResult(status="succeeded", image={"disk": "/tmp/fake.raw"}))

    def poll(self, p: dict[str, Any]) -> Any:
        self.pending_capture -= 1
        return self.capture(p)

    def distribute(self, p: dict[str, Any]) -> Any:
        target = p["target_index"]
        region = p["region"]
        name = ["managed", "gallery", "vhd"][target]
        if region in self.fail_regions and name == "gallery":
            err = ErrorInfo(code="ReplicationFailed", message=f"no space in {region}", step=p["step"])
            return done(ReplicationResult(run_output_name=name, region=region, status="failed", error=err))
        result = ReplicationResult(
            run_output_name=name,
            region=region,
            status="succeeded",
            artifact_id=f"/id/{name}/{region}",
            artifact_uri=f"file:///out/{name}",
        )
        if not p.get("writeOutput") or self.output_writes_fail:
            return done(result)
        # as activities/distribute: the run output made from this one region's result
        plan_target = pl.BuildPlan.from_template(p["build"]["template"]).targets[target]
        regions = [result.model_dump(mode="json")]
        self.outputs[name] = pl.run_output_record(plan_target, regions, pl.output_status(regions))
        self.outputs_by_distribute.append(name)
        return {**done(result), "output_written": True}

    def cleanup(self, p: dict[str, Any]) -> Any:
        self.cleanups.append(bool(p["keep"]))
        if p["keep"]:
            return done(CleanupReport(kept=["/var/lib/imagebuilder/builds/tpl-r1"]))
        return done(CleanupReport(removed=["/var/lib/imagebuilder/builds/tpl-r1"]))

    def run_status(self, p: dict[str, Any]) -> Any:
        if p.get("log"):
            self.log_lines.append(("run_status", p["log"]))
        if p.get("op") == "output":
            self.outputs[p["output_name"]] = p["output"]
        else:
            self.statuses.append(
                {k: p.get(k) for k in ("run_state", "run_sub_state", "message", "error", "details")}
            )
        return {"op": p.get("op"), "timeoutScale": self.timeout_scale}
