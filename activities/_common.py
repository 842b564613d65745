"""Shared plumbing of the phase activities: the cached provider and store, the run's log, and the
`Outcome` envelope every phase activity returns.

Exceptions a phase activity lets out (so the orchestrator's retry policy applies)::

    TransientProviderError   the provider says: try again
    StoreError / Azure SDK   opening the run's log failed (storage down): try again
Everything else a provider raises becomes `Outcome(kind="failed")` with an `ErrorInfo` naming the step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

from pydantic import BaseModel

from imagebuilder.pipeline import events as lifecycle
from imagebuilder.pipeline.messages import BuildInput, ErrorInfo, Pending, RunRef
from imagebuilder.pipeline.plan import Outcome, StatusUpdate
from imagebuilder.providers.base import (
    ComputeProvider,
    LogSink,
    ProviderError,
    TransientProviderError,
)
from imagebuilder.providers.registry import get_provider
from imagebuilder.settings import Settings
from imagebuilder.store import Store, open_store
from imagebuilder.store.events import publish_quietly
from imagebuilder.store.records import RunRecord

logger = logging.getLogger(__name__)
T = TypeVar("T")
# writes the run status a phase activity carries while the phase runs (one per activity at a time)
_STATUS_WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="run-status")

Phase = Callable[[ComputeProvider, BuildInput, LogSink], BaseModel]
# after a phase's `done` result: more to persist, run alongside the step's end line; answers Outcome fields
Alongside = Callable[[BaseModel], dict[str, Any]]


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


def write_status(run: RunRef, update: StatusUpdate, log_lines: str | None = None) -> None:
    """Persist a status update (op "status") of the run: one read and one write of the run record, the
    lifecycle events of the change sent in between (before the write: a retried activity sends them
    again, with the same ids; once written, a retry sees no change and sends none). `log_lines` are
    appended to the run's log meanwhile, and always before the write (a reader who sees the status
    finds them)."""
    error = update.error.model_dump(mode="json") if update.error else None
    appended = _STATUS_WRITERS.submit(store().runs.log(run).write, log_lines) if log_lines else None

    def publish(before: RunRecord) -> None:
        if appended is not None:
            appended.result()  # a failed append fails the write: the activity is retried
        freshness = before.details.get("freshness")
        changes = lifecycle.status_events(
            run,
            (before.run_state, before.run_sub_state),
            (update.run_state, update.run_sub_state),
            message=update.message,
            error=error,
            time=datetime.now(UTC),
            freshness=freshness if isinstance(freshness, dict) else None,
        )
        publish_quietly(settings().storage_connection, changes)

    store().runs.set_status(
        run,
        run_state=update.run_state,
        run_sub_state=update.run_sub_state,
        message=update.message,
        error=error,
        details=update.details or None,
        before_write=publish,
    )


def write_output(run: RunRef, name: str, output: dict[str, Any]) -> None:
    """Persist one run output (op "output"); its lifecycle events go out before the write, so a retried
    activity sends them again (same ids)."""
    replicated = lifecycle.replication_events(run, name, output, time=datetime.now(UTC))
    publish_quietly(settings().storage_connection, replicated)
    store().runs.put_output(run, name, output)


def in_background(fn: Callable[..., T], *args: Any) -> Future[T]:
    """Run `fn(*args)` on the activities' store writer threads (a write the step need not wait for;
    the activity waits for it before it returns)."""
    return _STATUS_WRITERS.submit(fn, *args)


def _carried_status(run: RunRef, update: StatusUpdate) -> str | None:
    """Write a status carried in a phase activity's input; None, or why it could not be written (the
    orchestrator then has it written by the next activity or through `run_status`)."""
    try:
        write_status(run, update)
    except Exception as exc:
        logger.warning("persisting the %s status of run %s failed: %s", update.run_sub_state, run.run_id, exc)
        return f"{type(exc).__name__}: {exc}"
    return None


def run_phase(payload: dict[str, Any], phase: Phase, alongside: Alongside | None = None) -> dict[str, Any]:
    """Run one provider call for the step named in `payload["step"]`, with the run's
    customization.log as its sink, and wrap the result as an `Outcome`. A run status in the input
    (`status`: a phase's first activity) is persisted alongside, off the step's critical path.
    `alongside(result)` runs after a `done` result while the step's end line is written; the Outcome
    fields it answers are set; if it raises, nothing is set (the orchestrator then persists it).
    `log` in the input: lines earlier steps left unwritten, written first (with the started line).
    `deferEnd`: a done or failed step's end line is answered (`log`), not written, for the
    orchestration's next activity to write first (one log append less per step)."""
    build = build_of(payload)
    carried = payload.get("status")
    status = (
        _STATUS_WRITERS.submit(_carried_status, build.run, StatusUpdate.model_validate(carried))
        if isinstance(carried, dict)
        else None
    )
    try:
        outcome = _run_phase(build, payload, phase, alongside)
    finally:
        error = status.result() if status is not None else None  # persisted before the activity ends
    if error is not None:
        outcome["status_error"] = error
    return outcome


class StepLog:
    """The run's log as one step's sink: the step's `==> step: started` line goes out with the step's
    first write (or with its end line when it writes nothing), so a step costs one log append less. The
    line still precedes everything the step writes; a step killed before its first write leaves no
    `started` line (it had nothing to show yet). `lead`: lines earlier steps left unwritten (their end
    lines), written first, with the started line."""

    def __init__(self, log: LogSink, step: str, lead: str = "") -> None:
        self._log = log
        self._head = f"{lead}==> {step}: started\n"
        self._lock = threading.Lock()

    @property
    def uri(self) -> str:
        return self._log.uri

    def write(self, text: str) -> None:
        with self._lock:  # the head goes out once, first, whichever thread writes first
            head, self._head = self._head, ""
            if head:
                self._log.write(head + text)
                return
        self._log.write(text)

    def take(self, text: str) -> str:
        """`text` as the step's last write would append it (after the head if nothing was written yet),
        not written: for whoever writes to the run's log next."""
        with self._lock:
            head, self._head = self._head, ""
        return head + text


def _run_phase(
    build: BuildInput, payload: dict[str, Any], phase: Phase, alongside: Alongside | None
) -> dict[str, Any]:
    step = str(payload.get("step") or "step")
    run_log = store().runs.log(build.run)
    run_log.open()  # the log's plumbing (on first use in this process) is not the step's work
    lead = payload.get("log")
    log = StepLog(run_log, step, lead if isinstance(lead, str) else "")
    started = time.monotonic()
    defer = bool(payload.get("deferEnd"))
    try:
        result = phase(provider(), build, log)
    except TransientProviderError as exc:
        log.write(f"==> {step}: transient failure, will be retried: {exc}\n")
        raise
    except ProviderError as exc:
        error = ErrorInfo(code=type(exc).__name__, message=str(exc), step=step, log_uri=log.uri)
        return _finish(log, step, started, Outcome(kind="failed", value={}, error=error), defer)
    except Exception as exc:
        logger.exception("%s failed unexpectedly", step)
        error = ErrorInfo(
            code="UnexpectedError", message=f"{type(exc).__name__}: {exc}", step=step, log_uri=log.uri
        )
        return _finish(log, step, started, Outcome(kind="failed", value={}, error=error), defer)
    kind = "pending" if isinstance(result, Pending) else "done"
    value = result.model_dump(mode="json")
    more = _STATUS_WRITERS.submit(alongside, result) if alongside is not None and kind == "done" else None
    outcome = _finish(log, step, started, Outcome(kind=kind, value=value), defer and kind == "done")
    if more is not None:
        try:
            outcome.update(more.result())
        except Exception as exc:
            logger.warning(
                "%s: persisting alongside the step failed (the orchestrator does it): %s", step, exc
            )
    return outcome


def _finish(log: StepLog, step: str, started: float, outcome: Outcome, defer: bool = False) -> dict[str, Any]:
    seconds = round(time.monotonic() - started, 3)
    status = outcome.value.get("status") if outcome.kind == "done" else outcome.kind
    line = f"==> {step}: {status or 'done'} in {seconds:.1f}s\n"
    update: dict[str, Any] = {"seconds": seconds}
    if defer:  # a Pending never defers: the polls that follow write their own lines
        update["log"] = log.take(line)
    else:
        log.write(line)
    return outcome.model_copy(update=update).model_dump(mode="json")
