"""Phase customize: one customizer of `properties.customize` run against the build root (Shell in the
sandbox, File copied in), its outcome shaped as a `StepResult`; a succeeded step is recorded so that a
retried activity returns it instead of running it twice.

Step cache: a step in the cached prefix linked in by `buildroot` is not run (a hit); a step that runs
is stored in the cache when it succeeded. Either way `StepResult.details["cache"]` is
{"id": <step id>, "hit": bool, "seconds": <time the step took: linking, or running>} and
customization.log says "cache hit <id>" or "ran in <s> s"."""

from __future__ import annotations

import time
from pathlib import Path

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
from imagebuilder.providers.local.stepcache import StepCache
from imagebuilder.template.models import FileCustomizer, FileValidator, ShellCustomizer, ShellValidator


def customize(ctx: RunContext, env: BuildEnv, index: int, log: LogSink) -> StepResult:
    layout = ctx.layout
    items = customizers.items(ctx.template, "customize")
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
    ids = [str(x) for x in env.handle.get("step_ids") or []]
    sid = ids[index] if index < len(ids) else None
    cache_info = env.handle.get("cache") or {}
    hits = list(cache_info.get("hits") or [])
    if sid is not None and index < len(hits) and hits[index].get("id") == sid:
        seconds = float(hits[index].get("seconds") or 0.0)
        plog.write(f"cache hit {sid} (the cached result of this step is used; not run)")
        result = StepResult(
            status="succeeded",
            step=step,
            duration_seconds=seconds,
            details={"cache": {"id": sid, "hit": True, "seconds": seconds}},
        )
    elif sid is not None and (layer := buildroot.finished_layer(env, index)) is not None:
        # The step ran and succeeded, then the process died (kill -9) before recording it: its layer is
        # complete and read-only now; store it (a partial cache entry of that attempt is never used).
        step_cache = ctx.step_cache if cache_info.get("enabled") else None
        stored = step_cache is not None and step_cache.store(sid, layer, step=step, log=plog)
        plog.write(f"already ran before a restart; its layer is kept{', cached as ' + sid if stored else ''}")
        result = StepResult(
            status="succeeded",
            step=step,
            details={"cache": {"id": sid, "hit": False, "seconds": 0.0, "stored": stored, "resumed": True}},
        )
    else:
        plog.write(f"starting {step}")
        started = time.monotonic()
        outcome = run_item(ctx, env, "customize", index, item, Path(env.handle["root"]), plog)
        seconds = round(time.monotonic() - started, 3)
        result = step_result(step, outcome, plog, log)
        if result.status == "succeeded" and sid is not None:
            stored = store_step(ctx.step_cache if cache_info.get("enabled") else None, env, index, sid,
                                step, plog)  # fmt: skip
            plog.write(f"ran in {seconds:.2f} s" + (f", cached as {sid}" if stored else ", not cached"))
            cache = {"id": sid, "hit": False, "seconds": seconds, "stored": stored}
            result = result.model_copy(update={"details": {**result.details, "cache": cache}})
    if result.status == "succeeded":
        done_file.parent.mkdir(parents=True, exist_ok=True)
        done_file.write_text(result.model_dump_json())
    return result


def store_step(
    cache: StepCache | None, env: BuildEnv, index: int, sid: str, step: str, plog: LogSink
) -> bool:
    """Stack the step's finished layer under a fresh one and keep it in the cache (a failure to store
    is a warning in the log; the build goes on)."""
    if cache is None:
        return False
    layer = buildroot.advance(env, index, plog)
    if layer is None:
        return False
    return cache.store(sid, layer, step=step, log=plog)


def run_item(
    ctx: RunContext,
    env: BuildEnv,
    kind: str,
    index: int,
    item: customizers.Step,
    root: Path,
    plog: LogSink,
) -> customizers.Outcome:
    """Run one customizer or sandboxed validator (`kind`, `index`) against `root`."""
    layout = ctx.layout
    where = customizers.field_of(kind, index)
    if isinstance(item, ShellCustomizer | ShellValidator):
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
            as_root=customizers.runs_as_root(ctx.tags),
            step_limits=ctx.step_limits,
        )
    if isinstance(item, FileCustomizer | FileValidator):
        user = None
        if not customizers.runs_as_root(ctx.tags):
            try:
                user = customizers.ensure_build_user(
                    root,
                    inbox=layout.inbox,
                    network=bool(env.handle.get("network", True)),
                    run_marker=ctx.marker,
                    log=plog,
                    timeout=ctx.step_timeout,
                )
            except customizers.CustomizerError as exc:
                return customizers.Outcome(ok=False, code=exc.code, message=str(exc))
        return customizers.run_file(
            item, where=where, root=root, artifacts=layout.artifacts, log=plog, user=user
        )
    return customizers.Outcome(
        ok=False,
        code="BadCustomizerType",
        message=f"{where}.type {item.type!r} cannot run in the local provider",
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
