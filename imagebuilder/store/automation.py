"""What the timer and blob triggers need beyond the API's store: listings across every template and run
(for the sweeper and the artifact trigger) and each trigger's evaluation state (failure count, last
occurrence, last run it started) in the table `<prefix>triggerstate`, kept apart from the trigger
resource so that GET/PUT of a trigger show AIB's shape only.

`open_automation(connection_string, *, prefix="aib") -> Automation`. Errors: `StoreError` tree, as
the other repositories (a lost update is `ConcurrencyError`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.store._storage import (
    Table,
    etag_of,
    join_keys,
    key,
    pack,
    table_service,
    unpack,
)
from imagebuilder.store.errors import AlreadyExistsError, ConcurrencyError
from imagebuilder.store.records import TERMINAL_RUN_STATES, StoredTrigger

_PENDING = "~artifact"  # row of a deferred artifact check (trigger names cannot contain '~')
_LOCK = threading.Lock()
_OPEN: dict[tuple[str, str], Automation] = {}


@dataclass(frozen=True)
class RunIndexEntry:
    """One run as listed across all templates: its identity and state."""

    run: RunRef
    run_state: str

    @property
    def terminal(self) -> bool:
        return self.run_state in TERMINAL_RUN_STATES


@dataclass
class TriggerState:
    """Evaluation state of one trigger. `data` keys: failures, lastOccurrence, lastRunId, countedRunId,
    lastVersion, lastError, triggerCreatedAt."""

    data: dict[str, Any] = field(default_factory=dict)
    etag: str | None = None


class Automation:
    """Cross-template listings and trigger evaluation state on one storage account."""

    def __init__(self, connection_string: str, *, prefix: str = "aib") -> None:
        service = table_service(connection_string)
        self._templates = Table(service.create_table_if_not_exists(f"{prefix}templates"))
        self._runs = Table(service.create_table_if_not_exists(f"{prefix}runs"))
        self._state = Table(service.create_table_if_not_exists(f"{prefix}triggerstate"))

    # -- listings ------------------------------------------------------------------------------------

    def template_keys(self) -> list[tuple[str, str, str]]:
        """(subscription, resource group, name) of every template."""
        rows = self._templates.query(
            "PartitionKey ne ''", {}, select=["SubscriptionId", "ResourceGroup", "Name"]
        )
        return [(str(e["SubscriptionId"]), str(e["ResourceGroup"]), str(e["Name"])) for e in rows]

    def runs(self) -> list[RunIndexEntry]:
        """Every run of every template (identity and runState only)."""
        rows = self._runs.query(
            "PartitionKey ne ''",
            {},
            select=["SubscriptionId", "ResourceGroup", "TemplateName", "RunId", "RunState"],
        )
        return [
            RunIndexEntry(
                RunRef(
                    subscription_id=str(e["SubscriptionId"]),
                    resource_group=str(e["ResourceGroup"]),
                    template_name=str(e["TemplateName"]),
                    run_id=str(e["RunId"]),
                ),
                str(e["RunState"]),
            )
            for e in rows
        ]

    # -- trigger state -------------------------------------------------------------------------------

    @staticmethod
    def _keys(trigger: StoredTrigger) -> tuple[str, str]:
        return join_keys(trigger.subscription_id, trigger.resource_group, trigger.template_name), key(
            trigger.name
        )

    def trigger_state(self, trigger: StoredTrigger) -> TriggerState:
        """The trigger's state; a fresh one if none, or if the trigger was deleted and created again."""
        entity = self._state.get(*self._keys(trigger))
        if entity is None:
            return TriggerState({"triggerCreatedAt": _iso(trigger.created_at)})
        data = unpack(entity, "State", {})
        if data.get("triggerCreatedAt") != _iso(trigger.created_at):
            data = {"triggerCreatedAt": _iso(trigger.created_at)}
        return TriggerState(data, etag_of(entity))

    def save_trigger_state(self, trigger: StoredTrigger, state: TriggerState) -> TriggerState:
        """Write the state if nobody else did since it was read (`ConcurrencyError` otherwise)."""
        pk, rk = self._keys(trigger)
        entity = {"PartitionKey": pk, "RowKey": rk, **pack("State", state.data)}
        what = f"state of trigger {trigger.name!r}"
        if state.etag is None:
            try:
                etag = self._state.create(entity, what)
            except AlreadyExistsError as exc:
                raise ConcurrencyError(f"{what} was written concurrently") from exc
        else:
            etag = self._state.replace(entity, state.etag, what)
        return TriggerState(state.data, etag)

    # -- deferred artifact checks --------------------------------------------------------------------

    def mark_pending(self, sub: str, rg: str, template: str, reason: dict[str, Any]) -> None:
        """Remember to re-check a template whose artifact changed while it was building."""
        entity = {
            "PartitionKey": join_keys(sub, rg, template),
            "RowKey": _PENDING,
            "SubscriptionId": sub,
            "ResourceGroup": rg,
            "TemplateName": template,
            **pack("Reason", reason),
        }
        self._state.upsert(entity)

    def pending(self) -> list[tuple[str, str, str, dict[str, Any], str]]:
        """(subscription, resource group, template, reason, etag) of every deferred check."""
        rows = self._state.query("RowKey eq @rk", {"rk": _PENDING})
        return [
            (
                str(e["SubscriptionId"]),
                str(e["ResourceGroup"]),
                str(e["TemplateName"]),
                unpack(e, "Reason", {}),
                etag_of(e),
            )
            for e in rows
        ]

    def clear_pending(self, sub: str, rg: str, template: str, etag: str) -> None:
        """Drop a deferred check, unless it was marked again since it was read."""
        self._state.delete(join_keys(sub, rg, template), _PENDING, etag=etag, what="deferred artifact check")

    def prune(self, live: set[tuple[str, str, str]]) -> int:
        """Delete the trigger states and deferred checks of templates not in `live` (sub, rg, name);
        returns how many rows went."""
        keep = {join_keys(*t) for t in live}
        gone = 0
        for e in self._state.query("PartitionKey ne ''", {}, select=["PartitionKey", "RowKey"]):
            if str(e["PartitionKey"]) not in keep:
                self._state.delete(str(e["PartitionKey"]), str(e["RowKey"]))
                gone += 1
        return gone

    def delete_trigger_states(self, sub: str, rg: str, template: str) -> None:
        pk = join_keys(sub, rg, template)
        for e in self._state.query("PartitionKey eq @pk", {"pk": pk}, select=["PartitionKey", "RowKey"]):
            self._state.delete(pk, str(e["RowKey"]))


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def open_automation(connection_string: str, *, prefix: str = "aib") -> Automation:
    """The process-wide `Automation` for this connection string."""
    cache_key = (connection_string, prefix)
    with _LOCK:
        found = _OPEN.get(cache_key)
        if found is None:
            found = Automation(connection_string, prefix=prefix)
            _OPEN[cache_key] = found
        return found
