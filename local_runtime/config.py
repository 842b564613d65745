"""host.json and local.settings.json for the local host: parsed, validated, with the host's defaults.

Exceptions:
    ConfigError     a file or a value cannot be used (the message names the file and the JSON path)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """host.json or local.settings.json (or a value in them) cannot be used."""


_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d{1,7}))?)?$")


def parse_timespan(text: str, where: str = "value") -> timedelta:
    """A .NET TimeSpan string (`[d.]hh:mm[:ss[.fffffff]]`) as a timedelta."""
    m = _TIMESPAN.match(str(text).strip())
    if not m:
        raise ConfigError(f"{where}: {text!r} is not a TimeSpan; write it as hh:mm:ss, e.g. 00:00:30")
    days, hours, minutes, seconds, frac = m.groups()
    return timedelta(
        days=int(days or 0),
        hours=int(hours),
        minutes=int(minutes),
        seconds=int(seconds or 0),
        microseconds=int((frac or "0").ljust(7, "0")[:7]) // 10,
    )


@dataclass(frozen=True)
class QueuesConfig:
    """host.json `extensions.queues` with the host's defaults."""

    max_dequeue_count: int = 5
    visibility_timeout: timedelta = timedelta(0)
    max_polling_interval: timedelta = timedelta(seconds=2)
    batch_size: int = 16
    new_batch_threshold: int | None = None
    message_encoding: str = "base64"


@dataclass(frozen=True)
class HostConfig:
    """The parts of host.json the local host honours (the raw document stays in `raw`)."""

    raw: dict[str, Any] = field(default_factory=dict)
    route_prefix: str = "api"
    queues: QueuesConfig = QueuesConfig()
    blob_parallelism: int = 8
    function_timeout: timedelta | None = None
    log_level: str = "Information"
    functions: tuple[str, ...] | None = None
    log_levels: dict[str, str] = field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        # host.json and local.settings.json allow comments in the real host; strip // line comments.
        text = path.read_text(encoding="utf-8-sig")
        data = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.MULTILINE))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    return data


def _ci(mapping: Mapping[str, Any], key: str) -> Any:
    """Case-insensitive lookup, as the host's configuration binder is."""
    for k, v in mapping.items():
        if k.lower() == key.lower():
            return v
    return None


def load_host_json(app_dir: Path) -> HostConfig:
    """Read `<app_dir>/host.json` (it must exist with version 2.0, as for the real host)."""
    path = app_dir / "host.json"
    if not path.is_file():
        raise ConfigError(f'{path} is missing; a Functions app needs a host.json with {{"version": "2.0"}}')
    raw = _read_json(path)
    if str(raw.get("version", "")) != "2.0":
        raise ConfigError(f'{path}: $.version must be "2.0" (found {raw.get("version")!r})')
    ext = _ci(raw, "extensions") or {}
    http = _ci(ext, "http") or {}
    prefix = _ci(http, "routePrefix")
    route_prefix = "api" if prefix is None else str(prefix).strip("/")

    q = _ci(ext, "queues") or {}
    kwargs: dict[str, Any] = {}
    for key, attr in (("maxDequeueCount", "max_dequeue_count"), ("batchSize", "batch_size")):
        v = _ci(q, key)
        if v is not None:
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{path}: $.extensions.queues.{key} must be a positive integer")
            kwargs[attr] = v
    v = _ci(q, "newBatchThreshold")
    if v is not None:
        kwargs["new_batch_threshold"] = int(v)
    for key, attr in (
        ("visibilityTimeout", "visibility_timeout"),
        ("maxPollingInterval", "max_polling_interval"),
    ):
        v = _ci(q, key)
        if v is not None:
            kwargs[attr] = parse_timespan(v, f"{path}: $.extensions.queues.{key}")
    enc = _ci(q, "messageEncoding")
    if enc is not None:
        if str(enc).lower() not in ("base64", "none"):
            raise ConfigError(f'{path}: $.extensions.queues.messageEncoding must be "base64" or "none"')
        kwargs["message_encoding"] = str(enc).lower()

    blobs = _ci(ext, "blobs") or {}
    par = _ci(blobs, "maxDegreeOfParallelism")
    timeout = _ci(raw, "functionTimeout")
    levels = _ci(_ci(raw, "logging") or {}, "logLevel") or {}
    if not isinstance(levels, dict):
        raise ConfigError(f"{path}: $.logging.logLevel must be an object of category: level")
    level = _ci(levels, "default")
    only = _ci(raw, "functions")
    if only is not None and (not isinstance(only, list) or not all(isinstance(n, str) for n in only)):
        raise ConfigError(f"{path}: $.functions must be a list of function names")
    return HostConfig(
        raw=raw,
        route_prefix=route_prefix,
        queues=QueuesConfig(**kwargs),
        blob_parallelism=int(par) if par else 8,
        function_timeout=parse_timespan(timeout, f"{path}: $.functionTimeout") if timeout else None,
        log_level=str(level or "Information"),
        functions=tuple(only) if only is not None else None,
        log_levels={str(k): str(v) for k, v in levels.items()},
    )


def load_local_settings(app_dir: Path) -> dict[str, str]:
    """`Values` of `<app_dir>/local.settings.json` (missing file: empty), as strings."""
    path = app_dir / "local.settings.json"
    if not path.is_file():
        return {}
    data = _read_json(path)
    values = data.get("Values") or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: $.Values must be an object of app settings")
    out: dict[str, str] = {}
    for k, v in values.items():
        if isinstance(v, dict | list):
            raise ConfigError(f"{path}: $.Values.{k} must be a string, number or boolean")
        out[str(k)] = v if isinstance(v, str) else json.dumps(v)
    return out


@dataclass(frozen=True)
class LocalHostSettings:
    """local.settings.json `Host`: the port and CORS settings Core Tools reads."""

    local_http_port: int | None = None
    cors: tuple[str, ...] = ()
    cors_credentials: bool = False


def load_local_host_settings(app_dir: Path) -> LocalHostSettings:
    """`Host` of `<app_dir>/local.settings.json` (missing file or section: defaults)."""
    path = app_dir / "local.settings.json"
    if not path.is_file():
        return LocalHostSettings()
    host = _read_json(path).get("Host") or {}
    if not isinstance(host, dict):
        raise ConfigError(f"{path}: $.Host must be an object")
    port = _ci(host, "LocalHttpPort")
    if port is not None and (not str(port).isdigit() or not 0 <= int(port) < 65536):
        raise ConfigError(f"{path}: $.Host.LocalHttpPort must be a port number")
    cors = str(_ci(host, "CORS") or "")
    return LocalHostSettings(
        local_http_port=int(port) if port is not None else None,
        cors=tuple(o.strip().rstrip("/") for o in cors.split(",") if o.strip()),
        cors_credentials=bool(_ci(host, "CORSCredentials")),
    )


def apply_settings(values: Mapping[str, str]) -> None:
    """Put app settings into the environment; like Core Tools, existing environment variables win."""
    for k, v in values.items():
        os.environ.setdefault(k, v)


_APPSETTING = re.compile(r"%([^%\s]+)%")


def resolve_app_settings(text: str, where: str) -> str:
    """Replace `%NAME%` with the app setting NAME, as the host does in binding attributes."""

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            raise ConfigError(
                f"{where}: app setting %{m.group(1)}% is not set; add it to local.settings.json Values"
            )
        return value

    return _APPSETTING.sub(sub, text)
