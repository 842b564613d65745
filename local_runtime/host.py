"""The local Functions host: settings, storage, indexing, keys, the HTTP server, trigger listeners and the
durable engine, started in that order and stopped in reverse on SIGINT/SIGTERM.

Startup prints (stdout, one per line): `Azurite ports: blob=B queue=Q table=T` (when AzureWebJobsStorage is
the development storage), `Listening on http://HOST:PORT`, `Functions:` and one line per function, then
`Ready` once every listener runs; `Stopping` and `Stopped` on a clean shutdown. While serving, the state
directory holds `runtime.json` ({"pid", "url", "appDir"}: where clients such as `aib` find the host;
removed on a clean shutdown, stale once its pid is gone).

Exceptions:
    HostError       the app cannot be hosted (bad config, indexing failure, a bad route); a function whose
                    trigger or binding is not implemented is only logged "in error" and skipped
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
from aiohttp import web

from local_runtime import blobs, queues, timers
from local_runtime.azurite import DEFAULT_PORTS, Azurite, AzuriteError, is_dev_storage, resolve_storage
from local_runtime.config import (
    ConfigError,
    HostConfig,
    LocalHostSettings,
    apply_settings,
    load_host_json,
    load_local_host_settings,
    load_local_settings,
)
from local_runtime.eventgrid import EVENTGRID_PATH, EventGridWebhook, load_system_key
from local_runtime.http import (
    MAX_BODY,
    HttpResult,
    RouteError,
    Router,
    cors_middleware,
    make_handler,
    route_url,
)
from local_runtime.indexing import FunctionInfo, IndexingError, index_functions, load_app
from local_runtime.invoke import FunctionLogFilter, Invoker, UnsupportedBinding, is_host_function
from local_runtime.keys import Keys, KeysError, load_keys
from local_runtime.ncrontab import ScheduleError
from local_runtime.statelock import StateDirBusy, StateLock
from local_runtime.storage import BindingError, Storage

log = logging.getLogger("local_runtime.host")


def _shutdown_grace() -> float:
    """Seconds running invocations get to finish on shutdown (LOCAL_RUNTIME_SHUTDOWN_GRACE, default 10)."""
    try:
        return max(0.0, float(os.environ.get("LOCAL_RUNTIME_SHUTDOWN_GRACE") or 10.0))
    except ValueError:
        return 10.0


@web.middleware
async def empty_error_bodies(request: web.Request, handler: Any) -> web.StreamResponse:
    """A path no route can take answers 404 with an empty body, as the Functions host does (aiohttp's own
    answer would be the text "404: Not Found"); likewise 405."""
    try:
        response: web.StreamResponse = await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        return web.Response(status=exc.status)
    return response


class HostError(Exception):
    """The app cannot be hosted; the message says what to fix."""


@dataclass
class HostOptions:
    """Command-line options of `python -m local_runtime start`."""

    app_dir: Path
    port: int | None = None  # None: local.settings.json Host.LocalHttpPort, else 7071
    host: str = "127.0.0.1"
    state_dir: Path | None = None
    private_storage: bool = False


def setup_logging(levels: dict[str, str] | None = None) -> None:
    """Console logging like `func start`: timestamp, the function (or `host`), the message; host.json
    `logging.logLevel` categories decide what is shown."""
    handler = logging.StreamHandler(sys.stdout)
    categories = FunctionLogFilter(levels)
    handler.addFilter(categories)
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(function)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(categories.lowest)  # the handler's filter decides per category
    # The storage SDK logs every request at INFO; the host's own console does not.
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def say(line: str) -> None:
    """A machine-readable startup line on stdout."""
    print(line, flush=True)


class Host:
    """One hosted app. `await run()` serves until `stop()` (or a signal) and then shuts everything down."""

    def __init__(self, options: HostOptions) -> None:
        self.options = options
        self.app_dir = options.app_dir.resolve()
        self.state_dir = (options.state_dir or self.app_dir / ".state").resolve()
        self.config: HostConfig = HostConfig()
        self.local_host = LocalHostSettings()
        self.functions: list[FunctionInfo] = []
        self.eventgrid: EventGridWebhook | None = None
        self.in_error: dict[str, str] = {}  # function name -> why it cannot run (reported, then skipped)
        self.azurite: Azurite | None = None
        self.storage: Storage | None = None
        self.durable: Any = None
        self.workers: Any = None  # local_runtime.durable.workers.WorkerPool when available
        self.keys: Keys | None = None
        self.invoker: Invoker | None = None
        self.runner: web.AppRunner | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.listeners: list[Any] = []
        self._stop = asyncio.Event()
        self.base_url = ""
        self.lock = StateLock(self.state_dir)

    # ------------------------------------------------------------------ startup
    def prepare(self) -> None:
        """Configuration, storage emulator, app import and indexing (before the event loop serves)."""
        try:
            self.config = load_host_json(self.app_dir)
            settings = load_local_settings(self.app_dir)
            self.local_host = load_local_host_settings(self.app_dir)
        except ConfigError as exc:
            raise HostError(str(exc)) from exc
        setup_logging(self.config.log_levels)
        apply_settings(settings)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:  # one host per state directory, before anything in it is touched
            self.lock.acquire()
        except StateDirBusy as exc:
            raise HostError(str(exc)) from exc
        os.environ.setdefault("AZURE_FUNCTIONS_ENVIRONMENT", "Development")
        os.environ.setdefault("FUNCTIONS_WORKER_RUNTIME", "python")
        dev = os.environ.get("AzureWebJobsStorage")  # noqa: SIM112 (the host's own spelling)
        explicit: str | None = None
        if is_dev_storage(dev):
            try:
                explicit, self.azurite = resolve_storage(
                    dev, self.state_dir, private=self.options.private_storage, search_from=self.app_dir
                )
            except AzuriteError as exc:
                raise HostError(str(exc)) from exc
            if self.options.private_storage and explicit:
                # The app sees the emulator it can reach: every dev-storage setting becomes explicit.
                for k, v in list(os.environ.items()):
                    if is_dev_storage(v):
                        os.environ[k] = explicit
            if self.azurite is not None:
                ports = (self.azurite.blob_port, self.azurite.queue_port, self.azurite.table_port)
            else:
                ports = DEFAULT_PORTS
            say("Azurite ports: blob={} queue={} table={}".format(*ports))
        self.storage = Storage(explicit)
        try:
            app = load_app(self.app_dir, os.environ.get("PYTHON_SCRIPT_FILE_NAME", "function_app.py"))
            self.functions = index_functions(app)
            if self.config.functions is not None:  # host.json "functions": load only these, as the host
                wanted = {n.lower() for n in self.config.functions}
                self.functions = [f for f in self.functions if f.name.lower() in wanted]
        except IndexingError as exc:
            raise HostError(str(exc)) from exc
        except Exception as exc:
            log.exception("importing the app failed")
            raise HostError(f"{self.app_dir}: importing the app failed: {exc!r} (trace above)") from exc
        try:
            self.keys = load_keys(self.state_dir)
        except KeysError as exc:
            raise HostError(str(exc)) from exc

    def _wants_durable(self) -> bool:
        return any(
            not is_host_function(f) or any(b.get("type") == "durableClient" for b in f.bindings)
            for f in self.functions
        )

    def _make_workers(self) -> None:
        """The worker processes that run the app's functions (FUNCTIONS_WORKER_PROCESS_COUNT), as the Python
        worker does on Azure; without local_runtime.durable (where they live) functions run in the host."""
        try:
            module = importlib.import_module("local_runtime.durable.workers")
        except ImportError as exc:
            log.warning("worker processes are not available (%s); functions run in the host process", exc)
            return
        try:
            count = module.worker_count(os.environ)
        except module.WorkerError as exc:
            raise HostError(str(exc)) from exc
        timeout = self.config.function_timeout.total_seconds() if self.config.function_timeout else None
        self.workers = module.WorkerPool(
            app_dir=self.app_dir,
            script=os.environ.get("PYTHON_SCRIPT_FILE_NAME", "function_app.py"),
            count=count if self.functions else 0,
            function_timeout=timeout,
            log_levels=self.config.log_levels,
        )

    def _make_durable(self) -> None:
        if not self._wants_durable():
            return
        try:
            module = importlib.import_module("local_runtime.durable")
        except ImportError as exc:
            log.warning(
                "the app has Durable Functions but local_runtime.durable is not available (%s); "
                "orchestrations, activities and entities will not run",
                exc,
            )
            return
        try:
            self.durable = module.DurableHost(
                functions=self.functions,
                state_dir=self.state_dir,
                host_json=self.config.raw,
                app_settings=dict(os.environ),
                base_url=self.base_url,
                app_source=(self.app_dir, os.environ.get("PYTHON_SCRIPT_FILE_NAME", "function_app.py")),
                workers=self.workers,
            )
        except Exception as exc:  # the durable engine's config errors say what to fix
            raise HostError(f"Durable Functions: {exc}") from exc
        if self.keys is not None and hasattr(self.durable, "accept_key"):
            self.durable.accept_key(self.keys.master)

    async def start(self) -> None:
        """Bind the port, mount routes, start the durable engine and every trigger listener."""
        assert self.keys is not None and self.storage is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        wanted_port = self.options.port
        if wanted_port is None:
            wanted_port = (
                self.local_host.local_http_port if self.local_host.local_http_port is not None else 7071
            )
        try:
            sock.bind((self.options.host, wanted_port))
        except OSError as exc:
            sock.close()
            raise HostError(
                f"cannot listen on {self.options.host}:{wanted_port}: {exc.strerror}; "
                "pick another --port (0 chooses a free one)"
            ) from exc
        port = sock.getsockname()[1]
        self.base_url = f"http://{self.options.host}:{port}"
        os.environ["WEBSITE_HOSTNAME"] = f"{self.options.host}:{port}"  # as Core Tools sets it
        try:
            self._make_workers()
            self._make_durable()
        except HostError:
            sock.close()
            raise
        self.invoker = Invoker(
            app_dir=self.app_dir,
            durable=self.durable,
            inputs={"blob": blobs.input_reader(self.storage)},
            outputs={
                "queue": queues.output_writer(self.storage, self.config.queues),
                "blob": blobs.output_writer(self.storage),
            },
            function_timeout=self.config.function_timeout.total_seconds()
            if self.config.function_timeout
            else None,
            workers=self.workers,
        )
        try:
            usable: list[FunctionInfo] = []
            for fn in self.functions:
                try:
                    self.invoker.check(fn)
                except UnsupportedBinding as exc:
                    # Like the host: a function that fails indexing is "in error" and the others still run.
                    log.error("The '%s' function is in error: %s", fn.name, exc)
                    self.in_error[fn.name] = f"{fn.trigger_type}: {exc}"
                    continue
                usable.append(fn)
            self.functions = usable
            router = Router(self.functions, self.config.route_prefix)
        except (UnsupportedBinding, RouteError) as exc:
            sock.close()
            raise HostError(str(exc)) from exc

        app = web.Application(
            client_max_size=MAX_BODY, middlewares=[empty_error_bodies, cors_middleware(self.local_host)]
        )
        if self.durable is not None:
            self.durable.add_routes(app)
        self.eventgrid = EventGridWebhook(
            self.functions, self._invoke_eventgrid, [load_system_key(self.state_dir), self.keys.master]
        )
        app.router.add_route("*", EVENTGRID_PATH, self.eventgrid.handle)
        app.router.add_route(
            "*", "/{tail:.*}", make_handler(router, self.keys, self._invoke_http, self._admin)
        )
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_shutdown_grace()
        )
        if self.workers is not None:
            try:
                await self.workers.start()
            except Exception as exc:  # the app does not load in a worker process
                sock.close()
                raise HostError(f"the worker process could not start: {exc}") from exc
        await self.runner.setup()
        await web.SockSite(self.runner, sock).start()
        say(f"Listening on {self.base_url}")
        write_runtime_file(self.state_dir, self.base_url, self.app_dir)
        self._print_functions(router)
        if self.durable is not None:
            try:
                await self.durable.start()
            except Exception as exc:  # a worker process that cannot load the app, an unusable store
                raise HostError(f"Durable Functions could not start: {exc}") from exc
        assert self.invoker is not None
        try:
            self.listeners = [
                *timers.listeners(self.functions, self.invoker, self.state_dir),
                *blobs.listeners(self.functions, self.invoker, self.storage, self.state_dir, self.config),
                *queues.listeners(self.functions, self.invoker, self.storage, self.config.queues),
            ]
        except (BindingError, ScheduleError, ConfigError) as exc:
            raise HostError(str(exc)) from exc
        for listener in self.listeners:
            task = asyncio.create_task(listener.run(), name=f"listener:{listener.name}")
            task.add_done_callback(self._listener_done)
            self.tasks.append(task)
        say("Ready")

    def _listener_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s stopped: %r", task.get_name(), task.exception(), exc_info=task.exception())

    def _print_functions(self, router: Router) -> None:
        assert self.keys is not None
        say("Functions:")
        by_fn = {r.function.name: r for r in router.routes}
        for fn in self.functions:
            route = by_fn.get(fn.name)
            if route is None and fn.trigger_type == "eventGridTrigger" and self.eventgrid is not None:
                say(f"  {fn.name}: eventGridTrigger {self.eventgrid.url(self.base_url, fn)}")
                continue
            if route is None:
                say(f"  {fn.name}: {fn.trigger_type}")
                continue
            methods = (
                ",".join(sorted(route.methods)) if route.methods else "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS"
            )
            url = route_url(self.base_url, route)
            if route.auth_level == "function":
                url += f"?code={self.keys.default}"
            elif route.auth_level == "admin":
                url += f" (admin: master key in {self.state_dir / 'keys.json'})"
            say(f"  {fn.name}: [{methods}] {url}")
        for name, why in self.in_error.items():
            say(f"  {name}: in error ({why})")

    # ------------------------------------------------------------------ HTTP and admin
    async def _invoke_eventgrid(
        self, fn: FunctionInfo, value: Callable[[Any], Any], metadata: dict[str, Any]
    ) -> bool:
        assert self.invoker is not None
        result = await self.invoker.invoke(fn, value, metadata, "EventGrid trigger fired")
        return result.ok

    async def _invoke_http(self, fn: FunctionInfo, req: Any, route_params: dict[str, str]) -> HttpResult:
        assert self.invoker is not None
        metadata: dict[str, Any] = {**dict(req.params), **route_params, "Query": dict(req.params)}
        raw = req.get_body()
        if raw[:1] == b"{":  # JSON body properties are binding-expression values too
            # (a body too deeply nested to decode is the function's to refuse, not the host's)
            with contextlib.suppress(ValueError, RecursionError):
                body = json.loads(raw)
                if isinstance(body, dict):
                    metadata = {**body, **metadata}
        result = await self.invoker.invoke(
            fn, lambda _ann: req, metadata, "This function was programmatically called via the host APIs."
        )
        if not result.ok:
            return HttpResult(failed=True)
        response = result.http_response(fn)
        if response is not None and not isinstance(response, str | func.HttpResponse):
            # the worker cannot encode it either: the invocation fails with a 500
            log.error(
                "Function '%s' returned %s for its http output; return func.HttpResponse or str",
                fn.name,
                type(response).__name__,
            )
            return HttpResult(failed=True)
        return HttpResult(response=response)

    async def _admin(self, request: web.Request, path: str) -> web.StreamResponse:
        parts = [p for p in path.strip("/").split("/")]
        if [p.lower() for p in parts] == ["admin", "host", "status"] and request.method == "GET":
            return web.json_response({"id": "local", "state": "Running", "version": "local_runtime"})
        if len(parts) == 3 and parts[1].lower() == "functions" and request.method == "POST":
            fn = next((f for f in self.functions if f.name.lower() == parts[2].lower()), None)
            if fn is None or not is_host_function(fn) or fn.trigger_type == "httpTrigger":
                return web.Response(status=404)
            try:
                payload = await request.json() if await request.read() else {}
            except ValueError:
                return web.json_response({"error": 'body must be JSON like {"input": "..."}'}, status=400)
            text = str((payload or {}).get("input") or "")
            invoker = self.invoker
            assert invoker is not None
            if fn.trigger_type == "timerTrigger":
                job: Awaitable[None] = timers.invoke_manually(fn, invoker)
            elif fn.trigger_type == "queueTrigger":
                job = queues.invoke_manually(fn, invoker, text)
            else:
                return web.Response(status=404)
            self.tasks.append(asyncio.ensure_future(job))
            return web.Response(status=202)
        return web.Response(status=404)

    # ------------------------------------------------------------------ shutdown
    def stop(self) -> None:
        self._stop.set()

    async def shutdown(self) -> None:
        """Stop listeners, the durable engine, the HTTP server, storage clients and Azurite, in that order."""
        for listener in self.listeners:
            listener.stop()
        if self.tasks:
            # running invocations may finish (up to the grace period), as the host drains on shutdown
            grace = _shutdown_grace()
            pending: set[asyncio.Task[None]] = set(self.tasks)
            if grace > 0:
                _, pending = await asyncio.wait(self.tasks, timeout=grace)
            for task in pending:
                log.warning("%s did not finish within %ss; cancelling it", task.get_name(), grace)
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.durable is not None:
            try:
                await self.durable.stop()
            except Exception:
                log.exception("stopping the durable engine failed")
        if self.runner is not None:
            await self.runner.cleanup()
        if self.workers is not None:
            await self.workers.stop()
        if self.storage is not None:
            await self.storage.close()
        if self.invoker is not None:
            self.invoker.close()
        if self.azurite is not None:
            self.azurite.stop()
        remove_runtime_file(self.state_dir)
        self.lock.release()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        try:
            await self.start()
            await self._stop.wait()
            say("Stopping")
        finally:
            await self.shutdown()
        say("Stopped")


RUNTIME_FILE = "runtime.json"


def write_runtime_file(state_dir: Path, url: str, app_dir: Path) -> None:
    """Record where this host listens (no secret: the keys stay in keys.json, mode 0600)."""
    path = state_dir / RUNTIME_FILE
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "url": url, "appDir": str(app_dir)}) + "\n")
    tmp.replace(path)


def remove_runtime_file(state_dir: Path) -> None:
    """Remove runtime.json if it is this process's (a second host on the same state dir wrote its own)."""
    path = state_dir / RUNTIME_FILE
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def run_host(options: HostOptions) -> int:
    """Prepare, serve until a signal, shut down; returns the process exit code."""
    host = Host(options)
    try:
        host.prepare()
        asyncio.run(host.run())
    except (HostError, BindingError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if host.azurite is not None:
            host.azurite.stop()
        host.lock.release()
        return 1
    if host.invoker is not None and host.invoker.running_sync:
        # A sync function's thread cannot be stopped and the interpreter would wait for it at exit;
        # the host would recycle the worker process, so exit now.
        print(
            f"{host.invoker.running_sync} sync invocation(s) still running; exiting without them", flush=True
        )
        sys.stderr.flush()
        os._exit(0)
    return 0
