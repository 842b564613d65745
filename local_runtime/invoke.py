"""Invoking one function the way the Python worker does: binding data to keyword arguments, `func.Out`
and `$return` to outputs, the call itself in a worker process (`portable`/`unportable` carry the arguments;
without one: sync functions in a thread pool, async ones on the loop), `context` injection,
the durable client binding, and the host's "Executing/Executed" log lines with function-scoped logging.

Exceptions:
    UnsupportedBinding   the app uses a binding type this host cannot serve (raised at startup)
    FunctionTimeoutError an invocation ran past functionTimeout (it fails with the host's message)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import os
import pickle
import threading
import time
import traceback
import types
import typing
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import azure.functions as func
from azure.functions import _abc as func_abc

from local_runtime.config import ConfigError, parse_timespan
from local_runtime.indexing import DURABLE_TRIGGERS, FunctionInfo

log = logging.getLogger("local_runtime.host")
current_function: contextvars.ContextVar[str] = contextvars.ContextVar("local_runtime_function", default="")

HOST_TRIGGERS = {"httpTrigger", "timerTrigger", "blobTrigger", "queueTrigger", "eventGridTrigger"}


class UnsupportedBinding(Exception):
    """A function uses a binding or trigger type the local host does not implement."""


class FunctionTimeoutError(Exception):
    """An invocation ran past host.json functionTimeout (the host's FunctionTimeoutException)."""


def timespan(seconds: float) -> str:
    """00:05:00 style, as the host prints functionTimeout."""
    whole = int(seconds)
    text = f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
    frac = seconds - whole
    return text + (f".{round(frac * 1000):03d}" if frac else "")


class WorkerCalls(Protocol):
    """The one method of `local_runtime.durable.workers.WorkerPool` this module needs."""

    async def call(self, kind: str, name: str, payload: Any) -> tuple[bool, Any]: ...


class DurableClientSource(Protocol):
    """The one method of `local_runtime.durable.DurableHost` this module needs."""

    def client_binding_json(self, binding: dict[str, Any]) -> str: ...


# An input reader gets (binding, trigger metadata, parameter annotation) and returns the argument value;
# an output writer gets (binding, value, trigger metadata) and writes it.
InputReader = Callable[[dict[str, Any], Mapping[str, Any], Any], Awaitable[Any]]
OutputWriter = Callable[[dict[str, Any], Any, Mapping[str, Any]], Awaitable[None]]


LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "information": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "none": logging.CRITICAL + 10,
}


class FunctionLogFilter(logging.Filter):
    """Adds `record.function` (the function whose invocation is logging, or `host`) and applies
    host.json `logging.logLevel` by category, longest prefix first, like the host: a function's own logs
    are `Function.<name>.User`, the host's lines about it `Function.<name>`, everything else `Host.*`."""

    def __init__(self, levels: Mapping[str, str] | None = None) -> None:
        super().__init__()
        table = {k.lower(): LEVELS.get(str(v).lower(), logging.INFO) for k, v in (levels or {}).items()}
        self.default = table.pop("default", logging.INFO)
        self.levels = sorted(table.items(), key=lambda kv: -len(kv[0]))
        self.lowest = min([self.default, *table.values()])

    def level_for(self, category: str) -> int:
        cat = category.lower()
        for prefix, level in self.levels:
            if cat == prefix or cat.startswith(prefix + "."):
                return level
        return self.default

    def filter(self, record: logging.LogRecord) -> bool:
        fn = current_function.get()
        record.function = fn or "host"
        if fn and record.name.startswith("local_runtime"):
            category = f"Function.{fn}"
        elif fn:
            category = f"Function.{fn}.User"
        else:
            category = f"Host.{record.name}"
        return record.levelno >= self.level_for(category)


class _TraceContext(func_abc.TraceContext):  # type: ignore[misc]
    def __init__(self, trace_parent: str) -> None:
        self._parent = trace_parent

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext(func_abc.RetryContext):  # type: ignore[misc]
    def __init__(self, retry_count: int, max_retry_count: int) -> None:
        self._count, self._max = retry_count, max_retry_count

    @property
    def retry_count(self) -> int:
        return self._count

    @property
    def max_retry_count(self) -> int:
        return self._max

    @property
    def exception(self) -> Any:
        return None


