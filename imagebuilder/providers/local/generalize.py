"""Phase generalize: the offline Linux deprovision of the build root (see `deprovision`)."""

from __future__ import annotations

import time
from pathlib import Path

from imagebuilder.pipeline.messages import (
    BuildEnv,
    StepResult,
)
from imagebuilder.providers.base import LogSink
from imagebuilder.providers.local import (
    buildroot,
    deprovision,
)
from imagebuilder.providers.local.context import (
    RunContext,
)


def generalize(ctx: RunContext, env: BuildEnv, log: LogSink) -> StepResult:
    missing = buildroot.env_ok(env, "generalize", log)
    if missing:
        return missing
    glog = ctx.log(log, "generalize")
    start = time.monotonic()
    report = deprovision.deprovision(Path(env.handle["root"]))
    for what, paths in report.items():
        glog.write(
            f"[generalize] {what}: {len(paths)} ({', '.join(paths[:5])}{' ...' if len(paths) > 5 else ''})\n"
        )
    return StepResult(
        status="succeeded",
        step="generalize",
        duration_seconds=time.monotonic() - start,
        details={"cleared": report},
    )
