"""Phase validate: `properties.validate.inVMValidations` against the customized (or, with
`sourceValidationOnly`, the source) tree: booted under QEMU for bootable images, in the sandbox on a
throwaway copy for images with no kernel (BusyBox)."""

from __future__ import annotations

import base64
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from imagebuilder.pipeline.messages import (
    BuildEnv,
    ErrorInfo,
    StepResult,
)
from imagebuilder.providers.base import LogSink
from imagebuilder.providers.local import (
    artifacts,
    buildroot,
    customize,
    customizers,
    proc,
    sandbox,
)
from imagebuilder.providers.local.context import (
    LOG_TAIL,
    RunContext,
)
from imagebuilder.providers.local.layout import (
    check_template_path,
    resolve_in_root,
)
from imagebuilder.template.models import FileValidator, ShellValidator


def validate(ctx: RunContext, env: BuildEnv, log: LogSink) -> StepResult:
    items = customizers.items(ctx.template, "validate")
    if not items:
        return StepResult(status="skipped", step="validate", details={"reason": "no inVMValidations"})
    missing = buildroot.env_ok(env, "validate", log)
    if missing:
        return missing
    checks = ctx.template.properties.validate_
    source_only = bool(checks and checks.source_validation_only)
    tree = Path(env.handle["lower"]) if source_only else Path(env.handle["root"])
    vlog = ctx.log(log, "validation")
    start = time.monotonic()
    if env.handle.get("bootable"):
        result = _validate_boot(ctx, env, items, tree, vlog, log)
    else:
        result = _validate_sandbox(ctx, env, items, tree, vlog, log)
    details = {
        **result.details,
        "sourceValidationOnly": source_only,
        "tree": "source" if source_only else "customized",
    }
    return result.model_copy(update={"details": details, "duration_seconds": time.monotonic() - start})


