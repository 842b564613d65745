"""The generalize phase of the Azure provider: the image's inventory read first (inventory.py), then
deprovisioning or Sysprep started detached, the power-state wait, deallocation and ARM's generalize.
"""

from __future__ import annotations

from imagebuilder.pipeline.messages import (
    ErrorInfo,
    StepResult,
)
from imagebuilder.providers.azure import inventory, runcommand, scripts
from imagebuilder.providers.azure.clients import ArmFailure
from imagebuilder.providers.azure.context import (
    Ctx,
    NotYet,
    await_op,
    later,
    tail,
)
from imagebuilder.providers.azure.handles import BuildHandle

GENERALIZE_LAUNCH_SECONDS = 600  # the run command that starts deprovisioning only writes and starts it


def generalize(ctx: Ctx) -> StepResult | NotYet:
    """Deprovision (Linux) or Sysprep (Windows) detached in the guest, wait for the VM to power itself
    off (the guest agent is gone by then, so only the power state tells), deallocate, generalize."""
    env = BuildHandle.of(ctx.args["env"])
    rg, vm = env.resource_group, env.vm
    compute = ctx.arm.compute
    linux = env.os_type == "Linux"
    if not ctx.state.get("launched"):
        listed = inventory.collect(ctx, env)  # what the image holds, read while the guest still runs
        if isinstance(listed, NotYet):
            return listed
        script = scripts.deprovision_linux() if linux else scripts.sysprep()
        ran = runcommand.run(ctx, env, "generalize", script, timeout=GENERALIZE_LAUNCH_SECONDS)
        if isinstance(ran, NotYet):
            return ran
        code, output, error = ran
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
                    log_tail=tail(output + "\n" + error),
                    log_uri=ctx.log.uri or None,
                ),
            )
        ctx.state["launched"] = ctx.settings.clock()
        ctx.log.write(f"{'deprovisioning' if linux else 'Sysprep'} started; waiting for {vm} to stop\n")
    view = ctx.arm.get("read VM instance view", lambda: compute.virtual_machines.instance_view(rg, vm)) or {}
    codes = {str(s.get("code")) for s in view.get("statuses") or []}
    if "OSState/generalized" in codes:
        return StepResult(status="succeeded", step="generalize")
    stopped = codes & {"PowerState/stopped", "PowerState/deallocated", "PowerState/deallocating"}
    if not stopped and not ctx.state.get("deallocating"):
        limit = ctx.settings.generalize_seconds
        if ctx.settings.clock() - float(ctx.state["launched"]) > limit:
            raise ArmFailure(
                "DeprovisionTimedOut",
                f"{vm} did not power off within {limit}s after "
                f"{'waagent -deprovision+user' if linux else 'Sysprep'} started: it failed or hung in "
                "the guest (see the VM's boot diagnostics; errorHandling onCustomizerError abort keeps "
                "the VM)",
            )
        return later(ctx)
    if "PowerState/deallocated" not in codes:
        if not ctx.state.get("deallocating"):
            ctx.state["deallocating"] = True
            ctx.log.write(f"{vm} stopped; deallocating\n")
            started = ctx.arm.start(
                f"deallocate {vm}", lambda p: compute.virtual_machines.begin_deallocate(rg, vm, polling=p)
            )
            waiting = await_op(started, f"deallocate {vm}")
            if isinstance(waiting, NotYet):
                return waiting
        return later(ctx)
    ctx.log.write(f"generalizing {vm}\n")
    ctx.arm.call(f"generalize {vm}", lambda: compute.virtual_machines.generalize(rg, vm))
    return StepResult(status="succeeded", step="generalize")
