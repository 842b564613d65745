"""Triggers of image templates: partition = subscription | resource group | template, row = trigger name."""

from __future__ import annotations

import builtins
from typing import Any

from azure.data.tables import TableEntity

from imagebuilder.store._storage import (
    Table,
    etag_of,
    iso,
    join_keys,
    key,
    now,
    pack,
    parse_iso,
    retry_on_conflict,
    unpack,
)
from imagebuilder.store.errors import AlreadyExistsError, ConcurrencyError
from imagebuilder.store.records import StoredTrigger


def _record(entity: TableEntity) -> StoredTrigger:
    created = parse_iso(entity.get("CreatedAt"))
    modified = parse_iso(entity.get("LastModifiedAt"))
    assert created is not None and modified is not None
    return StoredTrigger(
        subscription_id=str(entity["SubscriptionId"]),
        resource_group=str(entity["ResourceGroup"]),
        template_name=str(entity["TemplateName"]),
        name=str(entity["Name"]),
        resource=unpack(entity, "Body", {}),
        etag=etag_of(entity),
        created_at=created,
        last_modified_at=modified,
    )


class TriggerRepo:
    """Triggers: get, create-or-replace, delete, list per template and across all templates."""

    def __init__(self, table: Table) -> None:
        self._t = table

    @staticmethod
    def _keys(sub: str, rg: str, template: str, name: str) -> tuple[str, str]:
        return join_keys(sub, rg, template), key(name)

    def get(self, sub: str, rg: str, template: str, name: str) -> StoredTrigger | None:
        entity = self._t.get(*self._keys(sub, rg, template, name))
        return None if entity is None else _record(entity)

    def put(
        self,
        sub: str,
        rg: str,
        template: str,
        name: str,
        resource: dict[str, Any],
        *,
        etag: str | None = None,
    ) -> tuple[StoredTrigger, bool]:
        """Create or replace the trigger; returns (stored, created). With `etag`, replace only if the
        trigger is unchanged since that ETag was read (`ConcurrencyError` otherwise)."""
        pk, rk = self._keys(sub, rg, template, name)
        what = f"trigger {name!r} of image template {template!r}"

        def attempt() -> tuple[StoredTrigger, bool]:
            current = self._t.get(pk, rk)
            stamp = iso(now())
            entity = {
                "PartitionKey": pk,
                "RowKey": rk,
                "SubscriptionId": sub,
                "ResourceGroup": rg,
                "TemplateName": template,
                "Name": name,
                "CreatedAt": stamp if current is None else current.get("CreatedAt"),
                "LastModifiedAt": stamp,
                **pack("Body", resource),
            }
            if current is None:
                if etag is not None:
                    raise ConcurrencyError(f"{what} no longer exists", hint="read it again")
                try:
                    self._t.create(entity, what)
                except AlreadyExistsError as exc:
                    raise ConcurrencyError(f"{what} was created concurrently") from exc
                created = True
            else:
                self._t.replace(entity, etag or etag_of(current), what)
                created = False
            stored = self.get(sub, rg, template, name)
            assert stored is not None
            return stored, created

        if etag is not None:
            return attempt()
        return retry_on_conflict(what, attempt)

    def delete(self, sub: str, rg: str, template: str, name: str, *, etag: str | None = None) -> None:
        pk, rk = self._keys(sub, rg, template, name)
        self._t.delete(pk, rk, etag=etag, what=f"trigger {name!r}")

    def list(self, sub: str, rg: str, template: str) -> list[StoredTrigger]:
        return [
            _record(e) for e in self._t.query("PartitionKey eq @pk", {"pk": join_keys(sub, rg, template)})
        ]

    def list_all(self) -> builtins.list[StoredTrigger]:
        """Every trigger of every template (for the timer that evaluates them)."""
        return [_record(e) for e in self._t.query("PartitionKey ne ''", {})]

    def delete_all(self, sub: str, rg: str, template: str) -> None:
        for trigger in self.list(sub, rg, template):
            self.delete(sub, rg, template, trigger.name)
