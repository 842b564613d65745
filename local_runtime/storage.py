"""Storage connections for bindings: app-setting names to connection strings, cached async clients, and the
binding-expression resolver (`{name}`, `{rand-guid}`, `{DateTime}`, `%AppSetting%`) used by blob and queue
bindings.

Exceptions:
    BindingError    a binding names a connection that is not set, or an expression with no value
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from azure.storage.blob.aio import BlobServiceClient
from azure.storage.queue.aio import QueueServiceClient

from local_runtime.azurite import is_dev_storage
from local_runtime.config import ConfigError, resolve_app_settings


class BindingError(Exception):
    """A binding cannot be resolved (missing connection setting or binding-expression value)."""


def connection_string(setting: str | None, dev_storage: str | None) -> str:
    """The connection string behind a binding's `connection` (an app setting name), like the host.

    Looks up NAME, then AzureWebJobsNAME; the development-storage shorthand becomes `dev_storage`.
    """
    name = setting or "AzureWebJobsStorage"
    value = os.environ.get(name) or os.environ.get(f"AzureWebJobs{name}")
    if not value:
        raise BindingError(
            f"connection {name!r}: app setting {name} is not set; add it to local.settings.json Values "
            '(e.g. "UseDevelopmentStorage=true")'
        )
    if is_dev_storage(value) and dev_storage:
        return dev_storage
    return value


class Storage:
    """Async blob and queue clients per connection string, closed together at shutdown."""

    def __init__(self, dev_storage: str | None) -> None:
        self.dev_storage = dev_storage
        self._blob: dict[str, BlobServiceClient] = {}
        self._queue: dict[str, QueueServiceClient] = {}

    def blob_service(self, setting: str | None) -> BlobServiceClient:
        conn = connection_string(setting, self.dev_storage)
        if conn not in self._blob:
            self._blob[conn] = BlobServiceClient.from_connection_string(conn)
        return self._blob[conn]

    def queue_service(self, setting: str | None) -> QueueServiceClient:
        conn = connection_string(setting, self.dev_storage)
        if conn not in self._queue:
            self._queue[conn] = QueueServiceClient.from_connection_string(conn)
        return self._queue[conn]

    async def close(self) -> None:
        for blob in self._blob.values():
            with contextlib.suppress(Exception):
                await blob.close()
        for queue in self._queue.values():
            with contextlib.suppress(Exception):
                await queue.close()
        self._blob.clear()
        self._queue.clear()


_EXPR = re.compile(r"\{([^{}]+)\}")


def _lookup(metadata: Mapping[str, Any], dotted: str) -> Any:
    value: Any = metadata
    for part in dotted.split("."):
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        if not isinstance(value, Mapping):
            return None
        found = None
        for k, v in value.items():
            if str(k).lower() == part.lower():
                found = v
                break
        if found is None:
            return None
        value = found
    return value


def resolve_expression(template: str, metadata: Mapping[str, Any], where: str) -> str:
    """Fill a binding attribute (a blob path, a queue name) from trigger metadata, as the host does."""
    try:
        text = resolve_app_settings(template, where)
    except ConfigError as exc:
        raise BindingError(str(exc)) from exc
    now = datetime.now(UTC)

    def sub(m: re.Match[str]) -> str:
        key = m.group(1).strip()
        low = key.lower()
        if low in ("rand-guid", "sys.randguid"):
            return str(uuid.uuid4())
        if low == "datetime":
            return now.strftime("%Y-%m-%dT%H-%M-%SZ")
        if low == "sys.utcnow":
            return now.strftime("%Y-%m-%dT%H:%M:%SZ")
        value = _lookup(metadata, key)
        if value is None:
            raise BindingError(
                f"{where}: binding expression {{{key}}} has no value for this trigger "
                f"(available: {', '.join(sorted(map(str, metadata))) or 'none'})"
            )
        return value if isinstance(value, str) else json.dumps(value)

    return _EXPR.sub(sub, text)
