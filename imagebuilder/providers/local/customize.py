"""Phase customize: one customizer of `properties.customize` run against the build root (Shell in the
sandbox, File copied in), its outcome shaped as a `StepResult`; a succeeded step is recorded so that a
retried activity returns it instead of running it twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagebuilder.pipeline.messages import (
    BuildEnv,
    ErrorInfo,
    StepResult,
)
from imagebuilder.providers.base import LogSink, ProviderError
from imagebuilder.providers.local import (
    buildroot,
    customizers,
    sandbox,
)
from imagebuilder.providers.local.context import (
    LOG_TAIL,
    RunContext,
)
from imagebuilder.providers.local.layout import (
    RunLayout,
)


def customize(ctx: RunContext, env: BuildEnv, index: int, log: LogSink) -> StepResult:
    layout = ctx.layout
    items = customizers.items(ctx.build.template, "customize")
    if not 0 <= index < len(items):
        raise ProviderError(f"properties.customize[{index}] does not exist ({len(items)} customizers)")
    item = items[index]
    step = customizers.step_name("customize", index, item)
    done_file = layout.build / "steps" / f"customize-{index}.json"
    if done_file.is_file():
        return StepResult.model_validate_json(done_file.read_text())
    missing = buildroot.env_ok(env, step, log)
    if missing:
        return missing
    plog = sandbox.PrefixedLog(ctx.log(log, "customization"), step)
    plog.write(f"starting {step}")
    outcome = run_item(ctx, env, layout, "customize", index, item, Path(env.handle["root"]), plog)
    result = step_result(step, outcome, plog, log)
    if result.status == "succeeded":
        done_file.parent.mkdir(parents=True, exist_ok=True)
        done_file.write_text(result.model_dump_json())
    return result


def run_item(
    ctx: RunContext,
    env: BuildEnv,
    layout: RunLayout,
    kind: str,
    index: int,
    item: dict[str, Any],
    root: Path,
    plog: LogSink,
) -> customizers.Outcome:
    typ = str(item.get("type") or "")
    where = customizers.field_of(kind, index)
    if typ == "Shell":
        return customizers.run_shell(
            item,
            step_key=f"{kind}-{index}",
            root=root,
            inbox=layout.inbox,
            artifacts=layout.artifacts,
            network=bool(env.handle.get("network", True)),
            run_marker=ctx.marker,
            log=plog,
            timeout=ctx.step_timeout,
        )
    if typ == "File":
        return customizers.run_file(item, where=where, root=root, artifacts=layout.artifacts, log=plog)
    return customizers.Outcome(
        ok=False,
        code="BadCustomizerType",
        message=f"{where}.type {typ!r} cannot run in the local provider",
    )


def step_result(step: str, outcome: customizers.Outcome, plog: LogSink, log: LogSink) -> StepResult:
    if outcome.ok:
        plog.write(f"succeeded in {outcome.duration:.2f} s")
        return StepResult(
            status="succeeded",
            step=step,
            duration_seconds=outcome.duration,
            exit_code=outcome.exit_code,
            details=outcome.details,
        )
    message = f"{step} failed: {outcome.message}"
    plog.write(f"! {message}")
    return StepResult(
        status="failed",
        step=step,
        duration_seconds=outcome.duration,
        exit_code=outcome.exit_code,
        error=ErrorInfo(
            code=outcome.code or "CustomizerFailed",
            message=message,
            step=step,
            exit_code=outcome.exit_code,
            log_tail=outcome.tail[-LOG_TAIL:],
            log_uri=log.uri or None,
        ),
        details=outcome.details,
    )
