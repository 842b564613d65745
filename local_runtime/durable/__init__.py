"""Durable Functions for the local host: `DurableHost`, the one object the HTTP host mounts.

It wires the engine (episodes, activities, timers, entities over SQLite in the state directory) to the
Durable extension's HTTP API and builds the `durableClient` binding value. Modules: history (event
shapes), replay (DTFx sequence numbers, non-determinism), calls (worker-style invocation), workers (the
worker processes that run user code; worker is their entry point), store (SQLite, the one SQL access
point), engine (composed of core, scheduling, episodes, activities, entities, client), http_api.

    Exception
    ├── DurableConfigError   DurableHost(): host.json durableTask / an app setting it names is unusable
    ├── DurableError         engine: a client request refused; carries the HTTP status the API answers
    └── ReplayError          replay: an action list the host cannot process; fails that orchestration
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from local_runtime.config import ConfigError, parse_timespan
from local_runtime.durable.engine import DurableError, Engine
from local_runtime.durable.http_api import RPC_PREFIX, WEBHOOK_PREFIX, DurableHttpApi, quote_id
from local_runtime.durable.workers import WorkerError, WorkerPool, worker_count
from local_runtime.indexing import DURABLE_TRIGGERS, FunctionInfo
from local_runtime.keys import load_or_create_system_key

__all__ = ["DurableConfigError", "DurableError", "DurableHost"]

DEFAULT_HUB = "TestHubName"
DEFAULT_MAX_ACTIVITIES = 10
SYSTEM_KEY_FILE = "durabletask_extension.key"


class DurableConfigError(Exception):
    """host.json's durableTask section or an app setting it names cannot be used."""


def _durable_section(host_json: Mapping[str, Any]) -> dict[str, Any]:
    ext = host_json.get("extensions") or {}
    section = ext.get("durableTask") if isinstance(ext, dict) else None
    if section is None:
        section = host_json.get("durableTask")
    return dict(section) if isinstance(section, dict) else {}


def _function_timeout(host_json: Mapping[str, Any]) -> float | None:
    """host.json functionTimeout in seconds (None: unlimited, also for "-1")."""
    raw = next((v for k, v in host_json.items() if k.lower() == "functiontimeout"), None)
    if raw is None or str(raw).strip() in ("", "-1"):
        return None
    try:
        return parse_timespan(str(raw), "host.json functionTimeout").total_seconds() or None
    except ConfigError as exc:
        raise DurableConfigError(str(exc)) from exc


def _log_levels(host_json: Mapping[str, Any]) -> dict[str, str]:
    logging_section = next((v for k, v in host_json.items() if k.lower() == "logging"), None) or {}
    levels = next((v for k, v in logging_section.items() if k.lower() == "loglevel"), None) or {}
    return {str(k): str(v) for k, v in levels.items()} if isinstance(levels, dict) else {}


def resolve_hub_name(host_json: Mapping[str, Any], app_settings: Mapping[str, str]) -> str:
    """`extensions.durableTask.hubName` with `%APPSETTING%` references resolved, like the host does."""
    raw = _durable_section(host_json).get("hubName")
    if not raw:
        return DEFAULT_HUB

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in app_settings:
            raise DurableConfigError(
                f"host.json extensions.durableTask.hubName refers to app setting %{key}% which is not set; "
                f"add {key} to local.settings.json Values (or the environment)"
            )
        return app_settings[key]

    name = re.sub(r"%([^%]+)%", sub, str(raw))
    provider = _durable_section(host_json).get("storageProvider")
    kind = str(provider.get("type", "")).lower() if isinstance(provider, dict) else ""
    if kind in ("", "azurestorage"):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,49}", name):
            raise DurableConfigError(
                f"task hub name {name!r} (host.json extensions.durableTask.hubName) must be 3-50 letters and "
                "digits starting with a letter, as Azure Storage requires"
            )
    elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        # MSSQL, Netherite and the Durable Task Scheduler (azureManaged) take names like "my-hub"; this
        # host stores every provider's state in the same SQLite file
        raise DurableConfigError(
            f"task hub name {name!r} (host.json extensions.durableTask.hubName) must be 1-100 letters, "
            "digits, '-', '_' or '.'"
        )
    return name