class InvocationContext(func.Context):  # type: ignore[misc]
    """The `context` argument the worker injects when a function asks for it."""

    def __init__(
        self,
        invocation_id: str,
        function_name: str,
        function_directory: str,
        retry: int = 0,
        max_retry: int = 0,
    ) -> None:
        self._id = invocation_id
        self._name = function_name
        self._dir = function_directory
        self._trace = _TraceContext(f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01")
        self._retry = _RetryContext(retry, max_retry)
        self._tls = threading.local()
        self._args = (invocation_id, function_name, function_directory, retry, max_retry)

    def portable(self) -> tuple[Any, ...]:
        return self._args

    @property
    def invocation_id(self) -> str:
        return self._id

    @property
    def thread_local_storage(self) -> Any:
        return self._tls

    @property
    def function_name(self) -> str:
        return self._name

    @property
    def function_directory(self) -> str:
        return self._dir

    @property
    def trace_context(self) -> Any:
        return self._trace

    @property
    def retry_context(self) -> Any:
        return self._retry


class OutValue(func.Out):  # type: ignore[misc]
    """A `func.Out[T]` the function sets; the host reads it after the function returns."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


_HTTP, _OUT, _CONTEXT = "__local_runtime_http__", "__local_runtime_out__", "__local_runtime_context__"


def portable(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of one invocation in a form a worker process can receive (pickle): an HttpRequest as
    its parts, `func.Out` values and the `context` as markers the worker turns back into objects."""
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        if isinstance(value, func.HttpRequest):
            out[name] = (
                _HTTP,
                {
                    "method": value.method,
                    "url": value.url,
                    "headers": dict(value.headers.items()),
                    "params": dict(value.params),
                    "route_params": dict(value.route_params),
                    "body": value.get_body(),
                },
            )
        elif isinstance(value, OutValue):
            out[name] = (_OUT,)
        elif isinstance(value, InvocationContext):
            out[name] = (_CONTEXT, value.portable())
        else:
            out[name] = value
    return out


def unportable(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, OutValue]]:
    """In the worker: `portable`'s markers back to objects; returns (kwargs, the Out values by name)."""
    real: dict[str, Any] = {}
    outs: dict[str, OutValue] = {}
    for name, value in kwargs.items():
        if isinstance(value, tuple) and value and value[0] == _HTTP:
            real[name] = func.HttpRequest(**value[1])
        elif isinstance(value, tuple) and value and value[0] == _OUT:
            outs[name] = real[name] = OutValue()
        elif isinstance(value, tuple) and value and value[0] == _CONTEXT:
            real[name] = InvocationContext(*value[1])
        else:
            real[name] = value
    return real, outs


@dataclass
class InvocationResult:
    """The outcome of one invocation: outputs by binding name (`$return` included) or the error."""

    invocation_id: str
    ok: bool
    outputs: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None

    def http_response(self, fn: FunctionInfo) -> Any:
        """`$return` if set, else the first named `http` output that was set (the host's choice)."""
        http_outs = [b["name"] for b in fn.bindings if b.get("type") == "http" and _is_out(b)]
        if "$return" in http_outs and self.outputs.get("$return") is not None:
            return self.outputs["$return"]
        for name in http_outs:
            if self.outputs.get(name) is not None:
                return self.outputs[name]
        return None


def _is_out(binding: Mapping[str, Any]) -> bool:
    return str(binding.get("direction", "")).upper() in ("OUT", "INOUT")


def signature_of(fn: FunctionInfo) -> inspect.Signature:
    try:
        return inspect.signature(fn.user_function, eval_str=True)
    except (NameError, TypeError):
        return inspect.signature(fn.user_function)


def annotation_of(fn: FunctionInfo, name: str) -> Any:
    """The parameter's annotation with `Optional[...]`/`X | None` unwrapped (None when absent)."""
    param = signature_of(fn).parameters.get(name)
    if param is None or param.annotation is inspect.Parameter.empty:
        return None
    ann = param.annotation
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        ann = args[0] if len(args) == 1 else ann
    return ann


def is_host_function(fn: FunctionInfo) -> bool:
    """Triggers this host dispatches; durable triggers are the durable engine's."""
    return fn.trigger_type not in DURABLE_TRIGGERS


