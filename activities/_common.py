"""Shared plumbing of the phase activities: the cached provider and store, the run's log, and the
`Outcome` envelope every phase activity returns.

Exceptions a phase activity lets out (so the orchestrator's retry policy applies)::

    TransientProviderError   the provider says: try again
    StoreError / Azure SDK   opening the run's log failed (storage down): try again
Everything else a provider raises becomes `Outcome(kind="failed")` with an `ErrorInfo` naming the step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import BaseModel

from imagebuilder.pipeline.messages import BuildInput, ErrorInfo, Pending
from imagebuilder.pipeline.plan import Outcome
from imagebuilder.providers.base import (
    ComputeProvider,
    LogSink,
    ProviderError,
    TransientProviderError,
)
from imagebuilder.providers.registry import get_provider
from imagebuilder.settings import Settings
from imagebuilder.store import Store, open_store

logger = logging.getLogger(__name__)

Phase = Callable[[ComputeProvider, BuildInput, LogSink], BaseModel]


@cache
def settings() -> Settings:
    return Settings.from_env()


@cache
def provider() -> ComputeProvider:
    """One provider per worker process (it may hold caches and clients)."""
    return get_provider(settings().provider)


@cache
def store() -> Store:
    """One store per worker process (tables and containers are created once)."""
    return open_store(settings().storage_connection)


def timeout_scale() -> float:
    """The app setting IMAGEBUILDER_TIMEOUT_SCALE (tests only): multiplies buildTimeoutInMinutes."""
    return settings().timeout_scale


def build_of(payload: dict[str, Any]) -> BuildInput:
    return BuildInput.model_validate(payload["build"])


def run_phase(payload: dict[str, Any], phase: Phase) -> dict[str, Any]:
    """Run one provider call for the step named in `payload["step"]`, with the run's
    customization.log as its sink, and wrap the result as an `Outcome`."""
    build = build_of(payload)
    step = str(payload.get("step") or "step")
    log = store().runs.log(build.run)
    log.write(f"==> {step}: started\n")
    started = time.monotonic()
    try:
        result = phase(provider(), build, log)
    except TransientProviderError as exc:
        log.write(f"==> {step}: transient failure, will be retried: {exc}\n")
        raise
    except ProviderError as exc:
        error = ErrorInfo(code=type(exc).__name__, message=str(exc), step=step, log_uri=log.uri)
        return _finish(log, step, started, Outcome(kind="failed", value={}, error=error))
    except Exception as exc:
        logger.exception("%s failed unexpectedly", step)
        error = ErrorInfo(
            code="UnexpectedError", message=f"{type(exc).__name__}: {exc}", step=step, log_uri=log.uri
        )
        return _finish(log, step, started, Outcome(kind="failed", value={}, error=error))
    kind = "pending" if isinstance(result, Pending) else "done"
    value = result.model_dump(mode="json")
    return _finish(log, step, started, Outcome(kind=kind, value=value))


def _finish(log: LogSink, step: str, started: float, outcome: Outcome) -> dict[str, Any]:
    seconds = round(time.monotonic() - started, 3)
    status = outcome.value.get("status") if outcome.kind == "done" else outcome.kind
    log.write(f"==> {step}: {status or 'done'} in {seconds:.1f}s\n")
    return outcome.model_copy(update={"seconds": seconds}).model_dump(mode="json")
