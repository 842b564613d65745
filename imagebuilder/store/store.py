"""`open_store`: the storage clients for one storage account, with tables and containers created once.

The connection string is a shared-key one (Azurite), `UseDevelopmentStorage=true`, or identity-based with
no secret: `AccountName=<name>;Credential=managedidentity[;ClientId=<id>][;TableEndpoint=..;BlobEndpoint=..]`
(what `AzureWebJobsStorage__accountName` / `__credential` / `__clientId` describe on Azure)."""

from __future__ import annotations

import re
import threading

from azure.core.exceptions import ResourceExistsError

from imagebuilder.store._storage import Table, blob_service, table_service
from imagebuilder.store.operations import OperationRepo
from imagebuilder.store.runs import RunRepo
from imagebuilder.store.templates import TemplateRepo
from imagebuilder.store.triggers import TriggerRepo

_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,19}$")
_LOCK = threading.Lock()
_OPEN: dict[tuple[str, str], Store] = {}


class Store:
    """Templates, runs (with outputs and logs), triggers and async operations on one storage account."""

    def __init__(self, connection_string: str, *, prefix: str = "aib") -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(
                f"store prefix {prefix!r} must be 1-20 lowercase letters/digits, starting with a letter"
            )
        tables, blobs = table_service(connection_string), blob_service(connection_string)
        names = {n: f"{prefix}{n}" for n in ("templates", "runs", "runoutputs", "triggers", "operations")}
        clients = {n: tables.create_table_if_not_exists(t) for n, t in names.items()}
        logs = blobs.get_container_client(f"{prefix}-runlogs")
        try:
            logs.create_container()
        except ResourceExistsError:
            pass
        self.prefix = prefix
        self.templates = TemplateRepo(Table(clients["templates"]))
        self.runs = RunRepo(Table(clients["runs"]), Table(clients["runoutputs"]), self.templates, logs)
        self.triggers = TriggerRepo(Table(clients["triggers"]))
        self.operations = OperationRepo(Table(clients["operations"]))

    def purge_template(self, sub: str, rg: str, name: str, *, etag: str | None = None) -> None:
        """Delete a template with its triggers, runs, run outputs and logs (children first, so a crash
        half-way leaves the template to delete again, never orphans under a re-created name)."""
        self.triggers.delete_all(sub, rg, name)
        self.runs.delete_all(sub, rg, name)
        self.templates.delete(sub, rg, name, etag=etag)


def open_store(connection_string: str, *, prefix: str = "aib") -> Store:
    """The process-wide `Store` for this connection string (tables and containers created on first use)."""
    cache_key = (connection_string, prefix)
    with _LOCK:
        store = _OPEN.get(cache_key)
        if store is None:
            store = Store(connection_string, prefix=prefix)
            _OPEN[cache_key] = store
        return store
