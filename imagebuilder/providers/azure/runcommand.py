"""Managed Run Command, the one way into the build VM: create, stream the output (append blobs, or the
instance view's sliding tail), a deadline per command, removal, and restarts (Windows).
"""

from __future__ import annotations

from typing import Any

from imagebuilder.providers.azure import scripts
from imagebuilder.providers.azure.clients import ArmFailure
from imagebuilder.providers.azure.context import (
    Ctx,
    NotYet,
    later,
    run_tags,
)
from imagebuilder.providers.azure.handles import BuildHandle
from imagebuilder.providers.azure.runlog import RunLogStore
from imagebuilder.providers.base import TransientProviderError

TERMINAL_RUN_STATES = frozenset({"Succeeded", "Failed", "TimedOut", "Canceled"})
RUN_COMMAND_TAIL = 4096  # Run Command's instance view keeps this much of each stream (the last part)
_LOST = (
    "[output lost here: Run Command keeps only the last 4 KB; give the app a storage account "
    "(AzureWebJobsStorage__accountName) so output streams to append blobs]\n"
)
ANCHOR_CHARS = 256  # how much of the last logged output finds the new part of a sliding tail
RUN_COMMAND_MARGIN = 300  # seconds past a run command's timeoutInSeconds before it counts as lost


def run(
    ctx: Ctx, env: BuildHandle, key: str, script: str, timeout: int | None = None, *, quiet: bool = False
) -> tuple[int, str, str] | NotYet:
    """Run `script` in the build VM through a managed run command named after `key`.

    Returns `NotYet` until it finished; streams new output into the log as it appears. Returns
    (exit code, stdout, stderr). Every run command has a deadline of its own (its timeoutInSeconds plus
    a margin): a guest agent that stopped reporting (a script stopped it, the VM hung) never moves the
    run command to a terminal state, and the build fails with RunCommandNoResponse instead of waiting
    out buildTimeoutInMinutes. `quiet`: the output is data (the inventory), not logged; only the
    start is."""
    rg, vm = env.resource_group, env.vm
    name = f"ib-{key}"
    commands = ctx.arm.compute.virtual_machine_run_commands
    current = ctx.arm.get(
        f"read run command {name}",
        lambda: commands.get_by_virtual_machine(rg, vm, name, expand="instanceView"),
    )
    deadlines = ctx.state.setdefault("deadlines", {})
    if current is None:
        build_timeout = (ctx.template.properties.build_timeout_in_minutes or 0) * 60 or 5400
        seconds = min(timeout or build_timeout, 5400)
        properties: dict[str, Any] = {
            "source": {"script": script},
            "asyncExecution": False,
            "timeoutInSeconds": seconds,
            "treatFailureAsDeploymentFailure": False,
        }
        body = {"location": env.location, "tags": run_tags(ctx), "properties": properties}
        store = run_logs(ctx)
        if store is not None:  # the whole output, not the instance view's 4 KB tail
            properties.update(store.create(store.streams(ctx.names.key, name), seconds + RUN_COMMAND_MARGIN))
            ctx.state.setdefault("blobs", []).append(name)
        ctx.log.write(f"run command {name} started\n")
        ctx.arm.start(
            f"run command {name}",
            lambda p: commands.begin_create_or_update(rg, vm, name, body, polling=p),
        )
        deadlines[name] = ctx.settings.clock() + seconds + RUN_COMMAND_MARGIN
        # Not waiting on the operation: each poll re-reads the instance view and streams new output.
        return later(ctx)
    props = current.get("properties") or {}
    view = props.get("instanceView") or {}
    output, error = str(view.get("output") or ""), str(view.get("error") or "")
    execution = str(view.get("executionState") or "")
    terminal = execution in TERMINAL_RUN_STATES
    store = run_logs(ctx) if name in ctx.state.get("blobs", []) else None
    if quiet:
        if store is not None and terminal:
            streams = store.streams(ctx.names.key, name)
            output, error = store.tail(streams.output), store.tail(streams.error)
    elif store is not None:
        view_output, view_error = output, error
        output, error = stream_blobs(ctx, store, name, terminal)
        if terminal and not (output or error) and (view_output or view_error):
            # the VM could not write to the blobs (a firewall on the app's storage account, say): what the
            # instance view kept is better than nothing
            ctx.log.write(
                "[the run command's output blobs stayed empty; the last 4 KB from Run Command follow]\n"
                + view_output
                + ("\n" if view_output and not view_output.endswith("\n") else "")
                + view_error
            )
            output, error = view_output, view_error
    else:
        stream_tail(ctx, name, output, terminal)
    if terminal:
        deadlines.pop(name, None)
        if store is None and not quiet and error.strip() and not ctx.state.get(f"err:{name}"):
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
    deadline = deadlines.setdefault(name, ctx.settings.clock() + 5400 + RUN_COMMAND_MARGIN)
    if ctx.settings.clock() > float(deadline):
        raise ArmFailure(
            "RunCommandNoResponse",
            f"run command {name} reported no result past its timeout plus {RUN_COMMAND_MARGIN}s "
            f"(state {execution or 'unknown'}): the VM guest agent stopped reporting. A script that "
            "stops or restarts the agent (waagent -deprovision, sysprep, a reboot) never reports back; "
            "leave generalization to the build, or restart with a WindowsRestart customizer",
        )
    return later(ctx)


