"""What every phase module of the Azure provider shares: the provider's settings (`Settings`), the view of
one call (`Ctx`: the run, the template as the frozen model, its log, its clients, the step state that
travels in the `Pending`), and the small ARM helpers built on them (tags, "ensure this resource exists",
"wait for this operation"). Phases read the template through `Ctx.template` (parsed once per call from the
JSON as stored, `providers.base.read_template`), never as a dict.

A phase function is a re-entrant step function: it inspects what exists (names derive from the run), does
the next thing, and returns either its result or `NotYet` (the provider turns that into a `Pending`
carrying ids, step state and the ARM operation to poll; `poll` calls the function again). Helpers that
may have to wait return `NotYet` too, and their callers hand it straight back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from imagebuilder.pipeline.messages import BuildInput
from imagebuilder.providers.azure.clients import ArmFailure, AzureClients, Started
from imagebuilder.providers.azure.names import Names
from imagebuilder.providers.base import LogSink, TemplateUnreadable, read_template
from imagebuilder.template.models import ImageTemplate

TAG_TEMPLATE = "imagebuilder-template"
TAG_RUN = "imagebuilder-run"
ADMIN_USER = "packer"
DEFAULT_GENERALIZE_SECONDS = 3600  # from the start of deprovisioning to the VM's stopped power state


@dataclass(frozen=True)
class NotYet:
    """The step cannot go on yet: poll `op` (an ARM operation) or just come back after `retry_after`."""

    op: dict[str, Any] | None
    retry_after: int


@dataclass(frozen=True)
class Settings:
    """The provider's settings, read once (AzureProvider.__init__), passed to every phase."""

    clients: Callable[[str, BuildInput | None], AzureClients]
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    poll_interval: int = 15
    cleanup_budget: float = 300.0
    generalize_seconds: int = DEFAULT_GENERALIZE_SECONDS
    inventory: bool = True  # read the image's inventory (SBOM) on the build VM before generalize
    security_mirror: str = ""  # Debian security mirror for the freshness check ("" = none)
    ubuntu_security_mirror: str = ""  # Ubuntu's ("" = none)
    app_account: str = ""  # the app's own storage account (run-command logs; refused as a script source)
    artifacts_container: str = "image-artifacts"


@dataclass
class Ctx:
    """One call of one phase: the run, its log, the subscription's clients, the step state."""

    build: BuildInput
    log: LogSink
    args: dict[str, Any]
    state: dict[str, Any]
    arm: AzureClients
    names: Names
    settings: Settings
    op_result: dict[str, Any] | None = field(default=None)

    @cached_property
    def template(self) -> ImageTemplate:
        """The template as the frozen model, parsed once per call (raises `TemplateUnreadable`)."""
        return read_template(self.build.template)

    @property
    def location(self) -> str:
        return self.template.location


def template_or_none(build: BuildInput) -> ImageTemplate | None:
    """The template as the model, or None when it cannot be read (for naming a failure, never for work)."""
    try:
        return read_template(build.template)
    except TemplateUnreadable:
        return None


def region(name: str | None) -> str:
    return re.sub(r"\s+", "", (name or "").lower())


def state_of(resource: dict[str, Any]) -> str:
    return str((resource.get("properties") or {}).get("provisioningState") or "Succeeded")


def tail(text: str, lines: int = 20) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-lines:]


def version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (-1,)


def step_name(method: str, template: ImageTemplate | None, args: dict[str, Any]) -> str:
    """How a failure names the step: customize[2] (name), distribute[0] (region), or the phase."""
    if method == "customize":
        index = int(args["index"])
        steps = template.properties.customizers if template is not None else []
        step = steps[index] if index < len(steps) else None
        return f"customize[{index}] ({(step.name or step.type) if step is not None else None})"
    if method == "distribute":
        return f"distribute[{args['target_index']}] ({args['region']})"
    return method


def run_tags(ctx: Ctx, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """managedResourceTags, `extra`, and the template/run tags every transient resource carries."""
    out = dict(ctx.template.properties.managed_resource_tags or {})
    out.update({str(k): str(v) for k, v in (extra or {}).items()})
    out[TAG_TEMPLATE] = ctx.build.run.template_id
    out[TAG_RUN] = ctx.build.run.run_id
    return out


def await_op(started: Started, what: str) -> dict[str, Any] | NotYet:
    """The finished body of an operation, or `NotYet` to poll it later."""
    op = started.operation(what)
    if op is None:
        return started.body
    return NotYet(op, started.retry_after)


def later(ctx: Ctx) -> NotYet:
    """Come back after the poll interval (nothing specific to poll)."""
    return NotYet(None, ctx.settings.poll_interval)


def disk_read_sas(ctx: Ctx, resource_group: str, disk: str, why: str) -> str | NotYet:
    """A read SAS on a managed disk (granted once: the grant's finished operation is `ctx.op_result` on
    the poll that follows), or `NotYet`. The SAS is a secret: use it at once; never log it or put it into
    the Pending state."""
    result = ctx.op_result or {}
    sas = ((result.get("properties") or {}).get("output") or {}).get("accessSAS") or result.get("accessSAS")
    if sas:
        return str(sas)
    ctx.log.write(f"{why}\n")
    disks = ctx.arm.compute.disks
    started = ctx.arm.start(
        f"grant access to {disk}",
        lambda p: disks.begin_grant_access(
            resource_group, disk, {"access": "Read", "durationInSeconds": 4 * 3600}, polling=p
        ),
    )
    body = await_op(started, f"grant access to {disk}")
    if isinstance(body, NotYet):
        return body
    granted = body.get("accessSAS")
    return str(granted) if granted else later(ctx)


def ensure(
    ctx: Ctx,
    what: str,
    get: Callable[[], Any],
    begin: Callable[[Any, Any], Any],
    body: Callable[[], dict[str, Any]],
) -> dict[str, Any] | NotYet:
    """GET a resource; PUT it when absent (returns after ARM accepted); wait while it provisions."""
    existing = ctx.arm.get(f"read {what}", get)
    if existing is None:
        ctx.log.write(f"creating {what}\n")
        started = ctx.arm.start(f"create {what}", begin_with(begin, body()))
        result = await_op(started, f"create {what}")
        if isinstance(result, NotYet):
            return result
        if state_of(result) == "Succeeded":
            return result
        return NotYet(None, started.retry_after)
    state = state_of(existing)
    if state == "Succeeded":
        return existing
    if state in ("Failed", "Canceled"):
        raise ArmFailure("ProvisioningFailed", f"{what} is in provisioning state {state}")
    return later(ctx)


def polled(begin: Callable[..., Any], *args: Any) -> Any:
    """Call an SDK `begin_*(*args[:-1], polling=args[-1])` (for functools.partial)."""
    *positional, polling = args
    return begin(*positional, polling=polling)


def begin_with(begin: Callable[[Any, Any], Any], body: dict[str, Any]) -> Callable[[Any], Any]:
    """Bind a request body to an SDK `begin_*` taking (body, polling)."""
    return lambda polling: begin(body, polling)