class Invoker:
    """Runs functions for every trigger module; one instance per host."""

    def __init__(
        self,
        *,
        app_dir: Path,
        durable: DurableClientSource | None = None,
        inputs: Mapping[str, InputReader] | None = None,
        outputs: Mapping[str, OutputWriter] | None = None,
        max_workers: int | None = None,
        function_timeout: float | None = None,
        workers: WorkerCalls | None = None,
    ) -> None:
        self.app_dir = app_dir
        self.durable = durable
        self.inputs = dict(inputs or {})
        self.outputs = dict(outputs or {})
        threads = max_workers or int(os.environ.get("PYTHON_THREADPOOL_THREAD_COUNT") or 0) or None
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="function")
        self.function_timeout = function_timeout
        self.workers = workers  # a worker pool: user code runs there, as the Python worker runs it on Azure
        self.running_sync = 0  # sync functions still running in the pool (they cannot be cancelled)
        self._lock = threading.Lock()

    def check(self, fn: FunctionInfo) -> None:
        """Fail at startup, naming the function, if it uses a binding this host cannot serve."""
        retry_policy(fn)
        if fn.trigger_type not in HOST_TRIGGERS and fn.trigger_type not in DURABLE_TRIGGERS:
            raise UnsupportedBinding(
                f"function {fn.name!r}: trigger type {fn.trigger_type!r} is not supported by local_runtime "
                f"(supported: {', '.join(sorted(HOST_TRIGGERS | set(DURABLE_TRIGGERS)))})"
            )
        for b in fn.bindings:
            if b.get("name") == fn.trigger_name and b.get("type") == fn.trigger_type:
                continue
            kind = str(b.get("type"))
            if kind == "durableClient" or (kind == "http" and _is_out(b)):
                continue
            table = self.outputs if _is_out(b) else self.inputs
            if kind not in table:
                direction = "output" if _is_out(b) else "input"
                raise UnsupportedBinding(
                    f"function {fn.name!r}: {direction} binding {b.get('name')!r} of "
                    f"type {kind!r} is not supported by local_runtime (supported: {', '.join(sorted(table))})"
                )

    async def invoke(
        self,
        fn: FunctionInfo,
        trigger_value: Callable[[Any], Any],
        metadata: Mapping[str, Any],
        reason: str,
        retry_count: int = 0,
        max_retry_count: int = 0,
    ) -> InvocationResult:
        """Invoke `fn`; `trigger_value(annotation)` builds the trigger argument for the parameter's type."""
        invocation_id = str(uuid.uuid4())
        token = current_function.set(fn.name)
        started = time.monotonic()
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", fn.name, reason, invocation_id)
        result = InvocationResult(invocation_id=invocation_id, ok=False)
        try:
            kwargs, outs = await self._arguments(
                fn, trigger_value, metadata, invocation_id, retry_count, max_retry_count
            )
            value = await self._call(fn, kwargs)
            result.outputs = {name: out.get() for name, out in outs.items()}
            if any(b.get("name") == "$return" for b in fn.bindings):
                result.outputs["$return"] = value
            elif value is not None:  # the worker's rule
                raise RuntimeError(
                    f"function {fn.name!r} without a $return binding returned a non-None value"
                )
            await self._write_outputs(fn, result.outputs, metadata)
            result.ok = True
        except Exception as exc:  # the host reports any failure of user code or bindings the same way
            result.error = exc
            # the trace goes to the log only, never to an HTTP caller
            log.error(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)\n%s",
                fn.name,
                invocation_id,
                (time.monotonic() - started) * 1000,
                "".join(traceback.format_exception(exc)).rstrip(),
            )
        else:
            log.info(
                "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)",
                fn.name,
                invocation_id,
                (time.monotonic() - started) * 1000,
            )
        finally:
            current_function.reset(token)
        return result

    async def _arguments(
        self,
        fn: FunctionInfo,
        trigger_value: Callable[[Any], Any],
        metadata: Mapping[str, Any],
        invocation_id: str,
        retry_count: int,
        max_retry_count: int,
    ) -> tuple[dict[str, Any], dict[str, OutValue]]:
        sig = signature_of(fn)
        kwargs: dict[str, Any] = {fn.trigger_name: trigger_value(annotation_of(fn, fn.trigger_name))}
        outs: dict[str, OutValue] = {}
        for b in fn.bindings:
            name = str(b.get("name"))
            if name == fn.trigger_name or name == "$return":
                continue
            kind = str(b.get("type"))
            if _is_out(b):
                outs[name] = OutValue()
                kwargs[name] = outs[name]
            elif kind == "durableClient":
                if self.durable is None:
                    raise UnsupportedBinding(
                        f"function {fn.name!r} has a durableClient binding but the durable engine "
                        "(local_runtime.durable) is not available"
                    )
                kwargs[name] = self.durable.client_binding_json(b)
            else:
                kwargs[name] = await self.inputs[kind](b, metadata, annotation_of(fn, name))
        if "context" in sig.parameters and "context" not in kwargs:
            kwargs["context"] = InvocationContext(
                invocation_id, fn.name, str(self.app_dir), retry_count, max_retry_count
            )
        return kwargs, outs

    async def _call(self, fn: FunctionInfo, kwargs: dict[str, Any]) -> Any:
        if self.workers is not None:
            return await self._call_in_worker(fn, kwargs)
        return await self._call_here(fn, kwargs)

    async def _call_in_worker(self, fn: FunctionInfo, kwargs: dict[str, Any]) -> Any:
        """Run the function in a worker process; its timeout recycles the worker (WorkerCalls.call)."""
        assert self.workers is not None
        try:
            ok, value = await self.workers.call("function", fn.name, {"kwargs": portable(kwargs)})
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            log.debug(
                "Function '%s': arguments cannot reach a worker process (%s); running it here", fn.name, exc
            )
            return await self._call_here(fn, kwargs)
        except Exception as exc:
            if type(exc).__name__ == "FunctionTimeout":
                raise FunctionTimeoutError(str(exc)) from None
            raise RuntimeError(f"the worker process running Functions.{fn.name} failed: {exc}") from None
        if not ok:
            raise RuntimeError(f"function {fn.name!r} failed in its worker process:\n{value[-1]}")
        result, out_values = value
        for name, out_value in out_values.items():
            target = kwargs.get(name)
            if isinstance(target, OutValue):
                target.set(out_value)
        return result

    async def _call_here(self, fn: FunctionInfo, kwargs: dict[str, Any]) -> Any:
        target = fn.user_function
        if inspect.iscoroutinefunction(target):
            coro: Awaitable[Any] = target(**kwargs)
        else:
            ctx = contextvars.copy_context()
            loop = asyncio.get_running_loop()
            coro = loop.run_in_executor(self.pool, lambda: ctx.run(self._run_sync, target, kwargs))
        if self.function_timeout:
            try:
                return await asyncio.wait_for(coro, self.function_timeout)
            except TimeoutError:
                limit = timespan(self.function_timeout)
                log.error(
                    "Timeout value of %s exceeded by function 'Functions.%s'. Initiating cancellation.",
                    limit,
                    fn.name,
                )
                raise FunctionTimeoutError(
                    f"Timeout value of {limit} was exceeded by function: Functions.{fn.name}"
                ) from None
        return await coro

    async def _write_outputs(
        self, fn: FunctionInfo, values: dict[str, Any], metadata: Mapping[str, Any]
    ) -> None:
        for b in fn.bindings:
            kind = str(b.get("type"))
            if not _is_out(b) or kind == "http":
                continue
            value = values.get(str(b.get("name")))
            if value is None:
                continue
            await self.outputs[kind](b, value, metadata)

    async def invoke_with_retry(
        self,
        fn: FunctionInfo,
        trigger_value: Callable[[Any], Any],
        metadata: Mapping[str, Any],
        reason: str,
        stopping: asyncio.Event | None = None,
    ) -> InvocationResult:
        """Invoke, then apply the function's `@app.retry` policy (the host does so for timer triggers)."""
        policy = retry_policy(fn)
        attempt = 0
        while True:
            max_retry = policy.max_retry_count if policy else 0
            result = await self.invoke(fn, trigger_value, metadata, reason, attempt, max_retry)
            if result.ok or policy is None or (0 <= policy.max_retry_count <= attempt):
                return result
            delay = policy.delay(attempt)
            log.info("Function '%s' failed; retry %d in %.1fs (retry policy)", fn.name, attempt + 1, delay)
            if stopping is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)
                if stopping.is_set():
                    return result
            else:
                await asyncio.sleep(delay)
            attempt += 1

    def _run_sync(self, target: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        with self._lock:
            self.running_sync += 1
        try:
            return target(**kwargs)
        finally:
            with self._lock:
                self.running_sync -= 1

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class RetryPolicy:
    """`@app.retry(...)`: fixed_delay or exponential_backoff; max_retry_count -1 retries forever."""

    strategy: str
    max_retry_count: int
    delay_interval: float = 0.0
    minimum_interval: float = 0.0
    maximum_interval: float = 0.0

    def delay(self, attempt: int) -> float:
        if self.strategy == "fixed_delay":
            return self.delay_interval
        return float(min(self.minimum_interval * (2**attempt), self.maximum_interval or float("inf")))


def retry_policy(fn: FunctionInfo) -> RetryPolicy | None:
    """The function's retry policy from its decorators, if any (errors name the function)."""
    getter = getattr(fn.raw, "get_settings_dict", None)
    settings = getter("retry_policy") if getter else None
    if not settings:
        return None
    where = f"function {fn.name!r} retry policy"

    def span(key: str) -> float:
        value = settings.get(key)
        try:
            return parse_timespan(str(value), f"{where} {key}").total_seconds() if value else 0.0
        except ConfigError as exc:
            raise UnsupportedBinding(str(exc)) from exc

    strategy = str(settings.get("strategy", "")).lower()
    if strategy not in ("fixed_delay", "exponential_backoff"):
        raise UnsupportedBinding(
            f"{where}: strategy must be fixed_delay or exponential_backoff, not {strategy!r}"
        )
    try:
        count = int(settings.get("max_retry_count", 0))
    except ValueError as exc:
        raise UnsupportedBinding(f"{where}: max_retry_count must be an integer") from exc
    return RetryPolicy(
        strategy, count, span("delay_interval"), span("minimum_interval"), span("maximum_interval")
    )


def convert_text(data: bytes, annotation: Any, binding: Mapping[str, Any]) -> Any:
    """Plain `str`/`bytes` trigger or input values, as the worker converts them by annotation."""
    if annotation is bytes or str(binding.get("dataType", "")).lower() == "binary":
        return data
    return data.decode("utf-8")
