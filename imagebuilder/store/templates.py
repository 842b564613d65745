"""Image templates in one table: partition = subscription, row = resource group | name.

A template is one entity (its JSON packed into binary properties), so a write is atomic; writes after
the first are conditional on the ETag the writer read.
"""

from __future__ import annotations

from typing import Any

from azure.data.tables import TableEntity

from imagebuilder.store._storage import (
    SMALL_BYTES,
    Table,
    etag_of,
    iso,
    join_keys,
    key,
    now,
    pack,
    parse_iso,
    prefix_range,
    unpack,
)
from imagebuilder.store.errors import NotFoundError
from imagebuilder.store.records import Page, StoredTemplate


def template_keys(sub: str, rg: str, name: str) -> tuple[str, str]:
    return key(sub), join_keys(rg, name)


def _record(entity: TableEntity) -> StoredTemplate:
    created = parse_iso(entity.get("CreatedAt"))
    modified = parse_iso(entity.get("LastModifiedAt"))
    assert created is not None and modified is not None
    last = entity.get("LastRunId")
    return StoredTemplate(
        subscription_id=str(entity["SubscriptionId"]),
        resource_group=str(entity["ResourceGroup"]),
        name=str(entity["Name"]),
        resource=unpack(entity, "Body", {}),
        etag=etag_of(entity),
        created_at=created,
        last_modified_at=modified,
        last_run_id=str(last) if last else None,
        service=unpack(entity, "Service", {}),
    )


class TemplateRepo:
    """Templates: get, create, replace (with the ETag read), delete, and paged listings."""

    def __init__(self, table: Table) -> None:
        self._t = table

    def _entity(
        self,
        sub: str,
        rg: str,
        name: str,
        resource: dict[str, Any],
        created: str,
        last_run: str | None,
        service: dict[str, Any] | None,
    ) -> dict[str, Any]:
        pk, rk = template_keys(sub, rg, name)
        extra = pack("Service", service, SMALL_BYTES) if service else {}
        return {
            "PartitionKey": pk,
            "RowKey": rk,
            "SubscriptionId": sub,
            "ResourceGroup": rg,
            "Name": name,
            "CreatedAt": created,
            "LastModifiedAt": iso(now()),
            "LastRunId": last_run or "",
            **pack("Body", resource),
            **extra,
        }

    def entity(self, sub: str, rg: str, name: str) -> TableEntity | None:
        return self._t.get(*template_keys(sub, rg, name))

    def get(self, sub: str, rg: str, name: str) -> StoredTemplate | None:
        """The template, or None. Names compare case-insensitively, as in ARM."""
        entity = self.entity(sub, rg, name)
        return None if entity is None else _record(entity)

    def create(
        self, sub: str, rg: str, name: str, resource: dict[str, Any], *, service: dict[str, Any] | None = None
    ) -> StoredTemplate:
        """Store a new template; `AlreadyExistsError` if one with that name exists. `service` is
        service-side state kept with it (`StoredTemplate.service`)."""
        entity = self._entity(sub, rg, name, resource, iso(now()) or "", None, service)
        self._t.create(entity, f"image template {name!r} in resource group {rg!r}")
        stored = self.get(sub, rg, name)
        assert stored is not None
        return stored

    def replace(
        self,
        sub: str,
        rg: str,
        name: str,
        resource: dict[str, Any],
        *,
        etag: str,
        service: dict[str, Any] | None = None,
    ) -> StoredTemplate:
        """Replace the template's resource JSON if nobody wrote it since `etag` was read.

        `ConcurrencyError` if somebody did, `NotFoundError` if it is gone. Bookkeeping (creation time,
        last run) is kept, and the service-side state unless `service` is given.
        """
        current = self.entity(sub, rg, name)
        what = f"image template {name!r} in resource group {rg!r}"
        if current is None:
            raise NotFoundError(f"{what} does not exist")
        entity = self._entity(
            sub,
            rg,
            name,
            resource,
            str(current.get("CreatedAt")),
            str(current.get("LastRunId") or "") or None,
            unpack(current, "Service", {}) if service is None else service,
        )
        self._t.replace(entity, etag, what)
        stored = self.get(sub, rg, name)
        assert stored is not None
        return stored

    def set_last_run(self, entity: TableEntity, run_id: str) -> str:
        """Point the template at its newest run, conditional on the entity's ETag; returns the new ETag."""
        updated = dict(entity)
        updated["LastRunId"] = run_id
        return self._t.replace(updated, etag_of(entity), f"image template {entity.get('Name')!r}")

    def delete(self, sub: str, rg: str, name: str, *, etag: str | None = None) -> None:
        """Delete the template entity only (see `Store.purge_template` for runs, triggers and logs)."""
        self._t.delete(*template_keys(sub, rg, name), etag=etag, what=f"image template {name!r}")

    def list_by_subscription(
        self, sub: str, *, page_size: int = 100, continuation: str | None = None
    ) -> Page[StoredTemplate]:
        items, token = self._t.page("PartitionKey eq @pk", {"pk": key(sub)}, page_size, continuation)
        return Page([_record(e) for e in items], token)

    def list_by_rg(
        self, sub: str, rg: str, *, page_size: int = 100, continuation: str | None = None
    ) -> Page[StoredTemplate]:
        low, high = prefix_range(key(rg))
        items, token = self._t.page(
            "PartitionKey eq @pk and RowKey gt @low and RowKey lt @high",
            {"pk": key(sub), "low": low, "high": high},
            page_size,
            continuation,
        )
        return Page([_record(e) for e in items], token)
