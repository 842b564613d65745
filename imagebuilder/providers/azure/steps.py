"""Customizers and in-VM validators of the Azure provider: Shell / PowerShell / File steps, WindowsRestart and
WindowsUpdate, each through runcommand.py.
"""

from __future__ import annotations

from imagebuilder.pipeline.messages import (
    ErrorInfo,
    StepResult,
)
from imagebuilder.providers.azure import runcommand, scripts
from imagebuilder.providers.azure.clients import ArmFailure, redact
from imagebuilder.providers.azure.context import (
    ADMIN_USER,
    Ctx,
    NotYet,
    step_name,
    tail,
)
from imagebuilder.providers.azure.handles import BuildHandle
from imagebuilder.template.models import (
    Customizer,
    FileCustomizer,
    FileValidator,
    PowerShellCustomizer,
    PowerShellValidator,
    ShellCustomizer,
    ShellValidator,
    Validator,
    WindowsRestartCustomizer,
    WindowsUpdateCustomizer,
)

MAX_WINDOWS_UPDATE_PASSES = 20


def script_step(
    ctx: Ctx, env: BuildHandle, key: str, step: Customizer | Validator, label: str
) -> StepResult | NotYet:
    """Shell / PowerShell / File, as a customizer or an in-VM validator."""
    kind = step.type
    os_type = env.os_type
    started = float(ctx.state.setdefault(f"started:{key}", ctx.settings.clock()))  # across polls
    uri = _fetched_uri(step)
    sha = env.artifacts.get(uri) if uri else None
    if uri and not sha:
        raise ArmFailure("ArtifactNotStaged", f"{label}: {redact(str(uri))} was not fetched by prepare")
    valid = [0]
    identity = env.identities[0] if env.identities else None  # for private blobs, read from inside the VM
    if isinstance(step, ShellCustomizer | ShellValidator):
        if os_type != "Linux":
            raise ArmFailure("InvalidCustomizer", f"{label}: Shell runs on Linux; this source is {os_type}")
        script = scripts.shell(step, sha, identity)
    elif isinstance(step, PowerShellCustomizer | PowerShellValidator):
        if os_type != "Windows":
            raise ArmFailure(
                "InvalidCustomizer", f"{label}: PowerShell runs on Windows; this source is {os_type}"
            )
        if step.run_as_system and not step.run_elevated:
            raise ArmFailure("InvalidCustomizer", f"{label}: runAsSystem needs runElevated: true")
        valid = list(step.valid_exit_codes or [0])  # integers: the model says so
        script = scripts.powershell(step, sha, identity, ADMIN_USER)
    elif isinstance(step, FileCustomizer | FileValidator):
        if not step.destination or not sha:
            raise ArmFailure("InvalidCustomizer", f"{label}: File needs sourceUri and destination")
        script = (
            scripts.file_linux(step, sha, identity)
            if os_type == "Linux"
            else scripts.file_windows(step, sha, identity)
        )
    else:
        raise ArmFailure("InvalidCustomizer", f"{label}: type {kind!r} is not supported here")
    ran = runcommand.run(ctx, env, key, script)
    if isinstance(ran, NotYet):
        return ran
    code, output, error = ran
    duration = max(0.0, ctx.settings.clock() - started)
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
                log_tail=tail(output + "\n" + error),
                log_uri=ctx.log.uri or None,
            ),
        )
    return StepResult(status="succeeded", step=label, exit_code=code, duration_seconds=duration)


def _fetched_uri(step: Customizer | Validator) -> str | None:
    """The file the step downloads in the VM (staged and checksummed by prepare), if any."""
    if isinstance(step, FileCustomizer | FileValidator):
        return step.source_uri
    if isinstance(step, ShellCustomizer | ShellValidator | PowerShellCustomizer | PowerShellValidator):
        return step.script_uri
    return None


def customize(ctx: Ctx) -> StepResult | NotYet:
    env = BuildHandle.of(ctx.args["env"])
    index = int(ctx.args["index"])
    steps = ctx.template.properties.customizers
    if index >= len(steps):
        raise ArmFailure("InvalidCustomizer", f"properties.customize[{index}] does not exist")
    step = steps[index]
    label = step_name("customize", ctx.template, ctx.args)
    kind = step.type
    if kind in ("Shell", "PowerShell", "File"):
        return script_step(ctx, env, f"customize-{index}", step, label)
    if env.os_type != "Windows":
        raise ArmFailure("InvalidCustomizer", f"{label}: {kind} needs a Windows source")
    if isinstance(step, WindowsRestartCustomizer):
        timeout = scripts.parse_duration(step.restart_timeout, 300)
        command = step.restart_command or scripts.DEFAULT_RESTART_COMMAND
        waiting = runcommand.restart(
            ctx, env, str(index), command, step.restart_check_command or None, timeout
        )
        return waiting or StepResult(status="succeeded", step=label)
    if isinstance(step, WindowsUpdateCustomizer):
        return windows_update(ctx, env, index, step, label)
    raise ArmFailure("InvalidCustomizer", f"{label}: type {kind!r} is not supported")


def windows_update(
    ctx: Ctx, env: BuildHandle, index: int, step: WindowsUpdateCustomizer, label: str
) -> StepResult | NotYet:
    try:
        script = scripts.windows_update(step)
    except ValueError as exc:
        raise ArmFailure("InvalidCustomizer", f"{label}.filters: {exc}") from exc
    st = ctx.state.setdefault("wu", {"pass": 0, "installed": 0, "stage": "update"})
    while True:
        n = int(st["pass"])
        if n >= MAX_WINDOWS_UPDATE_PASSES:
            raise ArmFailure("WindowsUpdateNotConverging", f"{label}: updates still pending after {n} passes")
        if st["stage"] == "update":
            ran = runcommand.run(ctx, env, f"wu-{index}-{n}", script)
            if isinstance(ran, NotYet):
                return ran
            code, output, error = ran
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
                        log_tail=tail(output + "\n" + error),
                        log_uri=ctx.log.uri or None,
                    ),
                )
            runcommand.forget(ctx, env, f"wu-{index}-{n}")
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
            waiting = runcommand.restart(
                ctx, env, f"wu-{index}-{n}", scripts.DEFAULT_RESTART_COMMAND, None, 3600
            )
            if waiting is not None:
                return waiting
            st["pass"] = n + 1
            st["stage"] = "update"


def validate(ctx: Ctx) -> StepResult | NotYet:
    env = BuildHandle.of(ctx.args["env"])
    validations = ctx.template.properties.validators
    if not validations:
        return StepResult(status="skipped", step="validate")
    done = int(ctx.state.get("next", 0))
    for j in range(done, len(validations)):
        step = validations[j]
        label = f"validate.inVMValidations[{j}] ({step.name or step.type})"
        result = script_step(ctx, env, f"validate-{j}", step, label)
        if isinstance(result, NotYet) or result.status == "failed":
            return result
        ctx.state["next"] = j + 1
    return StepResult(status="succeeded", step="validate", details={"validations": len(validations)})
