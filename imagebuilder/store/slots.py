"""Build slots: how many runs of the whole app may be past Queued at once, first come first served.

One pool is one entity in the table `<prefix>buildslots` (partition = the pool's name, row = "pool")
holding the runs that hold a slot and the queue of runs waiting for one, in arrival order. Every change
is an ETag-conditional read-modify-write of that one entity (retried when another writer got there
first), so all worker processes and hosts on the storage account agree, and nothing is lost on a
restart: the pool is in storage, not in a process.

    open_slots(connection_string, *, prefix="aib") -> SlotPool
    SlotPool.acquire(pool, holder, run, limit, is_stale) -> Grant   # idempotent: a retry changes nothing
    SlotPool.release(pool, holder) -> bool                          # idempotent
    SlotPool.state(pool) -> PoolState

Fairness: only the first in line is granted a free slot, so slots go out strictly in arrival order
(every entry carries its arrival `ticket`, every grant its `grant` number: both count up per pool).
Stale entries (the holder's run is terminal or gone, as `is_stale` says) are dropped by whoever acquires
next, so a killed or terminated build never keeps a slot forever. Errors: the `StoreError` tree, as the
other repositories.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.store._storage import (
    SMALL_BYTES,
    Table,
    etag_of,
    iso,
    key,
    now,
    pack,
    repack,
    retry_on_conflict,
    table_service,
    unpack,
)
from imagebuilder.store.errors import AlreadyExistsError, ConcurrencyError

_ROW = "pool"
_LOCK = threading.Lock()
_OPEN: dict[tuple[str, str], SlotPool] = {}


@dataclass(frozen=True)
class Grant:
    """The answer to one `acquire`: granted, or where the holder waits and why."""

    granted: bool
    position: int  # 1-based place among the waiters (0 once granted)
    in_use: int  # slots held after this call
    limit: int
    waiting: int  # runs waiting after this call
    reclaimed: list[str] = field(default_factory=list)  # stale holders/waiters dropped by this call
    ticket: int = 0  # arrival number in the pool (1, 2, ...)
    grant: int = 0  # grant number in the pool once granted (1, 2, ...): FCFS means grant order = ticket order

    def as_json(self) -> dict[str, Any]:
        return {
            "granted": self.granted,
            "position": self.position,
            "inUse": self.in_use,
            "limit": self.limit,
            "waiting": self.waiting,
            "reclaimed": self.reclaimed,
            "ticket": self.ticket,
            "grant": self.grant,
        }


@dataclass(frozen=True)
class PoolState:
    """A pool as stored: holders (holder -> entry) and the queue (oldest first)."""

    holders: dict[str, dict[str, Any]]
    queue: list[dict[str, Any]]
    tickets: int = 0  # arrivals so far
    grants: int = 0  # grants so far


def _ref_json(run: RunRef) -> dict[str, str]:
    return run.model_dump(mode="json")


def ref_of(entry: dict[str, Any]) -> RunRef:
    """The run an entry of the pool belongs to."""
    return RunRef.model_validate(entry["run"])


class SlotPool:
    """Build slot pools on one storage account."""

    def __init__(self, connection_string: str, *, prefix: str = "aib") -> None:
        service = table_service(connection_string)
        self._t = Table(service.create_table_if_not_exists(f"{prefix}buildslots"))

    def _read(self, pool: str) -> tuple[dict[str, Any], str | None]:
        entity = self._t.get(key(pool), _ROW)
        if entity is None:
            return {"holders": {}, "queue": []}, None
        state = unpack(entity, "State", {}) or {}
        state.setdefault("holders", {})
        state.setdefault("queue", [])
        return state, etag_of(entity)

    def _write(self, pool: str, state: dict[str, Any], etag: str | None) -> None:
        entity = {
            "PartitionKey": key(pool),
            "RowKey": _ROW,
            "Pool": pool,
            **pack("State", state, SMALL_BYTES),
        }
        if etag is None:
            try:
                self._t.create(entity, f"build slot pool {pool!r}")
            except AlreadyExistsError as exc:  # another writer made it first: read again
                raise ConcurrencyError("build slot pool created concurrently") from exc
        else:
            self._t.replace(repack(entity, "State", state, SMALL_BYTES), etag, f"build slot pool {pool!r}")

    def state(self, pool: str) -> PoolState:
        state, _ = self._read(pool)
        return PoolState(
            holders=dict(state["holders"]),
            queue=list(state["queue"]),
            tickets=int(state.get("tickets", 0)),
            grants=int(state.get("grants", 0)),
        )

    def acquire(
        self,
        pool: str,
        holder: str,
        run: RunRef,
        limit: int,
        is_stale: Callable[[RunRef], bool],
    ) -> Grant:
        """Take a slot for `holder` if one is free and nobody waits ahead of it; otherwise queue it
        (once: its place is kept across calls). Entries of other runs that `is_stale` says are over are
        dropped first. `limit` is the pool's size now (a lowered limit lets holders finish; nobody new
        gets a slot until they are fewer than the limit)."""
        if limit < 1:
            raise ValueError(f"build slot limit must be at least 1, got {limit}")
        verdicts: dict[str, bool] = {}  # one staleness check per entry per call, not per retry

        def stale(entry: dict[str, Any]) -> bool:
            name = str(entry["holder"])
            if name not in verdicts:
                verdicts[name] = is_stale(ref_of(entry))
            return verdicts[name]

        def attempt() -> Grant:
            state, etag = self._read(pool)
            holders: dict[str, dict[str, Any]] = state["holders"]
            queue: list[dict[str, Any]] = state["queue"]
            if holder in holders:
                held = holders[holder]
                return Grant(
                    True, 0, len(holders), limit, len(queue), [], int(held["ticket"]), int(held["grant"])
                )
            # only entries in our way are checked (each check reads a run record): holders when no
            # slot is free, waiters ahead of us; the ones behind are checked by those they block
            reclaimed: list[str] = []
            if len(holders) >= limit:
                for name, entry in list(holders.items()):
                    if stale({"holder": name, **entry}):
                        del holders[name]
                        reclaimed.append(name)
            kept = []
            ahead = True
            for entry in queue:
                ahead = ahead and entry["holder"] != holder
                if ahead and stale(entry):
                    reclaimed.append(str(entry["holder"]))
                else:
                    kept.append(entry)
            changed = bool(reclaimed)
            queue = kept
            position = next((i for i, e in enumerate(queue) if e["holder"] == holder), None)
            if position is None:
                tickets = int(state.get("tickets", 0)) + 1
                state["tickets"] = tickets
                queue.append(
                    {"holder": holder, "run": _ref_json(run), "since": iso(now()), "ticket": tickets}
                )
                position = len(queue) - 1
                changed = True
            ticket = int(queue[position]["ticket"])
            granted = position == 0 and len(holders) < limit
            number = 0
            if granted:
                entry = queue.pop(position)
                number = int(state.get("grants", 0)) + 1
                state["grants"] = number
                holders[holder] = {
                    "run": entry["run"],
                    "since": iso(now()),
                    "queuedSince": entry["since"],
                    "ticket": ticket,
                    "grant": number,
                }
                changed = True
            if changed:
                state["holders"], state["queue"] = holders, queue
                self._write(pool, state, etag)
            return Grant(
                granted,
                0 if granted else position + 1,
                len(holders),
                limit,
                len(queue),
                reclaimed,
                ticket,
                number,
            )

        return retry_on_conflict(f"acquire a build slot for {holder!r}", attempt)

    def release(self, pool: str, holder: str) -> bool:
        """Give back `holder`'s slot, or leave the queue. True if it held or waited."""

        def attempt() -> bool:
            state, etag = self._read(pool)
            held = state["holders"].pop(holder, None) is not None
            queue = [e for e in state["queue"] if e["holder"] != holder]
            waited = len(queue) != len(state["queue"])
            if held or waited:
                state["queue"] = queue
                self._write(pool, state, etag)
            return held or waited

        return retry_on_conflict(f"release the build slot of {holder!r}", attempt)


def open_slots(connection_string: str, *, prefix: str = "aib") -> SlotPool:
    """The process-wide `SlotPool` for this connection string (the table is created on first use)."""
    cache_key = (connection_string, prefix)
    with _LOCK:
        found = _OPEN.get(cache_key)
        if found is None:
            found = SlotPool(connection_string, prefix=prefix)
            _OPEN[cache_key] = found
        return found