class DurableHost:
    """Durable Functions on the local host: start it after `add_routes`, stop it before the server."""

    def __init__(
        self,
        *,
        functions: list[FunctionInfo],
        state_dir: Path,
        host_json: dict[str, Any],
        app_settings: Mapping[str, str],
        base_url: str,
        app_source: tuple[Path, str] | None = None,
        workers: WorkerPool | None = None,
    ) -> None:
        self.hub = resolve_hub_name(host_json, app_settings)
        section = _durable_section(host_json)
        try:
            max_activities = int(section.get("maxConcurrentActivityFunctions", DEFAULT_MAX_ACTIVITIES))
        except (TypeError, ValueError) as exc:
            raise DurableConfigError(
                "host.json extensions.durableTask.maxConcurrentActivityFunctions must be an integer"
            ) from exc
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.base_url = base_url.rstrip("/")
        self.functions = functions
        try:
            max_orchestrators = int(
                section.get("maxConcurrentOrchestratorFunctions", 10 * (os.cpu_count() or 1))
            )
        except (TypeError, ValueError) as exc:
            raise DurableConfigError(
                "host.json extensions.durableTask.maxConcurrentOrchestratorFunctions must be an integer"
            ) from exc
        timeout = _function_timeout(host_json)
        app_dir, script = app_source or self._app_source(functions)
        try:
            count = (
                worker_count(app_settings)
                if any(f.trigger_type in DURABLE_TRIGGERS for f in functions)
                else 0
            )
        except WorkerError as exc:
            raise DurableConfigError(str(exc)) from exc
        # the host's pool (shared with its other functions, as one worker runs them all on Azure), or our own
        self.workers = workers or WorkerPool(
            app_dir=app_dir,
            script=script,
            count=count,
            function_timeout=timeout,
            log_levels=_log_levels(host_json),
        )
        self.engine = Engine(
            functions=functions,
            db_path=self.state_dir / "durable.sqlite",
            max_activities=max_activities,
            max_orchestrators=max_orchestrators,
            workers=self.workers,
            function_timeout=timeout,
            own_workers=workers is None,
        )
        self.api = DurableHttpApi(self, self.engine)
        self.system_key = load_or_create_system_key(self.state_dir / SYSTEM_KEY_FILE)
        self._extra_keys: list[str] = []

    @staticmethod
    def _app_source(functions: list[FunctionInfo]) -> tuple[Path, str]:
        """The folder and script file the worker processes import: where the app's functions are defined
        (the SDK wraps orchestrators and entities in its own module, so those are skipped)."""
        if not any(f.trigger_type in DURABLE_TRIGGERS for f in functions):
            return Path.cwd(), "function_app.py"  # no worker is started (client bindings only)
        for f in functions:
            target = inspect.unwrap(f.user_function)
            if str(getattr(target, "__module__", "")).startswith("azure."):
                continue
            try:
                path = Path(inspect.getfile(target)).resolve()
            except (TypeError, OSError):
                continue
            return path.parent, path.name
        raise DurableConfigError(
            "cannot tell which file defines the app's functions; pass app_source=(folder, script)"
        )

    def accept_key(self, key: str) -> None:
        """Also accept `key` (e.g. the host's master key) on the public webhook endpoints."""
        self._extra_keys.append(key)

    def accepted_keys(self) -> list[str]:
        return [self.system_key, *self._extra_keys]

    # ------------------------------------------------------------------ the interface the host uses
    def add_routes(self, app: web.Application) -> None:
        self.api.add_routes(app)

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    @property
    def rpc_base_url(self) -> str:
        return f"{self.base_url}{RPC_PREFIX}/"

    @property
    def webhook_base_url(self) -> str:
        return f"{self.base_url}{WEBHOOK_PREFIX}"

    def management_urls(self, instance_id: str, connection: str = "Storage") -> dict[str, str]:
        pre = f"{self.webhook_base_url}/instances/{quote_id(instance_id)}"
        q = f"taskHub={self.hub}&connection={connection}&code={self.system_key}"
        return {
            "id": instance_id,
            "statusQueryGetUri": f"{pre}?{q}",
            "sendEventPostUri": f"{pre}/raiseEvent/{{eventName}}?{q}",
            "terminatePostUri": f"{pre}/terminate?reason={{text}}&{q}",
            "rewindPostUri": f"{pre}/rewind?reason={{text}}&{q}",
            "purgeHistoryDeleteUri": f"{pre}?{q}",
            "restartPostUri": f"{pre}/restart?{q}",
            "suspendPostUri": f"{pre}/suspend?reason={{text}}&{q}",
            "resumePostUri": f"{pre}/resume?reason={{text}}&{q}",
        }

    def client_binding_json(self, binding: dict[str, Any]) -> str:
        """What a `durableClient` binding receives (BindingHelper.DurableOrchestrationClientToString)."""
        hub = binding.get("taskHub") or self.hub
        connection = binding.get("connectionName") or binding.get("connection")
        code = f"code={self.system_key}"
        base = self.webhook_base_url
        start = f"{base}/orchestrators/{{functionName}}[/{{instanceId}}]"
        mgmt = self.management_urls("INSTANCEID", connection or "Storage")
        mgmt = {k: v.replace(f"taskHub={self.hub}", f"taskHub={hub}") for k, v in mgmt.items()}
        return json.dumps(
            {
                "taskHubName": hub,
                "connectionName": connection,
                "creationUrls": {
                    "createNewInstancePostUri": f"{start}?{code}",
                    "createAndWaitOnNewInstancePostUri": (
                        f"{start}?timeout={{timeoutInSeconds}}&pollingInterval={{intervalInSeconds}}&{code}"
                    ),
                },
                "managementUrls": mgmt,
                "baseUrl": base,
                "requiredQueryStringParameters": code,
                "rpcBaseUrl": self.rpc_base_url,
                "httpBaseUrl": None,
            }
        )

    def status_url(self, instance_id: str) -> str:
        """The public (webhook, keyed) status URL of an instance."""
        return self.management_urls(instance_id)["statusQueryGetUri"]
