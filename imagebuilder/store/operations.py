"""ARM asynchronous operations (the targets of `Azure-AsyncOperation` / `Location` headers).

Partition = subscription, row = operation id. A terminal status is final.
"""

from __future__ import annotations

import uuid
from typing import Any

from azure.data.tables import TableEntity

from imagebuilder.store._storage import (
    SMALL_BYTES,
    Table,
    etag_of,
    iso,
    key,
    now,
    pack,
    parse_iso,
    repack,
    retry_on_conflict,
    unpack,
)
from imagebuilder.store.errors import NotFoundError
from imagebuilder.store.records import OPERATION_STATES, TERMINAL_OPERATION_STATES, OperationRecord


def _record(entity: TableEntity) -> OperationRecord:
    start = parse_iso(entity.get("StartTime"))
    assert start is not None
    return OperationRecord(
        subscription_id=str(entity["SubscriptionId"]),
        location=str(entity["Location"]),
        operation_id=str(entity["OperationId"]),
        kind=str(entity["Kind"]),
        resource_id=str(entity["ResourceId"]),
        status=str(entity["Status"]),
        start_time=start,
        end_time=parse_iso(entity.get("EndTime")),
        error=unpack(entity, "Error"),
        run_id=str(entity.get("RunId") or "") or None,
        result=unpack(entity, "Result"),
        etag=etag_of(entity),
    )


class OperationRepo:
    """Async operations: create, get, complete."""

    def __init__(self, table: Table) -> None:
        self._t = table

    def create(
        self,
        sub: str,
        location: str,
        *,
        kind: str,
        resource_id: str,
        status: str = "InProgress",
        run_id: str | None = None,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> OperationRecord:
        if status not in OPERATION_STATES:
            raise ValueError(f"operation status {status!r} is not one of {', '.join(OPERATION_STATES)}")
        op_id = str(uuid.uuid4())
        stamp = iso(now())
        entity: dict[str, Any] = {
            "PartitionKey": key(sub),
            "RowKey": key(op_id),
            "SubscriptionId": sub,
            "Location": location,
            "OperationId": op_id,
            "Kind": kind,
            "ResourceId": resource_id,
            "Status": status,
            "StartTime": stamp,
            "EndTime": stamp if status in TERMINAL_OPERATION_STATES else "",
            "RunId": run_id or "",
        }
        if result is not None:
            entity.update(pack("Result", result))
        if error is not None:
            entity.update(pack("Error", error))
        self._t.create(entity, f"operation {op_id}")
        record = self.get(sub, op_id)
        assert record is not None
        return record

    def get(self, sub: str, operation_id: str) -> OperationRecord | None:
        entity = self._t.get(key(sub), key(operation_id))
        return None if entity is None else _record(entity)

    def complete(
        self,
        sub: str,
        operation_id: str,
        *,
        status: str,
        error: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> OperationRecord:
        """Finish the operation (`Succeeded`, `Failed` or `Canceled`); a finished one stays as it is."""
        if status not in TERMINAL_OPERATION_STATES:
            raise ValueError(f"{status!r} is not a terminal operation status")

        def attempt() -> OperationRecord:
            entity = self._t.get(key(sub), key(operation_id))
            if entity is None:
                raise NotFoundError(f"operation {operation_id} does not exist")
            if entity["Status"] in TERMINAL_OPERATION_STATES:
                return _record(entity)
            updated: dict[str, Any] = {**dict(entity), "Status": status, "EndTime": iso(now())}
            if error is not None:
                updated = repack(updated, "Error", error, SMALL_BYTES)
            if result is not None:
                updated = repack(updated, "Result", result)
            self._t.replace(updated, etag_of(entity), f"operation {operation_id}")
            record = self.get(sub, operation_id)
            assert record is not None
            return record

        return retry_on_conflict(f"complete operation {operation_id}", attempt)
