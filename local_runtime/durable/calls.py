"""Invoking orchestrator, activity and entity functions exactly the way the Python worker does.

Orchestrators and entities get their JSON context (one keyword argument named after the trigger, which
the SDK requires to be `context`); activities get `ActivityTriggerConverter.decode(Datum('json', text))`
and their return value goes through `ActivityTriggerConverter.encode` (DURABLE-PROTOCOL.md §3).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import uuid
from typing import Any

import azure.functions as func
from azure.functions import meta
from azure.functions.durable_functions import ActivityTriggerConverter

from local_runtime.indexing import FunctionInfo
from local_runtime.invoke import InvocationContext, current_function

OUT_OF_PROC_MARKER = "\n\n$OutOfProcData$:"
log = logging.getLogger("local_runtime.durable")


class ActivityFailure(Exception):
    """An activity raised; `reason` and `details` are what the host writes into TaskFailed."""

    def __init__(self, reason: str, details: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


def _wants_context(fn: FunctionInfo) -> bool:
    try:
        params = inspect.signature(fn.user_function).parameters
    except (TypeError, ValueError):
        return False
    bound = {b.get("name") for b in fn.bindings}
    return "context" in params and "context" not in bound


def activity_kwargs(fn: FunctionInfo, input_text: str | None, app_dir: str) -> dict[str, Any]:
    value = ActivityTriggerConverter.decode(
        meta.Datum(type="json", value=input_text if input_text is not None else "null"), trigger_metadata={}
    )
    kwargs: dict[str, Any] = {fn.trigger_name: value}
    if _wants_context(fn):
        kwargs["context"] = InvocationContext(str(uuid.uuid4()), fn.name, app_dir)
    return kwargs


def encode_activity_result(value: Any) -> str:
    datum = ActivityTriggerConverter.encode(value, expected_type=None)
    return str(datum.value)


def activity_failure(name: str, exc: BaseException) -> ActivityFailure:
    """TaskFailed as the real host writes it for an out-of-proc activity exception."""
    message = f"{type(exc).__name__}: {exc}"
    reason = f"Activity function '{name}' failed: {message}"
    log.warning("durable: activity %s failed", name, exc_info=exc)
    details = json.dumps({"ClassName": "System.Exception", "Message": message})
    return ActivityFailure(reason, details)


def run_activity_sync(fn: FunctionInfo, input_text: str | None, app_dir: str) -> str:
    """Decode, call, encode; raises ActivityFailure with the host's Reason/Details. The function's own
    logs carry its name (category `Function.<name>.User`), as for every other trigger."""
    token = current_function.set(fn.name)
    try:
        result = fn.user_function(**activity_kwargs(fn, input_text, app_dir))
        return encode_activity_result(result)
    except Exception as exc:
        raise activity_failure(fn.name, exc) from exc
    except SystemExit as exc:  # sys.exit() in an activity fails the activity, not the host
        raise activity_failure(fn.name, exc) from exc
    finally:
        current_function.reset(token)


async def run_activity_async(fn: FunctionInfo, input_text: str | None, app_dir: str) -> str:
    token = current_function.set(fn.name)
    try:
        result = await fn.user_function(**activity_kwargs(fn, input_text, app_dir))
        return encode_activity_result(result)
    except (Exception, SystemExit) as exc:
        raise activity_failure(fn.name, exc) from exc
    finally:
        current_function.reset(token)


def is_async(fn: FunctionInfo) -> bool:
    return inspect.iscoroutinefunction(fn.user_function)


HISTORY_TIMESTAMPS = 65_536  # parsed history timestamps a worker process keeps (see below)


def memoize_history_timestamps() -> None:
    """Every episode replays the whole history, and the SDK's `HistoryEvent` parses each event's
    timestamp with dateutil's generic parser (~0.2-0.6 ms each: most of a replay's time, growing with
    the history). The same strings come back in every episode, so the parser is memoized in this
    process: the same function, the same values (immutable datetimes), parsed once. Idempotent."""
    try:
        module = importlib.import_module("azure.durable_functions.models.history.HistoryEvent")
    except ImportError:  # an app without the durable SDK replays nothing
        return
    parse = getattr(module, "dt_parse", None)
    if callable(parse) and not hasattr(parse, "cache_info"):
        vars(module)["dt_parse"] = functools.lru_cache(maxsize=HISTORY_TIMESTAMPS)(parse)


def run_orchestrator(fn: FunctionInfo, context_json: str) -> tuple[dict[str, Any], str | None]:
    """Call the orchestrator handle; return (OrchestratorState, error text or None)."""
    token = current_function.set(fn.name)
    try:
        out = fn.user_function(**{fn.trigger_name: func.OrchestrationContext(context_json)})
    except Exception as exc:
        text = str(exc)
        if OUT_OF_PROC_MARKER in text:
            head, _, tail = text.partition(OUT_OF_PROC_MARKER)
            try:
                state = json.loads(tail)
            except ValueError:
                state = {}
            return state, str(state.get("error") or head)
        return {}, f"{type(exc).__name__}: {exc}"
    except SystemExit as exc:  # sys.exit() in orchestrator code fails the orchestration, not the host
        return {}, f"SystemExit: {exc}"
    finally:
        current_function.reset(token)
    state = json.loads(out) if isinstance(out, str | bytes) else out
    if not isinstance(state, dict):
        return {}, f"orchestrator returned {type(state).__name__}, not an OrchestratorState JSON object"
    return state, None


def run_entity(fn: FunctionInfo, batch_json: str) -> dict[str, Any]:
    token = current_function.set(fn.name)
    try:
        out = fn.user_function(**{fn.trigger_name: func.EntityContext(batch_json)})
    finally:
        current_function.reset(token)
    result = json.loads(out) if isinstance(out, str | bytes) else out
    if not isinstance(result, dict):
        raise TypeError(f"entity {fn.name} returned {type(result).__name__}, not an EntityState JSON object")
    return result
