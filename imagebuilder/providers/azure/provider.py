"""`AzureProvider`: the ComputeProvider seam over ARM (a build VM in the user's subscription).

A thin class: settings and credentials read once, one delegation per seam method, the `Pending` boundary.
The work is in one module per phase or resource kind:

    source.py      prepare: source resolution, script/file checksums   buildenv.py  staging group, network, VM
    runcommand.py  Run Command: create, stream output, deadline, restart   steps.py  customizers, validators
    generalize.py  detached deprovision/Sysprep, power-state wait       capture.py   managed image or the VM
    distribute.py  gallery versions, managed images, VHD               cleanup.py   a run's resources
    template.py    create/delete template (staging.py: the group)      runlog.py    output to append blobs
    context.py     Settings, Ctx, NotYet and ARM helpers                names.py     ArmId, Names
    clients.py     SDK clients, operation status, error sorting         scripts.py   in-VM script text
    inventory.py   the image's SBOM inventory, read before generalize  retention.py gallery version retention

No call waits for an ARM operation: a phase returns `NotYet` and the provider returns a `Pending` carrying
ids and step state only (the template comes back from the poll activity's build); cleanup alone waits,
within a budget.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
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
    StepResult,
    TemplateInput,
    TemplateStaging,
)
from imagebuilder.providers.azure import (
    buildenv,
    capture,
    distribute,
    generalize,
    source,
    steps,
)
from imagebuilder.providers.azure import template as lifecycle
from imagebuilder.providers.azure.cleanup import cleanup as cleanup_run
from imagebuilder.providers.azure.clients import (
    TRANSIENT_CODES,
    ArmFailure,
    AzureClients,
    Throttled,
    WritePacer,
    make_credential,
)
from imagebuilder.providers.azure.context import (
    TAG_RUN,
    TAG_TEMPLATE,
    Ctx,
    NotYet,
    Settings,
    step_name,
    template_or_none,
)
from imagebuilder.providers.azure.handles import BuildHandle
from imagebuilder.providers.azure.names import Names
from imagebuilder.providers.base import (
    ComputeProvider,
    LogSink,
    ProviderConfigError,
    TemplateUnreadable,
)
from imagebuilder.settings import AzureSettings

# method name -> the phase function that does it (each takes a Ctx, returns its result or NotYet)
PHASES: dict[str, Callable[[Ctx], Any]] = {
    "prepare": source.prepare,
    "create_build_env": buildenv.create_build_env,
    "customize": steps.customize,
    "validate": steps.validate,
    "generalize": generalize.generalize,
    "capture": capture.capture,
    "distribute": distribute.distribute,
}


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
        cfg = AzureSettings.from_env(env)  # a bad setting is a ValueError naming it
        self.config = cfg
        self._credential = credential
        self._credential_mode = cfg.credential_mode
        self._client_id = cfg.client_id
        self._transport = transport
        self._base_url = base_url or cfg.arm_endpoint
        self.poll_interval = int(poll_interval or cfg.poll_seconds)
        self._sleep = sleep
        self._clock = clock
        self._cleanup_budget = float(cleanup_budget_seconds or cfg.cleanup_seconds)
        write_interval = min_write_interval if min_write_interval is not None else cfg.write_interval
        self.pacer = WritePacer(write_interval, clock, sleep)
        self._clients: dict[str, AzureClients] = {}
        self._app_account = _app_storage_account(env)
        self._artifacts_container = cfg.artifacts_container
        self._generalize_seconds = cfg.generalize_seconds

    # -- plumbing ----------------------------------------------------------------------------------

    def _template_identity(self, build: BuildInput | None) -> str | None:
        if self._credential is not None or self._credential_mode != "template" or build is None:
            return None
        template = template_or_none(build)  # unreadable: the app's credential; the phase then fails
        identity = template.identity if template is not None else None
        identities = list((identity.user_assigned_identities if identity is not None else None) or {})
        return identities[0] if identities else None

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

    @property
    def settings(self) -> Settings:
        """What every phase reads (one object, built from this provider's options)."""
        return Settings(
            clients=self.clients,
            clock=self._clock,
            sleep=self._sleep,
            poll_interval=self.poll_interval,
            cleanup_budget=self._cleanup_budget,
            generalize_seconds=self._generalize_seconds,
            inventory=self.config.inventory,
            security_mirror=self.config.security_mirror,
            ubuntu_security_mirror=self.config.ubuntu_security_mirror,
            app_account=self._app_account,
            artifacts_container=self._artifacts_container,
        )

    def _drive(
        self,
        method: str,
        build: BuildInput,
        args: dict[str, Any],
        log: LogSink,
        state: dict[str, Any] | None = None,
        op_result: dict[str, Any] | None = None,
    ) -> Any:
        ctx: Ctx | None = None
        try:
            arm = self.clients(build.run.subscription_id, build)
            ctx = Ctx(build, log, args, dict(state or {}), arm, Names.of(build), self.settings, op_result)
            result = PHASES[method](ctx)
            if isinstance(result, NotYet):
                return self._pending(method, build, args, ctx.state, result.op, result.retry_after)
            return result
        except TemplateUnreadable as exc:  # permanent: the same template never reads differently
            error = exc.error_info(step_name(method, None, args), log)
            log.write(f"{error.step} failed: {error.code}: {error.message}\n")
            return self._failed(method, build, args, error)
        except Throttled as throttled:
            log.write(f"ARM throttled the request; resuming in {throttled.retry_after}s\n")
            return self._pending(method, build, args, ctx.state if ctx else {}, None, throttled.retry_after)
        except ArmFailure as failure:
            error = ErrorInfo(
                code=failure.code,
                message=failure.arm_message,
                step=step_name(method, template_or_none(build), args),
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

    def _failed(self, method: str, build: BuildInput, args: dict[str, Any], error: ErrorInfo) -> Any:
        if method == "prepare":
            return PrepareResult(status="failed", error=error)
        if method == "create_build_env":
            return BuildHandle(status="failed", error=error).as_env()
        if method == "capture":
            return CaptureResult(status="failed", error=error)
        if method == "distribute":
            template = template_or_none(build)
            targets = template.properties.distribute if template is not None else []
            index = int(args["target_index"])
            name = targets[index].run_output_name if index < len(targets) else ""
            return ReplicationResult(
                run_output_name=name, region=args["region"], status="failed", error=error
            )
        return StepResult(status="failed", step=error.step or method, error=error)

    def _drive_on_env(
        self, method: str, step: str, build: BuildInput, env: BuildEnv, log: LogSink, **extra: Any
    ) -> Any:
        """Drive a phase that runs on the build VM, unless creating that VM failed: then the phase fails
        with the same error (named `step`), and nothing is called."""
        handle = BuildHandle.of(env)
        if handle.status == "failed" and handle.error is not None:
            if method == "capture":
                return CaptureResult(status="failed", error=handle.error)
            return StepResult(status="failed", step=step, error=handle.error)
        return self._drive(method, build, {"env": env.model_dump(mode="json"), **extra}, log)

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
                    step=step_name(method, template_or_none(build), args),
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
        result: StepResult | Pending = self._drive_on_env(
            "customize", f"customize[{index}]", build, env, log, index=index
        )
        return result

    def validate(self, build: BuildInput, env: BuildEnv, log: LogSink) -> StepResult | Pending:
        result: StepResult | Pending = self._drive_on_env("validate", "validate", build, env, log)
        return result

    def generalize(self, build: BuildInput, env: BuildEnv, log: LogSink) -> StepResult | Pending:
        result: StepResult | Pending = self._drive_on_env("generalize", "generalize", build, env, log)
        return result

    def capture(self, build: BuildInput, env: BuildEnv, log: LogSink) -> CaptureResult | Pending:
        result: CaptureResult | Pending = self._drive_on_env("capture", "capture", build, env, log)
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

    def create_template(self, template: TemplateInput, log: LogSink) -> TemplateStaging:
        """Check the source and the gallery targets as AIB does at create, then make (or adopt) the
        template's staging resource group (template.py, staging.py)."""
        return lifecycle.create_template(self.settings, template, log)

    def delete_template(self, template: TemplateInput, log: LogSink) -> CleanupReport:
        """Delete the staging group this provider created; empty and untag a user's group."""
        return lifecycle.delete_template(self.settings, template, log)

    def cleanup(self, build: BuildInput, *, keep: bool, log: LogSink) -> CleanupReport:
        """Delete the run's transient resources in dependency order; waits, within a budget, for each.
        A resource ARM refuses to delete is reported in `errors` and the others are still removed."""
        try:
            return cleanup_run(self.settings, build, keep=keep, log=log)
        except ArmFailure as exc:
            log.write(f"cleanup failed: {exc.code}: {exc.arm_message}\n")
            return CleanupReport(errors=[f"{exc.code}: {exc.arm_message}"])


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
