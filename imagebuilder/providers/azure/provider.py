"""`AzureProvider`: the ComputeProvider seam over ARM (a build VM in the user's subscription).

Every method is a re-entrant step function: it inspects what exists (names derive from the run), does the
next thing, and either finishes or returns `Pending` carrying everything `poll` needs to resume (the build
input, the method's arguments, small step state and the ARM operation URL). No call waits for an ARM
operation; `cleanup` alone waits, within a budget, and raises `TransientProviderError` past it.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential
from azure.core.pipeline.transport import HttpTransport

from imagebuilder.pipeline.messages import (
    BuildEnv,
    BuildInput,
    CaptureResult,
    CleanupReport,
    ErrorInfo,
    Pending,
    PrepareResult,
    ReplicationResult,
    RunRef,
    SourceInfo,
    StagedArtifact,
    StepResult,
    TemplateInput,
    TemplateRef,
    TemplateStaging,
)
from imagebuilder.providers.azure import scripts
from imagebuilder.providers.azure import staging as staging_group
from imagebuilder.providers.azure.clients import (
    TRANSIENT_CODES,
    ArmFailure,
    AzureClients,
    OperationStatus,
    Started,
    Throttled,
    WritePacer,
    as_json,
    make_credential,
    redact,
)
from imagebuilder.providers.azure.runlog import RunLogStore
from imagebuilder.providers.base import (
    ComputeProvider,
    LogSink,
    ProviderConfigError,
    TransientProviderError,
)

TAG_TEMPLATE = "imagebuilder-template"
TAG_RUN = "imagebuilder-run"
DEFAULT_VM_SIZE = {"V1": "Standard_D1_v2", "V2": "Standard_D2ds_v4"}
ADMIN_USER = "packer"
TERMINAL_RUN_STATES = frozenset({"Succeeded", "Failed", "TimedOut", "Canceled"})
MAX_WINDOWS_UPDATE_PASSES = 20
RUN_COMMAND_TAIL = 4096  # Run Command's instance view keeps this much of each stream (the last part)
_LOST = (
    "[output lost here: Run Command keeps only the last 4 KB; give the app a storage account "
    "(AzureWebJobsStorage__accountName) so output streams to append blobs]\n"
)
ANCHOR_CHARS = 256  # how much of the last logged output finds the new part of a sliding tail
RUN_COMMAND_MARGIN = 300  # seconds past a run command's timeoutInSeconds before it counts as lost
GENERALIZE_LAUNCH_SECONDS = 600  # the run command that starts deprovisioning only writes and starts it
DEFAULT_GENERALIZE_SECONDS = 3600  # from the start of deprovisioning to the VM's stopped power state

_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/(?P<ns>[^/]+)/(?P<rest>.+)$",
    re.IGNORECASE,
)


class _Wait(Exception):
    """Internal: the step cannot go on yet; `_drive` turns this into a `Pending`."""

    def __init__(self, op: dict[str, Any] | None, retry_after: int) -> None:
        super().__init__("pending")
        self.op = op
        self.retry_after = retry_after


@dataclass(frozen=True)
class ArmId:
    subscription: str
    resource_group: str
    namespace: str
    parts: tuple[str, ...]  # type, name, child type, child name, ...

    @classmethod
    def parse(cls, value: str, field: str) -> ArmId:
        match = _ID.match(value or "")
        if not match:
            raise ArmFailure(
                "InvalidResourceId",
                f"{field} is not an ARM resource id: {value!r} "
                "(expected /subscriptions/<id>/resourceGroups/<rg>/providers/<namespace>/<type>/<name>)",
            )
        rest = tuple(match.group("rest").split("/"))
        return cls(match.group("sub"), match.group("rg"), match.group("ns"), rest)

    def name(self, type_name: str) -> str:
        lowered = [p.lower() for p in self.parts]
        index = lowered.index(type_name.lower())
        return self.parts[index + 1]


@dataclass(frozen=True)
class Names:
    """Every transient name of one run (deterministic: a retry finds what the first attempt made)."""

    key: str
    resource_group: str
    resource_group_given: bool
    vm: str
    template_owned: bool  # the template's staging group (made at template create, kept across runs)
    computer: str
    nic: str
    nsg: str
    vnet: str
    os_disk: str
    image: str

    @classmethod
    def of(cls, build: BuildInput) -> Names:
        run = build.run
        key = hashlib.sha256(f"{run.template_id.lower()}|{run.run_id}".encode()).hexdigest()[:10]
        staging = str(_props(build).get("stagingResourceGroup") or "")
        given = bool(staging)
        template_group = staging_group.of_build(build)
        if template_group is not None:
            rg = template_group.name
        elif given:
            parsed = re.fullmatch(r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/?", staging, re.IGNORECASE)
            if not parsed:
                raise ArmFailure(
                    "InvalidStagingResourceGroup",
                    f"properties.stagingResourceGroup {staging!r} is not a resource group id "
                    "(/subscriptions/<id>/resourceGroups/<name>)",
                )
            if parsed.group(1).lower() != run.subscription_id.lower():
                raise ArmFailure(
                    "InvalidStagingResourceGroup",
                    "properties.stagingResourceGroup must be in the template's subscription",
                )
            rg = parsed.group(2)
        else:
            rg = re.sub(r"[^\w\-.()]", "_", f"IT_{run.resource_group}_{run.template_name}_{key}")[:90]
        base = f"ib-{key}"
        return cls(
            key=key,
            resource_group=rg,
            resource_group_given=given,
            vm=f"{base}-vm",
            template_owned=template_group is not None,
            computer=f"ib{key[:10]}",
            nic=f"{base}-nic",
            nsg=f"{base}-nsg",
            vnet=f"{base}-vnet",
            os_disk=f"{base}-osdisk",
            image=f"{base}-image",
        )

    def data_disk(self, lun: int) -> str:
        return f"ib-{self.key}-data{lun}"


@dataclass
class _Ctx:
    build: BuildInput
    log: LogSink
    args: dict[str, Any]
    state: dict[str, Any]
    arm: AzureClients
    names: Names
    op_result: dict[str, Any] | None = None

    @property
    def props(self) -> dict[str, Any]:
        return _props(self.build)

    @property
    def location(self) -> str:
        return str(self.build.template.get("location") or "")


def _props(build: BuildInput) -> dict[str, Any]:
    props = build.template.get("properties") or {}
    return props if isinstance(props, dict) else {}


def _region(name: str | None) -> str:
    return re.sub(r"\s+", "", (name or "").lower())


def _state_of(resource: dict[str, Any]) -> str:
    return str((resource.get("properties") or {}).get("provisioningState") or "Succeeded")


def _tail(text: str, lines: int = 20) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (-1,)


class AzureProvider(ComputeProvider):
    """Builds images with a transient build VM in the template's subscription.

    Options (all keyword, defaults from the environment when not given):
    `credential` (else `make_credential` from IMAGEBUILDER_AZURE_CLIENT_ID / AZURE_CLIENT_ID, or the
    template's user-assigned identity when IMAGEBUILDER_AZURE_CREDENTIAL=template), `transport` (an azure-core
    HttpTransport, for tests), `base_url` (ARM endpoint), `poll_interval` (seconds a `Pending` asks to wait),
    `min_write_interval` (ARM write pacing), `cleanup_budget_seconds`, `sleep` and `clock` (injectable).
    """

    name = "azure"

    def __init__(
        self,
        *,
        credential: TokenCredential | None = None,
        transport: HttpTransport | None = None,
        base_url: str | None = None,
        poll_interval: int | None = None,
        min_write_interval: float | None = None,
        cleanup_budget_seconds: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        environ: dict[str, str] | None = None,
        **_ignored: Any,
    ) -> None:
        env = os.environ if environ is None else environ
        self._credential = credential
        self._credential_mode = env.get("IMAGEBUILDER_AZURE_CREDENTIAL", "default").lower()
        self._client_id = env.get("IMAGEBUILDER_AZURE_CLIENT_ID") or env.get("AZURE_CLIENT_ID")
        self._transport = transport
        self._base_url = base_url or env.get("IMAGEBUILDER_ARM_ENDPOINT", "https://management.azure.com")
        self.poll_interval = int(poll_interval or env.get("IMAGEBUILDER_AZURE_POLL_SECONDS", "15"))
        self._sleep = sleep
        self._clock = clock
        self._cleanup_budget = float(
            cleanup_budget_seconds or env.get("IMAGEBUILDER_AZURE_CLEANUP_SECONDS", "300")
        )
        write_interval = (
            min_write_interval
            if min_write_interval is not None
            else float(env.get("IMAGEBUILDER_AZURE_WRITE_INTERVAL", "1.0"))
        )
        self.pacer = WritePacer(write_interval, clock, sleep)
        self._clients: dict[str, AzureClients] = {}
        self._app_account = _app_storage_account(env)
        self._artifacts_container = env.get("IMAGEBUILDER_ARTIFACTS_CONTAINER") or "image-artifacts"
        self._generalize_seconds = int(
            env.get("IMAGEBUILDER_AZURE_GENERALIZE_SECONDS") or DEFAULT_GENERALIZE_SECONDS
        )

    # -- plumbing ----------------------------------------------------------------------------------

    def _template_identity(self, build: BuildInput | None) -> str | None:
        if self._credential is not None or self._credential_mode != "template" or build is None:
            return None
        identities = list((build.template.get("identity") or {}).get("userAssignedIdentities") or {})
        return str(identities[0]) if identities else None

    def _credential_for(self, build: BuildInput | None) -> TokenCredential:
        template_identity = self._template_identity(build)
        if template_identity:
            return make_credential(identity_resource_id=template_identity)
        if self._credential is not None:
            return self._credential
        try:
            self._credential = make_credential(client_id=self._client_id)
        except Exception as exc:  # azure-identity missing pieces: configuration, not a build failure
            raise ProviderConfigError(
                f"no Azure credential: {exc}", hint="assign a managed identity or set AZURE_CLIENT_ID"
            ) from exc
        return self._credential

    def clients(self, subscription_id: str, build: BuildInput | None = None) -> AzureClients:
        """The SDK clients for one subscription (cached)."""
        key = f"{subscription_id.lower()}|{self._template_identity(build) or ''}"
        if key not in self._clients:
            self._clients[key] = AzureClients(
                subscription_id,
                self._credential_for(build),
                transport=self._transport,
                base_url=self._base_url,
                pacer=self.pacer,
                default_retry=self.poll_interval,
            )
        return self._clients[key]

    def _tags(self, ctx: _Ctx, extra: dict[str, Any] | None = None) -> dict[str, str]:
        tags = {str(k): str(v) for k, v in (ctx.props.get("managedResourceTags") or {}).items()}
        tags.update({str(k): str(v) for k, v in (extra or {}).items()})
        tags[TAG_TEMPLATE] = ctx.build.run.template_id
        tags[TAG_RUN] = ctx.build.run.run_id
        return tags

    def _drive(
        self,
        method: str,
        build: BuildInput,
        args: dict[str, Any],
        log: LogSink,
        state: dict[str, Any] | None = None,
        op_result: dict[str, Any] | None = None,
    ) -> Any:
        ctx: _Ctx | None = None
        try:
            names = Names.of(build)
            ctx = _Ctx(
                build, log, args, dict(state or {}), self.clients(build.run.subscription_id, build), names
            )
            ctx.op_result = op_result
            return getattr(self, f"_do_{method}")(ctx)
        except _Wait as wait:
            return self._pending(method, build, args, ctx.state if ctx else {}, wait.op, wait.retry_after)
        except Throttled as throttled:
            log.write(f"ARM throttled the request; resuming in {throttled.retry_after}s\n")
            return self._pending(method, build, args, ctx.state if ctx else {}, None, throttled.retry_after)
        except ArmFailure as failure:
            error = ErrorInfo(
                code=failure.code,
                message=failure.arm_message,
                step=self._step_name(method, build, args),
                log_uri=log.uri or None,
            )
            log.write(f"{error.step} failed: {error.code}: {error.message}\n")
            return self._failed(method, build, args, error)

    def _pending(
        self,
        method: str,
        build: BuildInput,
        args: dict[str, Any],
        state: dict[str, Any],
        op: dict[str, Any] | None,
        retry_after: int,
    ) -> Pending:
        return Pending(
            operation={
                "provider": "azure",
                "method": method,
                "run": build.run.model_dump(mode="json"),
                "args": args,
                "state": state,
                "op": op,
            },
            retry_after_seconds=max(1, int(retry_after)),
        )

    def _step_name(self, method: str, build: BuildInput, args: dict[str, Any]) -> str:
        if method == "customize":
            index = int(args["index"])
            steps = _props(build).get("customize") or []
            step = steps[index] if index < len(steps) else {}
            return f"customize[{index}] ({step.get('name') or step.get('type')})"
        if method == "distribute":
            return f"distribute[{args['target_index']}] ({args['region']})"
        return method

    def _failed(self, method: str, build: BuildInput, args: dict[str, Any], error: ErrorInfo) -> Any:
        if method == "prepare":
            return PrepareResult(status="failed", error=error)
        if method == "create_build_env":
            return BuildEnv(
                provider=self.name, handle={"status": "failed", "error": error.model_dump(mode="json")}
            )
        if method == "capture":
            return CaptureResult(status="failed", error=error)
        if method == "distribute":
            targets = _props(build).get("distribute") or []
            index = int(args["target_index"])
            name = str(targets[index].get("runOutputName", "")) if index < len(targets) else ""
            return ReplicationResult(
                run_output_name=name, region=args["region"], status="failed", error=error
            )
        return StepResult(status="failed", step=error.step or method, error=error)

    def _env_error(self, env: BuildEnv, step: str) -> StepResult | None:
        if env.handle.get("status") == "failed":
            error = ErrorInfo.model_validate(env.handle["error"])
            return StepResult(status="failed", step=step, error=error)
        return None

    def _await_op(self, started: Started, what: str) -> dict[str, Any]:
        """Return the finished body of an operation, or raise `_Wait` to poll it later."""
        op = started.operation(what)
        if op is None:
            return started.body
        raise _Wait(op, started.retry_after)

    def _ensure(
        self,
        ctx: _Ctx,
        what: str,
        get: Callable[[], Any],
        begin: Callable[[Any, Any], Any],
        body: Callable[[], dict[str, Any]],
    ) -> dict[str, Any]:
        """GET a resource; PUT it when absent (returns after ARM accepted); wait while it provisions."""
        existing = ctx.arm.get(f"read {what}", get)
        if existing is None:
            ctx.log.write(f"creating {what}\n")
            started = ctx.arm.start(f"create {what}", begin_with(begin, body()))
            result = self._await_op(started, f"create {what}")
            if _state_of(result) == "Succeeded":
                return result
            raise _Wait(None, started.retry_after)
        state = _state_of(existing)
        if state == "Succeeded":
            return existing
        if state in ("Failed", "Canceled"):
            raise ArmFailure("ProvisioningFailed", f"{what} is in provisioning state {state}")
        raise _Wait(None, self.poll_interval)

    # -- the seam ----------------------------------------------------------------------------------

    def poll(self, pending: Pending, log: LogSink, build: BuildInput | None = None) -> Any:
        """Continue a method from its `Pending`: check the ARM operation, then re-enter the method. The
        `Pending` carries ids and step state only; `build` is the run's input (the poll activity's)."""
        operation = dict(pending.operation)
        if operation.get("provider") != "azure":
            raise ProviderConfigError("this Pending was not made by the azure provider")
        method = str(operation["method"])
        if build is None:
            if "build" not in operation:
                raise ProviderConfigError("poll needs the run's BuildInput (build=...)")
            build = BuildInput.model_validate(operation["build"])  # a Pending from before ids-only
        run = operation.get("run")
        if run is not None and RunRef.model_validate(run) != build.run:
            raise ProviderConfigError(f"this Pending belongs to run {run}, not to {build.run}")
        args = dict(operation.get("args") or {})
        state = dict(operation.get("state") or {})
        op = operation.get("op")
        result: dict[str, Any] | None = None
        if op:
            arm = self.clients(build.run.subscription_id, build)
            try:
                status = arm.operation_status(op)
            except Throttled as throttled:
                return self._pending(method, build, args, state, op, throttled.retry_after)
            if not status.done:
                return self._pending(method, build, args, state, op, status.retry_after)
            if status.state != "Succeeded":
                retry = self._retry_build_vm(build, args, state, op, status.error_code, log)
                if retry is not None:
                    return retry
                error = ErrorInfo(
                    code=status.error_code or f"Operation{status.state}",
                    message=status.error_message or f"{op.get('what')} ended {status.state}",
                    step=self._step_name(method, build, args),
                    log_uri=log.uri or None,
                )
                log.write(f"{op.get('what')} failed: {error.code}: {error.message}\n")
                return self._failed(method, build, args, error)
            result = status.body
        return self._drive(method, build, args, log, state, result)

    def _retry_build_vm(
        self,
        build: BuildInput,
        args: dict[str, Any],
        state: dict[str, Any],
        op: dict[str, Any],
        code: str | None,
        log: LogSink,
    ) -> Pending | None:
        """A build VM that failed for a passing reason (capacity, an internal error) is deleted and made
        again, at most twice; its NIC and disks go with it (deleteOption) and are remade by the next pass."""
        if not str(op.get("what", "")).startswith("create build VM") or code not in TRANSIENT_CODES:
            return None
        attempts = int(state.get("vm_retries", 0))
        if attempts >= 2:
            return None
        state["vm_retries"] = attempts + 1
        names = Names.of(build)
        arm = self.clients(build.run.subscription_id, build)
        log.write(f"build VM failed with {code}; deleting it and trying again ({attempts + 1}/2)\n")
        try:
            started = arm.start(
                f"delete failed VM {names.vm}",
                lambda p: arm.compute.virtual_machines.begin_delete(
                    names.resource_group, names.vm, polling=p
                ),
            )
        except Throttled as throttled:
            return self._pending("create_build_env", build, args, state, op, throttled.retry_after)
        return self._pending(
            "create_build_env",
            build,
            args,
            state,
            started.operation(f"delete failed VM {names.vm}"),
            started.retry_after,
        )

    def prepare(self, build: BuildInput, log: LogSink) -> PrepareResult | Pending:
        result: PrepareResult | Pending = self._drive("prepare", build, {}, log)
        return result

    def create_build_env(
        self, build: BuildInput, prepared: PrepareResult, log: LogSink
    ) -> BuildEnv | Pending:
        result: BuildEnv | Pending = self._drive(
            "create_build_env", build, {"prepared": prepared.model_dump(mode="json")}, log
        )
        return result

    def customize(self, build: BuildInput, env: BuildEnv, index: int, log: LogSink) -> StepResult | Pending:
        failed = self._env_error(env, f"customize[{index}]")
        if failed:
            return failed
        result: StepResult | Pending = self._drive(
            "customize", build, {"env": env.model_dump(mode="json"), "index": index}, log
        )
        return result

    def validate(self, build: BuildInput, env: BuildEnv, log: LogSink) -> StepResult | Pending:
        failed = self._env_error(env, "validate")
        if failed:
            return failed
        result: StepResult | Pending = self._drive(
            "validate", build, {"env": env.model_dump(mode="json")}, log
        )
        return result

    def generalize(self, build: BuildInput, env: BuildEnv, log: LogSink) -> StepResult | Pending:
        failed = self._env_error(env, "generalize")
        if failed:
            return failed
        result: StepResult | Pending = self._drive(
            "generalize", build, {"env": env.model_dump(mode="json")}, log
        )
        return result

    def capture(self, build: BuildInput, env: BuildEnv, log: LogSink) -> CaptureResult | Pending:
        failed = self._env_error(env, "capture")
        if failed:
            return CaptureResult(status="failed", error=failed.error)
        result: CaptureResult | Pending = self._drive(
            "capture", build, {"env": env.model_dump(mode="json")}, log
        )
        return result

    def distribute(
        self, build: BuildInput, captured: CaptureResult, target_index: int, region: str, log: LogSink
    ) -> ReplicationResult | Pending:
        result: ReplicationResult | Pending = self._drive(
            "distribute",
            build,
            {"captured": captured.model_dump(mode="json"), "target_index": target_index, "region": region},
            log,
        )
        return result

    # -- template lifecycle --------------------------------------------------------------------------

    def create_template(self, template: TemplateInput, log: LogSink) -> TemplateStaging:
        """Check the source and the gallery targets as AIB does at create, then make (or adopt) the
        template's staging resource group (staging.py)."""
        ref = template.ref
        props = template.template.get("properties") or {}
        location = str(template.template.get("location") or "")
        build = BuildInput(
            run=RunRef(
                subscription_id=ref.subscription_id,
                resource_group=ref.resource_group,
                template_name=ref.template_name,
                run_id="template-create",
            ),
            template=template.template,
        )
        arm = self.clients(ref.subscription_id, build)
        codes = {
            "PlatformImage": "BadPIRSource",
            "ManagedImage": "BadManagedImageSource",
            "SharedImageVersion": "BadSharedImageVersionSource",
        }
        step = "create_template"
        try:
            group = staging_group.of_template(ref, template.template)
            ctx = _Ctx(build, log, {}, {}, arm, Names.of(build))
            try:
                self._resolve_source(ctx)
            except ArmFailure as exc:
                if exc.status not in (None, 404) and exc.code not in ("SourceImageNotFound",):
                    raise
                kind = str((props.get("source") or {}).get("type") or "")
                raise ArmFailure(codes.get(kind, "BadSourceType"), exc.arm_message) from exc
            for index, target in enumerate(props.get("distribute") or []):
                if target.get("type") != "SharedImage":
                    continue
                where = f"properties.distribute[{index}]"
                parsed = ArmId.parse(str(target.get("galleryImageId") or ""), f"{where}.galleryImageId")
                if self._gallery_image(ctx, parsed, where) is None:
                    raise ArmFailure(
                        "BadSharedImageDistribute",
                        f"{where}.galleryImageId {target.get('galleryImageId')} does not exist; create the "
                        "gallery image definition first",
                    )
            tags = {str(k): str(v) for k, v in (props.get("managedResourceTags") or {}).items()}
            made = staging_group.ensure(arm, ref, group, location, tags, log.write)
        except ArmFailure as exc:
            log.write(f"{step} failed: {exc.code}: {exc.arm_message}\n")
            return TemplateStaging(
                status="failed",
                error=ErrorInfo(code=exc.code, message=exc.arm_message, step=step, log_uri=log.uri or None),
            )
        created = (made.get("tags") or {}).get(staging_group.TAG_STAGING) == "created"
        return TemplateStaging(
            status="succeeded",
            exact_staging_resource_group=group.id,
            staging={"resource_group": group.name, "created": created},
        )

    def delete_template(self, template: TemplateInput, log: LogSink) -> CleanupReport:
        """Delete the staging group this provider created; empty and untag a user's group. What runs left
        there (kept on abort) goes first, found by the runs' tags. Waits within the cleanup budget."""
        ref = template.ref
        props = template.template.get("properties") or {}
        name = str(template.staging.get("resource_group") or "")
        try:
            if not name:
                exact = str(props.get("exactStagingResourceGroup") or "")
                if not exact:
                    return CleanupReport()  # the create never made one
                name = staging_group.parse_group_id(
                    exact,
                    "properties.exactStagingResourceGroup",
                    ref.subscription_id,
                    "BadStagingResourceGroup",
                )
            group = staging_group.StagingGroup(
                ref.subscription_id, name, bool(props.get("stagingResourceGroup"))
            )
            arm = self.clients(ref.subscription_id)
            groups = arm.resources.resource_groups
            existing = arm.get(f"read staging resource group {name}", lambda: groups.get(name))
            if existing is None:
                return CleanupReport()
            tags = existing.get("tags") or {}
            if str(tags.get(staging_group.TAG_TEMPLATE, "")).lower() != ref.template_id.lower():
                log.write(f"delete: {name} is not tagged for this template; left alone\n")
                return CleanupReport(kept=[group.id])
            report = CleanupReport()
            for run_id in staging_group.runs_left(arm, group, ref):
                run = RunRef(
                    subscription_id=ref.subscription_id,
                    resource_group=ref.resource_group,
                    template_name=ref.template_name,
                    run_id=run_id,
                )
                left = self._cleanup(BuildInput(run=run, template=template.template), keep=False, log=log)
                report.removed.extend(left.removed)
                report.errors.extend(left.errors)
            if report.errors:
                return report
            if tags.get(staging_group.TAG_STAGING) == "created":
                self._delete_and_wait(
                    arm,
                    f"staging resource group {name}",
                    lambda p: groups.begin_delete(name, polling=p),
                    self._clock() + self._cleanup_budget,
                )
                log.write(f"deleted staging resource group {name}\n")
                report.removed.append(group.id)
            else:
                staging_group.untag(arm, group, existing)
                log.write(f"emptied the staging resource group {name} (yours: kept)\n")
                report.kept.append(group.id)
            return report
        except ArmFailure as exc:
            log.write(f"delete_template failed: {exc.code}: {exc.arm_message}\n")
            return CleanupReport(errors=[f"{exc.code}: {exc.arm_message}"])

    def _delete_and_wait(
        self, arm: AzureClients, what: str, begin: Callable[[Any], Any], deadline: float
    ) -> None:
        started = arm.start(f"delete {what}", begin)
        op = started.operation(f"delete {what}")
        while op is not None:
            try:
                status = arm.operation_status(op)
            except Throttled as exc:
                pause = exc.retry_after
            else:
                if status.done:
                    if status.state != "Succeeded":
                        raise ArmFailure(status.error_code or "DeleteFailed", status.error_message or what)
                    return
                pause = status.retry_after
            if self._clock() + pause > deadline:
                raise TransientProviderError(f"{what} is still being deleted", hint="the activity is retried")
            self._sleep(pause)

    # -- prepare -----------------------------------------------------------------------------------

    def _do_prepare(self, ctx: _Ctx) -> PrepareResult:
        source = self._resolve_source(ctx)
        ctx.log.write(f"source resolved: {source.type} {source.id} ({source.hyper_v_generation})\n")
        artifacts: dict[str, StagedArtifact] = {}
        steps = [(f"properties.customize[{i}]", s) for i, s in enumerate(ctx.props.get("customize") or [])]
        validations = (ctx.props.get("validate") or {}).get("inVMValidations") or []
        steps += [(f"properties.validate.inVMValidations[{i}]", s) for i, s in enumerate(validations)]
        for where, step in steps:
            field = "scriptUri" if step.get("scriptUri") else "sourceUri"
            uri = str(step.get(field) or "")
            if not uri:
                continue
            self._refuse_app_storage(uri, f"{where}.{field}")
            if uri not in artifacts:
                data = ctx.arm.fetch(uri)
                digest = hashlib.sha256(data).hexdigest()
                ctx.log.write(f"fetched {redact(uri)}: {len(data)} bytes, sha256 {digest}\n")
                artifacts[uri] = StagedArtifact(uri=uri, sha256=digest, size=len(data), location=uri)
            digest = artifacts[uri].sha256
            want = str(step.get("sha256Checksum") or "").lower()
            if want and want != digest:
                return PrepareResult(
                    status="failed",
                    source=source,
                    error=ErrorInfo(
                        code="ChecksumMismatch",
                        message=(
                            f"{where}.sha256Checksum is {want} but {where}.{field} ({redact(uri)}) has "
                            f"sha256 {digest}; fix the checksum or the file"
                        ),
                        step="prepare",
                        log_uri=ctx.log.uri or None,
                    ),
                )
        return PrepareResult(status="succeeded", source=source, artifacts=list(artifacts.values()))

    def _refuse_app_storage(self, uri: str, where: str) -> None:
        """Private blobs are read with the app's identity, which owns the app's own storage account (its
        function keys in azure-webjobs-secrets, the durable state, the run records): a template may only
        name the artifacts container there, or anything it can reach with a SAS of its own."""
        if not self._app_account:
            return
        parts = urlsplit(uri)
        host = parts.netloc.lower()
        if host != f"{self._app_account}.blob.core.windows.net" or "sig=" in parts.query:
            return
        container = parts.path.lstrip("/").split("/", 1)[0]
        if container.lower() != self._artifacts_container.lower():
            raise ArmFailure(
                "ScriptUriNotAllowed",
                f"{where} ({redact(uri)}) names the image builder's own storage account "
                f"{self._app_account!r}, container {container!r}: only its {self._artifacts_container!r} "
                "container may hold build files; upload the file there, or use another account",
            )

    def _resolve_source(self, ctx: _Ctx) -> SourceInfo:
        source = ctx.props.get("source") or {}
        kind = source.get("type")
        if kind == "PlatformImage":
            return self._resolve_platform(ctx, source)
        if kind == "ManagedImage":
            image_id = str(source.get("imageId") or "")
            parsed = ArmId.parse(image_id, "properties.source.imageId")
            arm = self.clients(parsed.subscription, ctx.build)
            image = arm.get(
                "read source image",
                lambda: arm.compute.images.get(parsed.resource_group, parsed.name("images")),
            )
            if image is None:
                raise ArmFailure(
                    "SourceImageNotFound", f"properties.source.imageId {image_id} does not exist"
                )
            props = image.get("properties") or {}
            os_disk = (props.get("storageProfile") or {}).get("osDisk") or {}
            if _region(image.get("location")) != _region(ctx.location):
                raise ArmFailure(
                    "SourceImageLocationMismatch",
                    f"the source image is in {image.get('location')}, the template in {ctx.location}; "
                    "copy the image into the template's region or use a gallery image version",
                )
            return SourceInfo(
                type="ManagedImage",
                id=image_id,
                hyper_v_generation="V2" if props.get("hyperVGeneration") == "V2" else "V1",
                details={"os_type": os_disk.get("osType", "Linux"), "image_reference": {"id": image_id}},
            )
        if kind == "SharedImageVersion":
            return self._resolve_gallery(ctx, str(source.get("imageVersionId") or ""))
        raise ArmFailure(
            "InvalidSourceType",
            f"properties.source.type {kind!r} is not PlatformImage, ManagedImage or SharedImageVersion",
        )

    def _resolve_platform(self, ctx: _Ctx, source: dict[str, Any]) -> SourceInfo:
        publisher, offer, sku = (str(source.get(k) or "") for k in ("publisher", "offer", "sku"))
        if not (publisher and offer and sku):
            raise ArmFailure(
                "InvalidSource", "properties.source needs publisher, offer and sku for a PlatformImage"
            )
        version = str(source.get("version") or "latest")
        images = ctx.arm.compute.virtual_machine_images
        if version.lower() == "latest":
            listed = ctx.arm.call(
                "list platform image versions", lambda: images.list(ctx.location, publisher, offer, sku)
            )
            names = [str(dict(item)["name"]) for item in listed]
            if not names:
                raise ArmFailure(
                    "SourceImageNotFound", f"no versions of {publisher}:{offer}:{sku} in {ctx.location}"
                )
            version = max(names, key=_version_key)
        image = ctx.arm.get(
            "read platform image", lambda: images.get(ctx.location, publisher, offer, sku, version)
        )
        if image is None:
            raise ArmFailure(
                "SourceImageNotFound", f"{publisher}:{offer}:{sku}:{version} does not exist in {ctx.location}"
            )
        props = image.get("properties") or {}
        plan_info = source.get("planInfo") or {}
        plan: dict[str, str] | None = None
        if plan_info:
            plan = {
                "name": str(plan_info.get("planName")),
                "product": str(plan_info.get("planProduct")),
                "publisher": str(plan_info.get("planPublisher")),
            }
        elif props.get("plan"):
            p = props["plan"]
            plan = {"name": p.get("name"), "product": p.get("product"), "publisher": p.get("publisher")}
        return SourceInfo(
            type="PlatformImage",
            id=f"{publisher}:{offer}:{sku}:{version}",
            exact_version=version,
            hyper_v_generation="V2" if props.get("hyperVGeneration") == "V2" else "V1",
            details={
                "os_type": (props.get("osDiskImage") or {}).get("operatingSystem", "Linux"),
                "image_reference": {"publisher": publisher, "offer": offer, "sku": sku, "version": version},
                "plan": plan,
            },
        )

    def _resolve_gallery(self, ctx: _Ctx, version_id: str) -> SourceInfo:
        parsed = ArmId.parse(version_id, "properties.source.imageVersionId")
        arm = self.clients(parsed.subscription, ctx.build)
        rg, gallery, image = parsed.resource_group, parsed.name("galleries"), parsed.name("images")
        version = parsed.name("versions")
        versions = arm.compute.gallery_image_versions
        if version.lower() == "latest":
            listed = arm.call(
                "list gallery image versions",
                lambda: list(versions.list_by_gallery_image(rg, gallery, image)),
            )
            usable = []
            for item in listed:
                item = dict(item)
                props = item.get("properties") or {}
                if (props.get("publishingProfile") or {}).get("excludeFromLatest"):
                    continue
                if props.get("provisioningState", "Succeeded") != "Succeeded":
                    continue
                usable.append(str(item["name"]))
            if not usable:
                raise ArmFailure(
                    "SourceImageNotFound", f"{version_id}: the gallery image has no usable version"
                )
            version = max(usable, key=_version_key)
        definition = arm.get("read gallery image", lambda: arm.compute.gallery_images.get(rg, gallery, image))
        if definition is None:
            raise ArmFailure(
                "SourceImageNotFound", f"properties.source.imageVersionId {version_id}: no such image"
            )
        props = definition.get("properties") or {}
        if props.get("osState") == "Specialized":
            raise ArmFailure(
                "SourceImageSpecialized",
                "properties.source.imageVersionId points at a Specialized image definition; "
                "use a Generalized one",
            )
        features = {str(f.get("name")): str(f.get("value")) for f in props.get("features") or []}
        security = features.get("SecurityType", "Standard")
        exact = re.sub(r"/versions/[^/]+$", f"/versions/{version}", version_id, flags=re.IGNORECASE)
        plan = props.get("purchasePlan")
        return SourceInfo(
            type="SharedImageVersion",
            id=exact,
            exact_version=version,
            hyper_v_generation="V2" if props.get("hyperVGeneration") == "V2" else "V1",
            details={
                "os_type": props.get("osType", "Linux"),
                "image_reference": {"id": exact},
                "security_type": security if security.startswith("TrustedLaunch") else "Standard",
                "plan": (
                    {
                        "name": plan.get("name"),
                        "product": plan.get("product"),
                        "publisher": plan.get("publisher"),
                    }
                    if plan
                    else None
                ),
            },
        )

    # -- build environment -------------------------------------------------------------------------

    def _ensure_staging(self, ctx: _Ctx) -> dict[str, Any]:
        names = ctx.names
        template_group = staging_group.of_build(ctx.build)
        if template_group is not None:  # the template's own group: made at create, shared by its runs
            run = ctx.build.run
            ref = TemplateRef(
                subscription_id=run.subscription_id,
                resource_group=run.resource_group,
                template_name=run.template_name,
            )
            tags = {str(k): str(v) for k, v in (ctx.props.get("managedResourceTags") or {}).items()}
            return staging_group.ensure(ctx.arm, ref, template_group, ctx.location, tags, ctx.log.write)
        groups = ctx.arm.resources.resource_groups
        group = ctx.arm.get("read staging resource group", lambda: groups.get(names.resource_group))
        if group is None:
            tags = self._tags(
                ctx,
                {
                    "createdBy": "AzureVMImageBuilder",
                    "imageTemplateName": ctx.build.run.template_name,
                    "imageTemplateResourceGroupName": ctx.build.run.resource_group,
                },
            )
            ctx.log.write(f"creating staging resource group {names.resource_group}\n")
            created: dict[str, Any] = ctx.arm.call(
                "create staging resource group",
                lambda: as_json(
                    groups.create_or_update(names.resource_group, {"location": ctx.location, "tags": tags})
                ),
            )
            return created
        if group.get("tags", {}).get(TAG_RUN) == ctx.build.run.run_id:
            return group  # ours, from an earlier attempt
        if not names.resource_group_given:
            raise ArmFailure(
                "StagingResourceGroupConflict",
                f"resource group {names.resource_group} exists and was not made by this run",
            )
        if _region(group.get("location")) != _region(ctx.location):
            raise ArmFailure(
                "InvalidStagingResourceGroup",
                f"properties.stagingResourceGroup {names.resource_group} is in {group.get('location')}, "
                f"the template in {ctx.location}; use an empty group in the template's region",
            )
        if not ctx.state.get("staging_checked"):
            contents = ctx.arm.call(
                "list staging resource group",
                lambda: [
                    dict(r) for r in ctx.arm.resources.resources.list_by_resource_group(names.resource_group)
                ],
            )
            foreign = [
                r["id"] for r in contents if (r.get("tags") or {}).get(TAG_RUN) != ctx.build.run.run_id
            ]
            if foreign:
                raise ArmFailure(
                    "InvalidStagingResourceGroup",
                    f"properties.stagingResourceGroup {names.resource_group} is not empty "
                    f"({len(foreign)} resources, e.g. {foreign[0]}); give an empty resource group or omit it",
                )
            ctx.state["staging_checked"] = True
        return group

    def _do_create_build_env(self, ctx: _Ctx) -> BuildEnv:
        prepared = PrepareResult.model_validate(ctx.args["prepared"])
        if prepared.status != "succeeded" or prepared.source is None:
            raise ArmFailure("PrepareFailed", "create_build_env needs a successful prepare result")
        source = prepared.source
        names = ctx.names
        rg = names.resource_group
        sub = ctx.build.run.subscription_id
        if "security" not in ctx.state:  # decided before anything exists: a conflict costs nothing
            ctx.state["security"] = self._security_type(ctx, source)
        self._ensure_staging(ctx)
        profile = ctx.props.get("vmProfile") or {}
        subnet_id = str((profile.get("vnetConfig") or {}).get("subnetId") or "")
        network = ctx.arm.network
        tags = self._tags(ctx)
        if not subnet_id:
            nsg = self._ensure(
                ctx,
                f"network security group {names.nsg}",
                lambda: network.network_security_groups.get(rg, names.nsg),
                lambda body, p: network.network_security_groups.begin_create_or_update(
                    rg, names.nsg, body, polling=p
                ),
                # No inbound rules: Run Command needs no inbound port; Azure's defaults deny inbound.
                lambda: {"location": ctx.location, "tags": tags, "properties": {"securityRules": []}},
            )
            self._ensure(
                ctx,
                f"virtual network {names.vnet}",
                lambda: network.virtual_networks.get(rg, names.vnet),
                lambda body, p: network.virtual_networks.begin_create_or_update(
                    rg, names.vnet, body, polling=p
                ),
                lambda: {
                    "location": ctx.location,
                    "tags": tags,
                    "properties": {
                        "addressSpace": {"addressPrefixes": ["10.0.0.0/24"]},
                        "subnets": [
                            {
                                "name": "build",
                                "properties": {
                                    "addressPrefix": "10.0.0.0/24",
                                    "networkSecurityGroup": {"id": nsg["id"]},
                                    # outbound for script downloads and package mirrors, no public IP
                                    "defaultOutboundAccess": True,
                                },
                            }
                        ],
                    },
                },
            )
            subnet_id = (
                f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network"
                f"/virtualNetworks/{names.vnet}/subnets/build"
            )
        nic = self._ensure(
            ctx,
            f"network interface {names.nic}",
            lambda: network.network_interfaces.get(rg, names.nic),
            lambda body, p: network.network_interfaces.begin_create_or_update(rg, names.nic, body, polling=p),
            lambda: {
                "location": ctx.location,
                "tags": tags,
                "properties": {
                    "ipConfigurations": [
                        {
                            "name": "ipconfig1",
                            "properties": {
                                "subnet": {"id": subnet_id},
                                "privateIPAllocationMethod": "Dynamic",
                            },
                        }
                    ]
                },
            },
        )
        compute = ctx.arm.compute
        vm = self._ensure(
            ctx,
            f"build VM {names.vm}",
            lambda: compute.virtual_machines.get(rg, names.vm),
            lambda body, p: compute.virtual_machines.begin_create_or_update(rg, names.vm, body, polling=p),
            lambda: self._vm_body(ctx, source, nic["id"], tags),
        )
        os_type = str(source.details.get("os_type", "Linux"))
        return BuildEnv(
            provider=self.name,
            handle={
                "status": "ready",
                "subscription": sub,
                "resource_group": rg,
                "resource_group_created": not names.resource_group_given,
                "vm": names.vm,
                "vm_id": vm.get("id"),
                "nic": names.nic,
                "vnet": None if (ctx.props.get("vmProfile") or {}).get("vnetConfig") else names.vnet,
                "nsg": None if (ctx.props.get("vmProfile") or {}).get("vnetConfig") else names.nsg,
                "os_disk": names.os_disk,
                "os_type": os_type,
                "location": ctx.location,
                "hyper_v_generation": source.hyper_v_generation,
                "source": source.model_dump(mode="json"),
                "artifacts": {a.uri: a.sha256 for a in prepared.artifacts},
                "security_type": ctx.state["security"],
                "identities": [
                    str(i) for i in (ctx.props.get("vmProfile") or {}).get("userAssignedIdentities") or []
                ],
            },
        )

    def _gallery_image(self, ctx: _Ctx, parsed: ArmId, where: str) -> dict[str, Any] | None:
        arm = self.clients(parsed.subscription, ctx.build)
        images = arm.compute.gallery_images
        return arm.get(
            f"read gallery image of {where}",
            lambda: images.get(parsed.resource_group, parsed.name("galleries"), parsed.name("images")),
        )

    def _security_type(self, ctx: _Ctx, source: SourceInfo) -> str:
        """The build VM's security type, from the source and every target (ARM's rules, not the source's
        alone): a TrustedLaunch gallery definition takes only a Trusted Launch source; a Standard one, a
        TrustedLaunchSupported one (which refuses a Trusted Launch VM as source) and a managed image take
        only a Standard one; a TrustedLaunch gallery source boots only as Trusted Launch."""
        trusted: list[str] = []
        standard: list[str] = []
        if source.details.get("security_type") == "TrustedLaunch":
            trusted.append("properties.source (a TrustedLaunch gallery image)")
        for index, target in enumerate(ctx.props.get("distribute") or []):
            where = f"properties.distribute[{index}]"
            if target.get("type") == "ManagedImage":
                standard.append(f"{where} (a managed image)")
            elif target.get("type") == "SharedImage":
                parsed = ArmId.parse(str(target.get("galleryImageId") or ""), f"{where}.galleryImageId")
                definition = self._gallery_image(ctx, parsed, where)
                features = {
                    str(f.get("name")): str(f.get("value"))
                    for f in ((definition or {}).get("properties") or {}).get("features") or []
                }
                kind = features.get("SecurityType", "Standard")
                if kind == "TrustedLaunch":
                    trusted.append(f"{where} (a TrustedLaunch image definition)")
                elif definition is not None:
                    standard.append(f"{where} (a {kind} image definition)")
        if trusted and standard:
            raise ArmFailure(
                "SecurityTypeConflict",
                f"{', '.join(trusted)} needs a Trusted Launch build VM but {', '.join(standard)} needs a "
                "Standard one; build them from two templates, or make the image definitions agree",
            )
        if trusted and source.hyper_v_generation != "V2":
            raise ArmFailure(
                "TrustedLaunchNeedsGen2",
                f"{trusted[0]} needs Trusted Launch, which needs a Gen2 (hyperVGeneration V2) source",
            )
        return "TrustedLaunch" if trusted else "Standard"

    def _vm_body(self, ctx: _Ctx, source: SourceInfo, nic_id: str, tags: dict[str, str]) -> dict[str, Any]:
        import secrets

        profile = ctx.props.get("vmProfile") or {}
        generation = source.hyper_v_generation
        os_type = str(source.details.get("os_type", "Linux"))
        os_disk: dict[str, Any] = {
            "name": ctx.names.os_disk,
            "createOption": "FromImage",
            "caching": "ReadWrite",
            "managedDisk": {"storageAccountType": "StandardSSD_LRS"},
            "deleteOption": "Delete",
        }
        if int(profile.get("osDiskSizeGB") or 0) > 0:
            os_disk["diskSizeGB"] = int(profile["osDiskSizeGB"])
        data_disks = [
            {
                "lun": lun,
                "name": ctx.names.data_disk(lun),
                "createOption": "Empty",
                "diskSizeGB": int(disk.get("sizeGB") or 0),
                "managedDisk": {"storageAccountType": "StandardSSD_LRS"},
                "deleteOption": "Delete",
            }
            for lun, disk in enumerate(ctx.props.get("additionalDataDisks") or [])
        ]
        # Nobody signs in (no inbound port, Run Command only). Linux gets a throwaway SSH key whose private
        # half is never kept; Windows needs a password, made here, never stored or logged. Deprovisioning
        # removes the account either way.
        os_profile: dict[str, Any] = {"computerName": ctx.names.computer, "adminUsername": ADMIN_USER}
        if os_type == "Linux":
            os_profile["linuxConfiguration"] = {
                "disablePasswordAuthentication": True,
                "provisionVMAgent": True,
                "ssh": {
                    "publicKeys": [
                        {"path": f"/home/{ADMIN_USER}/.ssh/authorized_keys", "keyData": _throwaway_ssh_key()}
                    ]
                },
            }
        else:
            os_profile["adminPassword"] = secrets.token_urlsafe(24) + "aA1!"
            os_profile["windowsConfiguration"] = {"provisionVMAgent": True, "enableAutomaticUpdates": False}
        body: dict[str, Any] = {
            "location": ctx.location,
            "tags": tags,
            "properties": {
                "hardwareProfile": {"vmSize": str(profile.get("vmSize") or DEFAULT_VM_SIZE[generation])},
                "storageProfile": {
                    "imageReference": dict(source.details.get("image_reference") or {}),
                    "osDisk": os_disk,
                    "dataDisks": data_disks,
                },
                "osProfile": os_profile,
                "networkProfile": {
                    "networkInterfaces": [
                        {"id": nic_id, "properties": {"primary": True, "deleteOption": "Delete"}}
                    ]
                },
                "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
            },
        }
        if ctx.state.get("security") == "TrustedLaunch":
            body["properties"]["securityProfile"] = {
                "securityType": "TrustedLaunch",
                "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True},
            }
        else:
            # Explicit: newer API versions default Gen2 VMs to Trusted Launch, which cannot be captured
            # into a managed image.
            body["properties"]["securityProfile"] = {"securityType": "Standard"}
        plan = source.details.get("plan")
        if plan:
            body["plan"] = plan
        identities = [str(i) for i in profile.get("userAssignedIdentities") or []]
        if identities:
            body["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {i: {} for i in identities}}
        return body

    # -- run command -------------------------------------------------------------------------------

    def _run_command(
        self, ctx: _Ctx, env: dict[str, Any], key: str, script: str, timeout: int | None = None
    ) -> tuple[int, str, str]:
        """Run `script` in the build VM through a managed run command named after `key`.

        Raises `_Wait` until it finished; streams new output into the log as it appears. Returns
        (exit code, stdout, stderr). Every run command has a deadline of its own (its timeoutInSeconds plus
        a margin): a guest agent that stopped reporting (a script stopped it, the VM hung) never moves the
        run command to a terminal state, and the build fails with RunCommandNoResponse instead of waiting
        out buildTimeoutInMinutes."""
        rg, vm = env["resource_group"], env["vm"]
        name = f"ib-{key}"
        commands = ctx.arm.compute.virtual_machine_run_commands
        current = ctx.arm.get(
            f"read run command {name}",
            lambda: commands.get_by_virtual_machine(rg, vm, name, expand="instanceView"),
        )
        deadlines = ctx.state.setdefault("deadlines", {})
        if current is None:
            build_timeout = int(ctx.props.get("buildTimeoutInMinutes") or 0) * 60 or 5400
            seconds = min(timeout or build_timeout, 5400)
            body = {
                "location": env["location"],
                "tags": self._tags(ctx),
                "properties": {
                    "source": {"script": script},
                    "asyncExecution": False,
                    "timeoutInSeconds": seconds,
                    "treatFailureAsDeploymentFailure": False,
                },
            }
            store = self._run_logs(ctx)
            if store is not None:  # the whole output, not the instance view's 4 KB tail
                body["properties"].update(
                    store.create(store.streams(ctx.names.key, name), seconds + RUN_COMMAND_MARGIN)
                )
                ctx.state.setdefault("blobs", []).append(name)
            ctx.log.write(f"run command {name} started\n")
            ctx.arm.start(
                f"run command {name}",
                lambda p: commands.begin_create_or_update(rg, vm, name, body, polling=p),
            )
            deadlines[name] = self._clock() + seconds + RUN_COMMAND_MARGIN
            # Not waiting on the operation: each poll re-reads the instance view and streams new output.
            raise _Wait(None, self.poll_interval)
        props = current.get("properties") or {}
        view = props.get("instanceView") or {}
        output, error = str(view.get("output") or ""), str(view.get("error") or "")
        execution = str(view.get("executionState") or "")
        terminal = execution in TERMINAL_RUN_STATES
        store = self._run_logs(ctx) if name in ctx.state.get("blobs", []) else None
        if store is not None:
            output, error = self._stream_blobs(ctx, store, name, terminal)
        else:
            self._stream_tail(ctx, name, output, terminal)
        if terminal:
            deadlines.pop(name, None)
            if store is None and error.strip() and not ctx.state.get(f"err:{name}"):
                ctx.log.write(error if error.endswith("\n") else error + "\n")
                ctx.state[f"err:{name}"] = True
            code = view.get("exitCode")
            if code is None:
                code = 0 if execution == "Succeeded" else 1
            if execution == "TimedOut":
                raise ArmFailure(
                    "RunCommandTimedOut", f"run command {name} timed out: {view.get('executionMessage', '')}"
                )
            return int(code), output, error
        if props.get("provisioningState") in ("Failed", "Canceled"):
            raise ArmFailure(
                "RunCommandFailed",
                f"run command {name} could not run: "
                f"{view.get('executionMessage') or props.get('provisioningState')}",
            )
        deadline = deadlines.setdefault(name, self._clock() + 5400 + RUN_COMMAND_MARGIN)
        if self._clock() > float(deadline):
            raise ArmFailure(
                "RunCommandNoResponse",
                f"run command {name} reported no result past its timeout plus {RUN_COMMAND_MARGIN}s "
                f"(state {execution or 'unknown'}): the VM guest agent stopped reporting. A script that "
                "stops or restarts the agent (waagent -deprovision, sysprep, a reboot) never reports back; "
                "leave generalization to the build, or restart with a WindowsRestart customizer",
            )
        raise _Wait(None, self.poll_interval)

    def _run_logs(self, ctx: _Ctx) -> RunLogStore | None:
        """Where run commands append their whole output (the app's storage account), if configured."""
        return RunLogStore(ctx.arm, self._app_account) if self._app_account else None

    def _stream_blobs(self, ctx: _Ctx, store: RunLogStore, name: str, terminal: bool) -> tuple[str, str]:
        """Log the whole lines the command appended to its blobs since the last poll (all of it once it
        ended); at the end, return the tails of both streams (markers and failure tails come from them)."""
        streams = store.streams(ctx.names.key, name)
        offsets = ctx.state.setdefault("offsets", {})
        for blob, key in ((streams.output, name), (streams.error, f"{name}:err")):
            start = int(offsets.get(key, 0))
            text, end = store.read(blob, start)
            if not terminal and "\n" in text:  # a partial last line waits for the next poll
                whole = text[: text.rindex("\n") + 1]
                end = start + len(whole.encode("utf-8"))
                text = whole
            elif not terminal:
                text, end = "", start
            if text:
                ctx.log.write(text if text.endswith("\n") else text + "\n")
            offsets[key] = end
        if not terminal:
            return "", ""
        return store.tail(streams.output), store.tail(streams.error)

    def _stream_tail(self, ctx: _Ctx, name: str, output: str, terminal: bool) -> None:
        """Without blobs, the instance view's output is a sliding 4 KB tail: log the whole lines that
        follow what was logged before, and say so when more than the window went by between two polls."""
        anchors = ctx.state.setdefault("anchors", {})
        anchor = anchors.get(name)
        if anchor is None:
            fresh = output if len(output) < RUN_COMMAND_TAIL else _LOST + output
        else:
            at = output.rfind(anchor)
            fresh = output[at + len(anchor) :] if at >= 0 else _LOST + output
        if not terminal:
            fresh = fresh[: fresh.rindex("\n") + 1] if "\n" in fresh else ""
        if fresh:
            ctx.log.write(fresh if fresh.endswith("\n") else fresh + "\n")
            logged_upto = output if terminal else output[: output.rindex("\n") + 1]
            anchors[name] = logged_upto[-ANCHOR_CHARS:]

    def _forget(self, ctx: _Ctx, env: dict[str, Any], key: str) -> None:
        """Delete a run command whose result is already in the step state (best effort, not awaited),
        so that repeated passes (Windows Update, restart checks) do not pile up run commands on the VM."""
        name = f"ib-{key}"
        commands = ctx.arm.compute.virtual_machine_run_commands
        try:
            ctx.arm.start(
                f"delete run command {name}",
                lambda p: commands.begin_delete(env["resource_group"], env["vm"], name, polling=p),
            )
        except (ArmFailure, TransientProviderError) as exc:
            ctx.log.write(f"note: run command {name} stays until the VM is deleted ({exc})\n")

    def _script_step(
        self, ctx: _Ctx, env: dict[str, Any], key: str, step: dict[str, Any], label: str
    ) -> StepResult:
        """Shell / PowerShell / File, as a customizer or an in-VM validator."""
        kind = step.get("type")
        os_type = env["os_type"]
        started = float(ctx.state.setdefault(f"started:{key}", self._clock()))  # across polls
        uri = step.get("scriptUri") or step.get("sourceUri")
        sha = env.get("artifacts", {}).get(uri) if uri else None
        if uri and not sha:
            raise ArmFailure("ArtifactNotStaged", f"{label}: {redact(str(uri))} was not fetched by prepare")
        valid = [0]
        identity = (env.get("identities") or [None])[0]  # for private blobs, read from inside the VM
        if kind == "Shell":
            if os_type != "Linux":
                raise ArmFailure(
                    "InvalidCustomizer", f"{label}: Shell runs on Linux; this source is {os_type}"
                )
            script = scripts.shell(step, sha, identity)
        elif kind == "PowerShell":
            if os_type != "Windows":
                raise ArmFailure(
                    "InvalidCustomizer", f"{label}: PowerShell runs on Windows; this source is {os_type}"
                )
            if step.get("runAsSystem") and not step.get("runElevated"):
                raise ArmFailure("InvalidCustomizer", f"{label}: runAsSystem needs runElevated: true")
            try:
                valid = [int(c) for c in step.get("validExitCodes") or [0]]
            except (TypeError, ValueError) as exc:
                raise ArmFailure("InvalidCustomizer", f"{label}.validExitCodes must be integers") from exc
            script = scripts.powershell(step, sha, identity, ADMIN_USER)
        elif kind == "File":
            if not step.get("destination") or not sha:
                raise ArmFailure("InvalidCustomizer", f"{label}: File needs sourceUri and destination")
            script = (
                scripts.file_linux(step, sha, identity)
                if os_type == "Linux"
                else scripts.file_windows(step, sha, identity)
            )
        else:
            raise ArmFailure("InvalidCustomizer", f"{label}: type {kind!r} is not supported here")
        code, output, error = self._run_command(ctx, env, key, script)
        duration = max(0.0, self._clock() - started)
        if code not in valid:
            return StepResult(
                status="failed",
                step=label,
                exit_code=code,
                duration_seconds=duration,
                error=ErrorInfo(
                    code="CustomizerFailed" if key.startswith("customize") else "ValidationFailed",
                    message=f"{label} exited with {code} (valid: {valid})",
                    step=label,
                    exit_code=code,
                    log_tail=_tail(output + "\n" + error),
                    log_uri=ctx.log.uri or None,
                ),
            )
        return StepResult(status="succeeded", step=label, exit_code=code, duration_seconds=duration)

    def _restart(
        self, ctx: _Ctx, env: dict[str, Any], key: str, command: str, check: str | None, timeout: int
    ) -> None:
        """Restart the VM and return once the guest agent is back and the VM booted after the request."""
        st = ctx.state.setdefault(f"restart:{key}", {})
        if "requested_at" not in st:
            st["requested_at"] = self._clock()
            st["stage"] = "restart"
            st["attempt"] = 0
        deadline = float(st["requested_at"]) + timeout
        if st["stage"] == "restart":
            code, _, _ = self._run_command(ctx, env, f"restart-{key}", scripts.schedule_restart(command))
            self._forget(ctx, env, f"restart-{key}")
            if code != 0:
                raise ArmFailure("RestartFailed", f"scheduling the restart exited with {code}")
            st["stage"] = "wait"
            raise _Wait(None, self.poll_interval)
        if st["stage"] == "wait":
            view = (
                ctx.arm.get(
                    "read VM instance view",
                    lambda: ctx.arm.compute.virtual_machines.instance_view(env["resource_group"], env["vm"]),
                )
                or {}
            )
            statuses = (view.get("vmAgent") or {}).get("statuses") or []
            ready = any(s.get("displayStatus") == "Ready" for s in statuses)
            if not ready:
                if self._clock() > deadline:
                    raise ArmFailure("RestartTimeout", f"the VM did not come back within {timeout}s")
                raise _Wait(None, self.poll_interval)
            st["stage"] = "check"
        try:
            code, output, _ = self._run_command(
                ctx, env, f"check-{key}-{st['attempt']}", scripts.restart_check(check)
            )
            self._forget(ctx, env, f"check-{key}-{st['attempt']}")
            boot = scripts.parse_marker(output, scripts.MARKER_BOOT) or {}
            booted_after = float(boot.get("epoch", 0)) > float(st["requested_at"])
        except ArmFailure:
            code, booted_after = 1, False  # the agent was not ready for commands yet
        if code == 0 and booted_after:
            ctx.log.write("restart complete\n")
            return
        if self._clock() > deadline:
            raise ArmFailure("RestartTimeout", f"restart check did not pass within {timeout}s")
        st["attempt"] = int(st["attempt"]) + 1
        st["stage"] = "wait"
        raise _Wait(None, self.poll_interval)

    # -- customize / validate / generalize / capture ---------------------------------------------

    def _do_customize(self, ctx: _Ctx) -> StepResult:
        env = BuildEnv.model_validate(ctx.args["env"]).handle
        index = int(ctx.args["index"])
        steps = ctx.props.get("customize") or []
        if index >= len(steps):
            raise ArmFailure("InvalidCustomizer", f"properties.customize[{index}] does not exist")
        step = steps[index]
        label = self._step_name("customize", ctx.build, ctx.args)
        kind = step.get("type")
        if kind in ("Shell", "PowerShell", "File"):
            return self._script_step(ctx, env, f"customize-{index}", step, label)
        if env["os_type"] != "Windows":
            raise ArmFailure("InvalidCustomizer", f"{label}: {kind} needs a Windows source")
        if kind == "WindowsRestart":
            timeout = scripts.parse_duration(step.get("restartTimeout"), 300)
            command = str(step.get("restartCommand") or scripts.DEFAULT_RESTART_COMMAND)
            self._restart(ctx, env, str(index), command, step.get("restartCheckCommand") or None, timeout)
            return StepResult(status="succeeded", step=label)
        if kind == "WindowsUpdate":
            return self._windows_update(ctx, env, index, step, label)
        raise ArmFailure("InvalidCustomizer", f"{label}: type {kind!r} is not supported")

    def _windows_update(
        self, ctx: _Ctx, env: dict[str, Any], index: int, step: dict[str, Any], label: str
    ) -> StepResult:
        try:
            script = scripts.windows_update(step)
        except ValueError as exc:
            raise ArmFailure("InvalidCustomizer", f"{label}.filters: {exc}") from exc
        st = ctx.state.setdefault("wu", {"pass": 0, "installed": 0, "stage": "update"})
        while True:
            n = int(st["pass"])
            if n >= MAX_WINDOWS_UPDATE_PASSES:
                raise ArmFailure(
                    "WindowsUpdateNotConverging", f"{label}: updates still pending after {n} passes"
                )
            if st["stage"] == "update":
                code, output, error = self._run_command(ctx, env, f"wu-{index}-{n}", script)
                result = scripts.parse_marker(output, scripts.MARKER_WU)
                if code != 0 or result is None:
                    return StepResult(
                        status="failed",
                        step=label,
                        exit_code=code,
                        error=ErrorInfo(
                            code="CustomizerFailed",
                            message=f"{label}: Windows Update pass {n + 1} exited with {code}",
                            step=label,
                            exit_code=code,
                            log_tail=_tail(output + "\n" + error),
                            log_uri=ctx.log.uri or None,
                        ),
                    )
                self._forget(ctx, env, f"wu-{index}-{n}")
                installed, remaining = int(result.get("installed", 0)), int(result.get("remaining", 0))
                st["installed"] = int(st["installed"]) + installed
                ctx.log.write(f"Windows Update pass {n + 1}: {installed} installed, {remaining} pending\n")
                if result.get("reboot") == "1":
                    st["stage"] = "restart"
                elif remaining > 0 and installed > 0:
                    st["pass"] = n + 1
                    continue
                else:
                    return StepResult(
                        status="succeeded",
                        step=label,
                        details={"passes": n + 1, "installed": st["installed"]},
                    )
            if st["stage"] == "restart":
                self._restart(ctx, env, f"wu-{index}-{n}", scripts.DEFAULT_RESTART_COMMAND, None, 3600)
                st["pass"] = n + 1
                st["stage"] = "update"

    def _do_validate(self, ctx: _Ctx) -> StepResult:
        env = BuildEnv.model_validate(ctx.args["env"]).handle
        validations = (ctx.props.get("validate") or {}).get("inVMValidations") or []
        if not validations:
            return StepResult(status="skipped", step="validate")
        done = int(ctx.state.get("next", 0))
        for j in range(done, len(validations)):
            step = validations[j]
            label = f"validate.inVMValidations[{j}] ({step.get('name') or step.get('type')})"
            result = self._script_step(ctx, env, f"validate-{j}", step, label)
            if result.status == "failed":
                return result
            ctx.state["next"] = j + 1
        return StepResult(status="succeeded", step="validate", details={"validations": len(validations)})

    def _do_generalize(self, ctx: _Ctx) -> StepResult:
        """Deprovision (Linux) or Sysprep (Windows) detached in the guest, wait for the VM to power itself
        off (the guest agent is gone by then, so only the power state tells), deallocate, generalize."""
        env = BuildEnv.model_validate(ctx.args["env"]).handle
        rg, vm = env["resource_group"], env["vm"]
        compute = ctx.arm.compute
        linux = env["os_type"] == "Linux"
        if not ctx.state.get("launched"):
            script = scripts.deprovision_linux() if linux else scripts.sysprep()
            code, output, error = self._run_command(
                ctx, env, "generalize", script, timeout=GENERALIZE_LAUNCH_SECONDS
            )
            if code != 0 or scripts.GENERALIZE_STARTED not in output:
                return StepResult(
                    status="failed",
                    step="generalize",
                    exit_code=code,
                    error=ErrorInfo(
                        code="DeprovisionFailed",
                        message=f"starting {'waagent -deprovision+user' if linux else 'Sysprep'} "
                        f"exited with {code}",
                        step="generalize",
                        exit_code=code,
                        log_tail=_tail(output + "\n" + error),
                        log_uri=ctx.log.uri or None,
                    ),
                )
            ctx.state["launched"] = self._clock()
            ctx.log.write(f"{'deprovisioning' if linux else 'Sysprep'} started; waiting for {vm} to stop\n")
        view = (
            ctx.arm.get("read VM instance view", lambda: compute.virtual_machines.instance_view(rg, vm)) or {}
        )
        codes = {str(s.get("code")) for s in view.get("statuses") or []}
        if "OSState/generalized" in codes:
            return StepResult(status="succeeded", step="generalize")
        stopped = codes & {"PowerState/stopped", "PowerState/deallocated", "PowerState/deallocating"}
        if not stopped and not ctx.state.get("deallocating"):
            limit = self._generalize_seconds
            if self._clock() - float(ctx.state["launched"]) > limit:
                raise ArmFailure(
                    "DeprovisionTimedOut",
                    f"{vm} did not power off within {limit}s after "
                    f"{'waagent -deprovision+user' if linux else 'Sysprep'} started: it failed or hung in "
                    "the guest (see the VM's boot diagnostics; errorHandling onCustomizerError abort keeps "
                    "the VM)",
                )
            raise _Wait(None, self.poll_interval)
        if "PowerState/deallocated" not in codes:
            if not ctx.state.get("deallocating"):
                ctx.state["deallocating"] = True
                ctx.log.write(f"{vm} stopped; deallocating\n")
                started = ctx.arm.start(
                    f"deallocate {vm}", lambda p: compute.virtual_machines.begin_deallocate(rg, vm, polling=p)
                )
                self._await_op(started, f"deallocate {vm}")
            raise _Wait(None, self.poll_interval)
        ctx.log.write(f"generalizing {vm}\n")
        ctx.arm.call(f"generalize {vm}", lambda: compute.virtual_machines.generalize(rg, vm))
        return StepResult(status="succeeded", step="generalize")

    def _do_capture(self, ctx: _Ctx) -> CaptureResult:
        env = BuildEnv.model_validate(ctx.args["env"]).handle
        rg, vm_id = env["resource_group"], env["vm_id"]
        compute = ctx.arm.compute
        trusted = env.get("security_type") == "TrustedLaunch"
        image: dict[str, Any] = {}
        if not trusted:  # a Trusted Launch VM cannot become a managed image: galleries take the VM itself
            image = self._ensure(
                ctx,
                f"image {ctx.names.image}",
                lambda: compute.images.get(rg, ctx.names.image),
                lambda body, p: compute.images.begin_create_or_update(rg, ctx.names.image, body, polling=p),
                lambda: {
                    "location": env["location"],
                    "tags": self._tags(ctx),
                    "properties": {
                        "sourceVirtualMachine": {"id": vm_id},
                        "hyperVGeneration": env["hyper_v_generation"],
                    },
                },
            )
        return CaptureResult(
            status="succeeded",
            image={
                "managed_image_id": image.get("id"),
                "trusted_launch": trusted,
                "vm_id": vm_id,
                "resource_group": rg,
                "os_disk": env["os_disk"],
                "location": env["location"],
                "os_type": env["os_type"],
                "hyper_v_generation": env["hyper_v_generation"],
                "source": env.get("source"),
            },
        )

    # -- distribute --------------------------------------------------------------------------------

    def _do_distribute(self, ctx: _Ctx) -> ReplicationResult:
        captured = CaptureResult.model_validate(ctx.args["captured"])
        index, region = int(ctx.args["target_index"]), str(ctx.args["region"])
        targets = ctx.props.get("distribute") or []
        if index >= len(targets):
            raise ArmFailure("InvalidDistributor", f"properties.distribute[{index}] does not exist")
        target = targets[index]
        if captured.status != "succeeded":
            raise ArmFailure("CaptureFailed", "nothing to distribute: the capture failed")
        kind = target.get("type")
        if kind == "SharedImage":
            return self._distribute_gallery(ctx, captured.image, target, index, region)
        if kind == "ManagedImage":
            return self._distribute_managed(ctx, captured.image, target, index, region)
        if kind == "VHD":
            return self._distribute_vhd(ctx, captured.image, target, index, region)
        raise ArmFailure(
            "InvalidDistributor", f"properties.distribute[{index}].type {kind!r} is not supported"
        )

    def _target_regions(self, target: dict[str, Any], home: str) -> list[dict[str, Any]]:
        """The publishing regions of a SharedImage target, each once (ARM refuses a version whose
        targetRegions name a region twice: "Duplicate regions are not allowed"); the first mention wins,
        and the version's own region is always one of them."""
        regions: list[dict[str, Any]] = []
        seen: set[str] = set()

        def add(entry: dict[str, Any]) -> None:
            key = _region(entry["name"])
            if key not in seen:
                seen.add(key)
                regions.append(entry)

        for r in target.get("targetRegions") or []:
            add(
                {
                    "name": r["name"],
                    "regionalReplicaCount": int(r.get("replicaCount") or 1),
                    "storageAccountType": r.get("storageAccountType") or "Standard_LRS",
                }
            )
        for name in target.get("replicationRegions") or []:
            add(
                {
                    "name": name,
                    "regionalReplicaCount": 1,
                    "storageAccountType": target.get("storageAccountType") or "Standard_LRS",
                }
            )
        if _region(home) not in seen:
            regions.insert(0, {"name": home, "regionalReplicaCount": 1, "storageAccountType": "Standard_LRS"})
        return regions

    def _next_version(
        self, ctx: _Ctx, target: dict[str, Any], existing: list[dict[str, Any]], image: dict[str, Any]
    ) -> str:
        versioning = target.get("versioning") or {"scheme": "Latest", "major": -1}
        scheme = versioning.get("scheme", "Latest")
        if scheme == "Source":
            source = image.get("source") or {}
            version = str(source.get("exact_version") or "")
            if source.get("type") == "ManagedImage" or not re.fullmatch(r"\d+\.\d+\.\d+", version):
                raise ArmFailure(
                    "InvalidVersioning",
                    "versioning scheme Source needs a PlatformImage or SharedImageVersion source "
                    "with an x.y.z version",
                )
            return version
        major = int(versioning.get("major", -1))
        # Ignore versions this run made, so concurrent region activities compute the same name.
        others = [
            _version_key(str(v["name"]))
            for v in existing
            if (v.get("tags") or {}).get(TAG_RUN) != ctx.build.run.run_id
        ]
        others = [v for v in others if len(v) == 3 and (major < 0 or v[0] == major)]
        if not others:
            return f"{max(major, 0)}.0.1"
        top = max(others)
        return f"{top[0]}.{top[1]}.{top[2] + 1}"

    def _distribute_gallery(
        self, ctx: _Ctx, image: dict[str, Any], target: dict[str, Any], index: int, region: str
    ) -> ReplicationResult:
        gallery_image_id = str(target.get("galleryImageId") or "")
        parsed = ArmId.parse(gallery_image_id, f"properties.distribute[{index}].galleryImageId")
        arm = self.clients(parsed.subscription, ctx.build)
        rg, gallery, name = parsed.resource_group, parsed.name("galleries"), parsed.name("images")
        output = str(target.get("runOutputName") or "")
        versions = arm.compute.gallery_image_versions
        definition = arm.get("read gallery image", lambda: arm.compute.gallery_images.get(rg, gallery, name))
        if definition is None:
            raise ArmFailure(
                "GalleryImageNotFound",
                f"properties.distribute[{index}].galleryImageId {gallery_image_id} does not exist",
            )
        regions = self._target_regions(target, str(definition.get("location")))
        if not any(_region(r["name"]) == _region(region) for r in regions):
            raise ArmFailure(
                "InvalidRegion", f"{region} is not a target region of properties.distribute[{index}]"
            )
        version = ctx.state.get("version")
        if version is None:
            existing = arm.call(
                "list gallery image versions",
                lambda: [dict(v) for v in versions.list_by_gallery_image(rg, gallery, name)],
            )
            mine = [
                v
                for v in existing
                if (v.get("tags") or {}).get(TAG_RUN) == ctx.build.run.run_id
                and (v.get("tags") or {}).get("imagebuilder-output") == output
            ]
            version = str(mine[0]["name"]) if mine else self._next_version(ctx, target, existing, image)
            ctx.state["version"] = version
        current = arm.get(
            f"read image version {version}",
            lambda: versions.get(rg, gallery, name, version, expand="ReplicationStatus"),
        )
        if current is None:
            publishing: dict[str, Any] = {
                "targetRegions": regions,
                "excludeFromLatest": bool(target.get("excludeFromLatest", False)),
            }
            if target.get("replicationMode"):
                publishing["replicationMode"] = target["replicationMode"]
            home = str(definition.get("location"))
            storage: dict[str, Any]
            if _region(home) != _region(image["location"]):
                # ARM takes a version's source only from the version's own region (the definition's):
                # the generalized OS disk goes there as a copied snapshot first.
                snapshot_id = self._snapshot_in(ctx, image, home)
                storage = {"osDiskImage": {"source": {"id": snapshot_id}}}
            elif image.get("managed_image_id"):
                storage = {"source": {"id": image["managed_image_id"]}}
            else:
                storage = {"source": {"virtualMachineId": image["vm_id"]}}
            body = {
                "location": home,
                "tags": self._tags(
                    ctx, {**(target.get("artifactTags") or {}), "imagebuilder-output": output}
                ),
                "properties": {"publishingProfile": publishing, "storageProfile": storage},
            }
            ctx.log.write(f"creating gallery image version {version} in {len(regions)} regions\n")
            arm.start(
                f"create image version {version}",
                lambda p: versions.begin_create_or_update(rg, gallery, name, version, body, polling=p),
            )
            raise _Wait(None, self.poll_interval)
        if (current.get("tags") or {}).get(TAG_RUN) != ctx.build.run.run_id:
            raise ArmFailure(
                "GalleryImageVersionExists",
                f"{gallery_image_id}/versions/{version} already exists and was not made by this run; "
                "change properties.distribute[{index}].versioning (e.g. scheme Latest)".replace(
                    "{index}", str(index)
                ),
            )
        props = current.get("properties") or {}
        summary = (props.get("replicationStatus") or {}).get("summary") or []
        mine_region = next((s for s in summary if _region(s.get("region")) == _region(region)), None)
        artifact = str(current.get("id"))
        if mine_region is not None:
            state = mine_region.get("state")
            if state == "Completed":
                ctx.log.write(f"{artifact} replicated to {region}\n")
                return ReplicationResult(
                    run_output_name=output, region=region, status="succeeded", artifact_id=artifact
                )
            if state == "Failed":
                raise ArmFailure(
                    "ReplicationFailed",
                    f"replication of {version} to {region} failed: {mine_region.get('details')}",
                )
            ctx.log.write(f"replicating {version} to {region}: {mine_region.get('progress', 0)}%\n")
        if props.get("provisioningState") == "Failed":
            raise ArmFailure("ImageVersionFailed", f"gallery image version {version} failed to provision")
        raise _Wait(None, self.poll_interval)

    def _distribute_managed(
        self, ctx: _Ctx, image: dict[str, Any], target: dict[str, Any], index: int, region: str
    ) -> ReplicationResult:
        image_id = str(target.get("imageId") or "")
        parsed = ArmId.parse(image_id, f"properties.distribute[{index}].imageId")
        if image.get("trusted_launch"):
            raise ArmFailure(
                "TrustedLaunchNotSupported",
                f"properties.distribute[{index}]: a Trusted Launch build cannot be a managed image; "
                "use a SharedImage distributor with a Trusted Launch image definition",
            )
        location = str(target.get("location") or image["location"])
        arm = self.clients(parsed.subscription, ctx.build)
        rg, name = parsed.resource_group, parsed.name("images")
        properties: dict[str, Any] = {
            "sourceVirtualMachine": {"id": image["vm_id"]},
            "hyperVGeneration": image["hyper_v_generation"],
        }
        if _region(location) != _region(image["location"]):
            snapshot_id = self._snapshot_in(ctx, image, location)
            properties = {
                "hyperVGeneration": image["hyper_v_generation"],
                "storageProfile": {
                    "osDisk": {
                        "osType": image["os_type"],
                        "osState": "Generalized",
                        "snapshot": {"id": snapshot_id},
                    }
                },
            }
        result = self._ensure(
            ctx,
            f"managed image {name}",
            lambda: arm.compute.images.get(rg, name),
            lambda body, p: arm.compute.images.begin_create_or_update(rg, name, body, polling=p),
            lambda: {
                "location": location,
                "tags": self._tags(ctx, target.get("artifactTags") or {}),
                "properties": properties,
            },
        )
        return ReplicationResult(
            run_output_name=str(target.get("runOutputName") or ""),
            region=region,
            status="succeeded",
            artifact_id=str(result.get("id") or image_id),
        )

    def _snapshot_in(self, ctx: _Ctx, image: dict[str, Any], location: str) -> str:
        """The generalized OS disk as a snapshot in `location`: an incremental snapshot in the build
        region copied across with CopyStart (both transient, in the staging group). Returns its id."""
        rg, snapshots = image["resource_group"], ctx.arm.compute.snapshots
        sub = ctx.build.run.subscription_id
        disk_id = (
            f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{image['os_disk']}"
        )
        here, there = f"ib-{ctx.names.key}-snap", f"ib-{ctx.names.key}-snap-{_region(location)}"
        tags = self._tags(ctx)
        source = self._ensure(
            ctx,
            f"snapshot {here}",
            lambda: snapshots.get(rg, here),
            lambda body, p: snapshots.begin_create_or_update(rg, here, body, polling=p),
            lambda: {
                "location": image["location"],
                "tags": tags,
                "properties": {
                    "creationData": {"createOption": "Copy", "sourceResourceId": disk_id},
                    "incremental": True,
                },
            },
        )
        copy = self._ensure(
            ctx,
            f"snapshot {there}",
            lambda: snapshots.get(rg, there),
            lambda body, p: snapshots.begin_create_or_update(rg, there, body, polling=p),
            lambda: {
                "location": location,
                "tags": tags,
                "properties": {
                    "creationData": {"createOption": "CopyStart", "sourceResourceId": source["id"]},
                    "incremental": True,
                },
            },
        )
        done = float((copy.get("properties") or {}).get("completionPercent", 100))
        if done < 100:
            ctx.log.write(f"copying the OS disk snapshot to {location}: {done:.0f}%\n")
            raise _Wait(None, self.poll_interval)
        return str(copy["id"])

    def _distribute_vhd(
        self, ctx: _Ctx, image: dict[str, Any], target: dict[str, Any], index: int, region: str
    ) -> ReplicationResult:
        uri = str(target.get("uri") or "")
        output = str(target.get("runOutputName") or "")
        if not re.match(r"^https://[^/]+/[^/]+/.+", uri):
            raise ArmFailure(
                "InvalidVhdUri",
                f"properties.distribute[{index}].uri must name a blob "
                "(https://<account>.blob.core.windows.net/<container>/<name>.vhd): this provider deletes its "
                "staging group after each run, so it cannot keep a VHD there",
            )
        rg, disk = image["resource_group"], image["os_disk"]
        disks = ctx.arm.compute.disks
        blob = ctx.arm.blob(uri)
        if not ctx.state.get("copy_started"):
            sas = ((ctx.op_result or {}).get("properties") or {}).get("output", {}).get("accessSAS") or (
                ctx.op_result or {}
            ).get("accessSAS")
            if not sas:
                ctx.log.write(f"granting read access to {disk} for the VHD copy\n")
                started = ctx.arm.start(
                    f"grant access to {disk}",
                    lambda p: disks.begin_grant_access(
                        rg, disk, {"access": "Read", "durationInSeconds": 4 * 3600}, polling=p
                    ),
                )
                body = self._await_op(started, f"grant access to {disk}")
                sas = body.get("accessSAS")
                if not sas:
                    raise _Wait(None, self.poll_interval)
            # The SAS is a secret: used right here, never logged and never put into the Pending state.
            ctx.arm.call(f"copy VHD to {redact(uri)}", lambda: blob.start_copy_from_url(sas))
            ctx.state["copy_started"] = True
            ctx.log.write(f"copying the OS disk to {redact(uri)}\n")
            raise _Wait(None, self.poll_interval)
        props = ctx.arm.call(f"read {redact(uri)}", blob.get_blob_properties)
        copy = props.copy
        if copy.status == "pending":
            ctx.log.write(f"VHD copy: {copy.progress}\n")
            raise _Wait(None, self.poll_interval)
        ctx.arm.start(f"revoke access to {disk}", lambda p: disks.begin_revoke_access(rg, disk, polling=p))
        if copy.status != "success":
            raise ArmFailure(
                "VhdCopyFailed", f"copying the VHD ended {copy.status}: {copy.status_description}"
            )
        return ReplicationResult(
            run_output_name=output, region=region, status="succeeded", artifact_uri=uri.split("?", 1)[0]
        )

    # -- cleanup -----------------------------------------------------------------------------------

    def cleanup(self, build: BuildInput, *, keep: bool, log: LogSink) -> CleanupReport:
        """Delete the run's transient resources in dependency order; waits, within a budget, for each.
        A resource ARM refuses to delete is reported in `errors` and the others are still removed."""
        try:
            return self._cleanup(build, keep=keep, log=log)
        except ArmFailure as exc:
            log.write(f"cleanup failed: {exc.code}: {exc.arm_message}\n")
            return CleanupReport(errors=[f"{exc.code}: {exc.arm_message}"])

    def _cleanup(self, build: BuildInput, *, keep: bool, log: LogSink) -> CleanupReport:
        names = Names.of(build)
        arm = self.clients(build.run.subscription_id, build)
        rg = names.resource_group
        sub = build.run.subscription_id
        group = arm.get("read staging resource group", lambda: arm.resources.resource_groups.get(rg))
        report = CleanupReport()
        if group is None:
            log.write(f"cleanup: staging resource group {rg} does not exist, nothing to do\n")
            return report
        base = f"/subscriptions/{sub}/resourceGroups/{rg}/providers"
        if keep:
            kept = [
                f"{base}/Microsoft.Compute/virtualMachines/{names.vm}",
                f"/subscriptions/{sub}/resourceGroups/{rg}",
            ]
            log.write(f"cleanup: keeping the build VM {names.vm} in {rg} (errorHandling abort)\n")
            return CleanupReport(kept=kept)
        deadline = self._clock() + self._cleanup_budget
        removed: list[str] = []
        errors: list[str] = []
        compute, network = arm.compute, arm.network

        def wait(what: str, started: Started) -> OperationStatus | None:
            op = started.operation(what)
            while op is not None:
                try:
                    status = arm.operation_status(op)
                except Throttled as exc:
                    pause = exc.retry_after
                else:
                    if status.done:
                        return status
                    pause = status.retry_after
                if self._clock() + pause > deadline:
                    raise TransientProviderError(
                        f"cleanup: {what} is still running", hint="the cleanup activity is retried"
                    )
                self._sleep(pause)
            return None

        def gone(what: str, get: Callable[[], Any]) -> None:
            while arm.get(f"read {what}", get) is not None:
                if self._clock() + self.poll_interval > deadline:
                    raise TransientProviderError(f"cleanup: {what} is still being deleted", hint="retried")
                self._sleep(self.poll_interval)

        def listed(what: str, fn: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
            try:
                return arm.call(what, fn)
            except ArmFailure as exc:
                errors.append(f"{what}: {exc.code}: {exc.arm_message}")
                return []

        def delete(what: str, rid: str, get: Callable[[], Any], begin: Callable[[Any], Any]) -> None:
            try:
                existing = arm.get(f"read {what}", get)
            except ArmFailure as exc:
                errors.append(f"{rid}: {exc.code}: {exc.arm_message}")
                return
            if existing is None:
                return
            if _state_of(existing) == "Deleting":  # an earlier attempt started it: wait, do not restart
                gone(what, get)
                log.write(f"cleanup: deleted {what}\n")
                removed.append(rid)
                return
            while True:
                try:
                    started = arm.start(f"delete {what}", begin)
                    break
                except ArmFailure as exc:
                    if exc.status == 404:
                        return
                    errors.append(f"{rid}: {exc}")
                    return
                except Throttled as exc:
                    if self._clock() + exc.retry_after > deadline:
                        raise
                    self._sleep(exc.retry_after)
            status = wait(f"delete {what}", started)
            if status is not None and status.state != "Succeeded":
                errors.append(f"{rid}: {status.error_code}: {status.error_message}")
                return
            log.write(f"cleanup: deleted {what}\n")
            removed.append(rid)

        delete(
            f"VM {names.vm}",
            f"{base}/Microsoft.Compute/virtualMachines/{names.vm}",
            lambda: compute.virtual_machines.get(rg, names.vm),
            lambda p: compute.virtual_machines.begin_delete(rg, names.vm, polling=p),
        )
        delete(
            f"network interface {names.nic}",
            f"{base}/Microsoft.Network/networkInterfaces/{names.nic}",
            lambda: network.network_interfaces.get(rg, names.nic),
            lambda p: network.network_interfaces.begin_delete(rg, names.nic, polling=p),
        )
        public_ips = listed(
            "list public IPs", lambda: [dict(i) for i in network.public_ip_addresses.list(rg)]
        )
        for ip in public_ips:
            if (ip.get("tags") or {}).get(TAG_RUN) == build.run.run_id:
                ip_name = str(ip["name"])
                delete(
                    f"public IP {ip_name}",
                    str(ip["id"]),
                    partial(network.public_ip_addresses.get, rg, ip_name),
                    partial(_polled, network.public_ip_addresses.begin_delete, rg, ip_name),
                )
        disk_names = [names.os_disk] + [
            names.data_disk(lun) for lun in range(len(_props(build).get("additionalDataDisks") or []))
        ]
        for disk in disk_names:
            try:
                existing = arm.get(f"read disk {disk}", partial(compute.disks.get, rg, disk))
                if existing and (existing.get("properties") or {}).get("diskState") == "ActiveSAS":
                    wait(
                        f"revoke access to {disk}",
                        arm.start(
                            f"revoke access to {disk}",
                            partial(_polled, compute.disks.begin_revoke_access, rg, disk),
                        ),
                    )
            except ArmFailure as exc:
                errors.append(f"revoke access to {disk}: {exc.code}: {exc.arm_message}")
            delete(
                f"disk {disk}",
                f"{base}/Microsoft.Compute/disks/{disk}",
                partial(compute.disks.get, rg, disk),
                partial(_polled, compute.disks.begin_delete, rg, disk),
            )
        snapshots = listed(
            "list snapshots", lambda: [dict(x) for x in compute.snapshots.list_by_resource_group(rg)]
        )
        for snap in snapshots:
            if (snap.get("tags") or {}).get(TAG_RUN) == build.run.run_id:
                snap_name = str(snap["name"])
                delete(
                    f"snapshot {snap_name}",
                    str(snap["id"]),
                    partial(compute.snapshots.get, rg, snap_name),
                    partial(_polled, compute.snapshots.begin_delete, rg, snap_name),
                )
        delete(
            f"image {names.image}",
            f"{base}/Microsoft.Compute/images/{names.image}",
            lambda: compute.images.get(rg, names.image),
            lambda p: compute.images.begin_delete(rg, names.image, polling=p),
        )
        delete(
            f"virtual network {names.vnet}",
            f"{base}/Microsoft.Network/virtualNetworks/{names.vnet}",
            lambda: network.virtual_networks.get(rg, names.vnet),
            lambda p: network.virtual_networks.begin_delete(rg, names.vnet, polling=p),
        )
        delete(
            f"network security group {names.nsg}",
            f"{base}/Microsoft.Network/networkSecurityGroups/{names.nsg}",
            lambda: network.network_security_groups.get(rg, names.nsg),
            lambda p: network.network_security_groups.begin_delete(rg, names.nsg, polling=p),
        )
        if (group.get("tags") or {}).get(TAG_RUN) == build.run.run_id and not errors:
            delete(
                f"staging resource group {rg}",
                f"/subscriptions/{sub}/resourceGroups/{rg}",
                lambda: arm.resources.resource_groups.get(rg),
                lambda p: arm.resources.resource_groups.begin_delete(rg, polling=p),
            )
        return CleanupReport(removed=removed, errors=errors)


def _app_storage_account(env: Any) -> str:
    """The app's own storage account name (AzureWebJobsStorage in any of its forms), lower-case, or ''."""
    name = str(env.get("AzureWebJobsStorage__accountName") or "")
    if not name:
        uri = str(env.get("AzureWebJobsStorage__blobServiceUri") or "")
        name = urlsplit(uri).netloc.split(".", 1)[0] if uri else ""
    if not name:
        match = re.search(r"AccountName=([^;]+)", str(env.get("AzureWebJobsStorage") or ""), re.IGNORECASE)
        name = match.group(1) if match else ""
    return name.lower()


@cache
def _throwaway_ssh_key() -> str:
    """An OpenSSH RSA public key whose private key is dropped at once (Azure requires some credential).
    One per worker process: with no private half anywhere, sharing it between build VMs grants nothing."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode("ascii") + " imagebuilder-throwaway"


def _polled(begin: Callable[..., Any], *args: Any) -> Any:
    """Call an SDK `begin_*(*args[:-1], polling=args[-1])` (for functools.partial)."""
    *positional, polling = args
    return begin(*positional, polling=polling)


def begin_with(begin: Callable[[Any, Any], Any], body: dict[str, Any]) -> Callable[[Any], Any]:
    """Bind a request body to an SDK `begin_*` taking (body, polling)."""
    return lambda polling: begin(body, polling)


def find_orphans(
    subscription_id: str,
    *,
    provider: AzureProvider | None = None,
    active_runs: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, str]]:
    """Resource groups and resources tagged by this app whose run is not in `active_runs` (for a sweeper)."""
    arm = (provider or AzureProvider()).clients(subscription_id)
    found: list[dict[str, str]] = []
    flt = f"tagName eq '{TAG_RUN}'"
    groups = arm.call(
        "list tagged resource groups",
        lambda: [dict(g) for g in arm.resources.resource_groups.list(filter=flt)],
    )
    items = arm.call(
        "list tagged resources", lambda: [dict(r) for r in arm.resources.resources.list(filter=flt)]
    )
    for item in groups + items:
        tags = item.get("tags") or {}
        if tags.get(TAG_RUN) in active_runs:
            continue
        found.append(
            {
                "id": str(item.get("id")),
                "type": str(item.get("type") or "Microsoft.Resources/resourceGroups"),
                "template": str(tags.get(TAG_TEMPLATE, "")),
                "run": str(tags.get(TAG_RUN, "")),
            }
        )
    return found


__all__ = ["AzureProvider", "Names", "RunRef", "find_orphans"]