def _validate_sandbox(
    ctx: RunContext,
    env: BuildEnv,
    items: list[customizers.Step],
    tree: Path,
    vlog: LogSink,
    log: LogSink,
) -> StepResult:
    """Images that cannot boot (BusyBox) validate in the sandbox, on a throwaway copy of the tree."""
    layout = ctx.layout
    work = layout.validate_dir / "root"
    shutil.rmtree(layout.validate_dir, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc.run(["cp", "-a", "--reflink=auto", f"{tree}/.", str(work)], log=vlog, timeout=1800)
        ran: list[str] = []
        for i, item in enumerate(items):
            step = customizers.step_name("validate", i, item)
            plog = sandbox.PrefixedLog(vlog, step)
            plog.write(f"starting {step} (in the sandbox: the image has no kernel to boot)")
            outcome = customize.run_item(ctx, env, "validate", i, item, work, plog)
            res = customize.step_result(step, outcome, plog, log)
            if res.status == "failed":
                return res.model_copy(update={"details": {"mode": "sandbox", "ran": ran}})
            ran.append(step)
        return StepResult(status="succeeded", step="validate", details={"mode": "sandbox", "ran": ran})
    finally:
        shutil.rmtree(layout.validate_dir, ignore_errors=True)


def _validate_boot(
    ctx: RunContext,
    env: BuildEnv,
    items: list[customizers.Step],
    tree: Path,
    vlog: LogSink,
    log: LogSink,
) -> StepResult:
    """Bootable images: a throwaway disk from the tree, its own kernel, initrd and systemd booted
    directly under QEMU, the validators run inside as the build user with passwordless sudo, as on
    Image Builder (the same wrapper and sudo broker as in the sandbox, plus a sudoers drop-in for the
    image's own sudo, all in the throwaway copy only; tag imagebuilder.local.buildUser=root: as root).
    File validators become a check that writes the file (base64) before the next ones run. The serial
    log is kept in the run's logs."""
    from imagebuilder.providers.local import boot, disk

    layout = ctx.layout
    shutil.rmtree(layout.validate_dir, ignore_errors=True)
    layout.validate_dir.mkdir(parents=True, exist_ok=True)
    try:
        checks: list[boot.BootCheck] = []
        for i, item in enumerate(items):
            step = customizers.step_name("validate", i, item)
            if isinstance(item, FileValidator):
                where = customizers.field_of("validate", i)
                dest = check_template_path(item.destination or "", f"{where}.destination")
                staged = layout.artifacts / artifacts.staged_name(str(item.source_uri))
                data = base64.b64encode(staged.read_bytes()).decode()
                parent = dest.rsplit("/", 1)[0] or "/"
                q_parent, q_dest = shlex.quote(parent), shlex.quote(dest)
                script = (
                    f"mkdir -p {q_parent}\nbase64 -d > {q_dest} <<'IMAGEBUILDER_EOF'\n{data}\n"
                    f"IMAGEBUILDER_EOF\nchmod 0644 {q_dest}\n"
                )
                checks.append(boot.BootCheck(name=step, kind="shell", source=script))
            elif isinstance(item, ShellValidator) and item.inline:
                checks.append(boot.BootCheck(name=step, kind="shell", source="\n".join(item.inline)))
            elif isinstance(item, ShellValidator):
                staged = layout.artifacts / artifacts.staged_name(str(item.script_uri))
                checks.append(boot.BootCheck(name=step, kind="file", source=str(staged)))
        raw = layout.validate_dir / "validate.raw"
        generation = str(env.handle.get("generation", "V1"))
        # Trimmed: the image's own kernel and initrd booted directly (no firmware, no bootloader, so
        # the throwaway disk needs no boot partition); the checks start once the system is up and the
        # VM powers off right after them. What ships is booted in full by capture's boot check.
        kernel, initrd = disk.find_kernel(tree)
        info = disk.build_disk(tree, raw, generation=generation, bootable=False, log=vlog)
        direct = boot.DirectKernel(
            kernel=resolve_in_root(tree, kernel),
            initrd=resolve_in_root(tree, initrd),
            cmdline=f"root=UUID={info.fs_uuid} {disk.KERNEL_CMDLINE}",
        )
        user = None
        if not customizers.runs_as_root(ctx.tags):
            folder = f"{boot.GUEST_DIR}/{customizers.BUILD_USER_DIR}"
            files = {
                f"{folder}/{n}": (t, 0o755) for n, t in customizers.build_user_scripts(boot.GUEST_DIR).items()
            }
            files["/etc/sudoers.d/90-imagebuilder-build-user"] = (customizers.BUILD_USER_SUDOERS, 0o440)
            user = boot.BootUser(wrapper=f"{folder}/run-as-build-user", files=files)
        res = boot.boot_validate(
            raw,
            generation=generation,
            checks=checks,
            timeout=int(min(ctx.step_timeout, 900.0)),
            log=vlog,
            workdir=layout.validate_dir,
            direct=direct,
            user=user,
        )
        serial = Path(res.serial_log_path)
        kept_serial = None
        if serial.is_file() and layout.logs.is_dir():
            kept_serial = layout.logs / f"validation-{serial.name}"
            shutil.move(str(serial), kept_serial)
        return _boot_step_result(res, kept_serial, vlog, log)
    finally:
        shutil.rmtree(layout.validate_dir, ignore_errors=True)


def _boot_step_result(res: Any, serial: Path | None, vlog: LogSink, log: LogSink) -> StepResult:
    """A boot.BootResult as a StepResult: the first failing check names the step."""
    details: dict[str, Any] = {
        "mode": "boot",
        "boot_seconds": res.duration,
        "checks": [{"name": c.name, "exit_code": c.exit_code} for c in res.checks],
        "serial_log": str(serial) if serial else None,
    }
    if res.ok:
        vlog.write(f"[validate] boot validation passed in {res.duration} s\n")
        return StepResult(status="succeeded", step="validate", details=details)
    failed = next((c for c in res.checks if c.exit_code != 0), None)
    step = failed.name if failed is not None else "validate"
    tail = (failed.output if failed is not None and failed.output else res.output_tail)[-LOG_TAIL:]
    reason = "; ".join(res.failures) or "boot validation failed"
    code = "ValidationTimeout" if res.timed_out else "ValidationFailed"
    vlog.write(f"! {step} failed: {reason}\n")
    return StepResult(
        status="failed",
        step=step,
        exit_code=res.exit_code,
        error=ErrorInfo(
            code=code,
            message=f"{step} failed: {reason}",
            step=step,
            exit_code=res.exit_code,
            log_tail=[str(x) for x in tail],
            log_uri=log.uri or None,
        ),
        details=details,
    )