def run_logs(ctx: Ctx) -> RunLogStore | None:
    """Where run commands append their whole output (the app's storage account), if configured."""
    return RunLogStore(ctx.arm, ctx.settings.app_account) if ctx.settings.app_account else None


def stream_blobs(ctx: Ctx, store: RunLogStore, name: str, terminal: bool) -> tuple[str, str]:
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


def stream_tail(ctx: Ctx, name: str, output: str, terminal: bool) -> None:
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


def forget(ctx: Ctx, env: BuildHandle, key: str) -> None:
    """Delete a run command whose result is already in the step state (best effort, not awaited),
    so that repeated passes (Windows Update, restart checks) do not pile up run commands on the VM."""
    name = f"ib-{key}"
    commands = ctx.arm.compute.virtual_machine_run_commands
    try:
        ctx.arm.start(
            f"delete run command {name}",
            lambda p: commands.begin_delete(env.resource_group, env.vm, name, polling=p),
        )
    except (ArmFailure, TransientProviderError) as exc:
        ctx.log.write(f"note: run command {name} stays until the VM is deleted ({exc})\n")


def restart(
    ctx: Ctx, env: BuildHandle, key: str, command: str, check: str | None, timeout: int
) -> NotYet | None:
    """Restart the VM; None once the guest agent is back and the VM booted after the request."""
    st = ctx.state.setdefault(f"restart:{key}", {})
    if "requested_at" not in st:
        st["requested_at"] = ctx.settings.clock()
        st["stage"] = "restart"
        st["attempt"] = 0
    deadline = float(st["requested_at"]) + timeout
    if st["stage"] == "restart":
        scheduled = run(ctx, env, f"restart-{key}", scripts.schedule_restart(command))
        if isinstance(scheduled, NotYet):
            return scheduled
        forget(ctx, env, f"restart-{key}")
        if scheduled[0] != 0:
            raise ArmFailure("RestartFailed", f"scheduling the restart exited with {scheduled[0]}")
        st["stage"] = "wait"
        return later(ctx)
    if st["stage"] == "wait":
        view = (
            ctx.arm.get(
                "read VM instance view",
                lambda: ctx.arm.compute.virtual_machines.instance_view(env.resource_group, env.vm),
            )
            or {}
        )
        statuses = (view.get("vmAgent") or {}).get("statuses") or []
        ready = any(s.get("displayStatus") == "Ready" for s in statuses)
        if not ready:
            if ctx.settings.clock() > deadline:
                raise ArmFailure("RestartTimeout", f"the VM did not come back within {timeout}s")
            return later(ctx)
        st["stage"] = "check"
    try:
        checked = run(ctx, env, f"check-{key}-{st['attempt']}", scripts.restart_check(check))
        if isinstance(checked, NotYet):
            return checked
        code, output, _ = checked
        forget(ctx, env, f"check-{key}-{st['attempt']}")
        boot = scripts.parse_marker(output, scripts.MARKER_BOOT) or {}
        booted_after = float(boot.get("epoch", 0)) > float(st["requested_at"])
    except ArmFailure:
        code, booted_after = 1, False  # the agent was not ready for commands yet
    if code == 0 and booted_after:
        ctx.log.write("restart complete\n")
        return None
    if ctx.settings.clock() > deadline:
        raise ArmFailure("RestartTimeout", f"restart check did not pass within {timeout}s")
    st["attempt"] = int(st["attempt"]) + 1
    st["stage"] = "wait"
    return later(ctx)
