"""The durable engine: episodes, activity workers, timers, sub-orchestrations and entities over SQLite.

One asyncio loop owns all state. An instance runs one episode at a time and each episode takes *all*
visible inbox events of the instance at once (never one replay per completion); up to
`maxConcurrentOrchestratorFunctions` instances are processed at once. User code runs in worker processes
(`workers.WorkerPool`); `maxConcurrentActivityFunctions` activities run at once and their completions are
committed in batches. Errors: `DurableError` (bad request from a client, carries an HTTP status) is the
only exception this module raises to callers.

`Engine` is composed of its concerns, each in its own module over the shared state of `core.EngineCore`:
scheduling.py (what runs next, retries, poison), episodes.py (invoking orchestrators, replay, decisions),
activities.py (activity workers, call_http, completion batches), entities.py, client.py (what the HTTP API
asks). Persistence is `store.Store`, the one place SQL is written; this module starts and stops it all.
"""

from __future__ import annotations

import asyncio
import time

from local_runtime.durable.activities import Activities
from local_runtime.durable.client import ClientOperations
from local_runtime.durable.core import (
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    SUSPENDED,
    TERMINAL,
    TERMINATED,
    DurableError,
    entity_scheduler_id,
    log,
)
from local_runtime.durable.entities import Entities
from local_runtime.durable.episodes import Episodes
from local_runtime.durable.scheduling import Scheduler
from local_runtime.durable.store import Store

__all__ = [
    "COMPLETED",
    "FAILED",
    "PENDING",
    "RUNNING",
    "SUSPENDED",
    "TERMINAL",
    "TERMINATED",
    "DurableError",
    "Engine",
    "entity_scheduler_id",
]


class Engine(Scheduler, Episodes, Activities, Entities, ClientOperations):
    """Runs every durable instance of one task hub; all public methods run on the event loop."""

    async def start(self) -> None:
        self.store = Store(self.db_path)
        await self.workers.start()
        self.slots = asyncio.Semaphore(self.max_orchestrators)
        for item in self.store.all_inbox():
            self._add_inbox_mem(item)
        # recovered work items may run again if they were mid-flight at the crash (QUIRKS.md)
        self._queue_work(self.store.all_work())
        self.tasks.append(asyncio.create_task(self._dispatch_loop(), name="durable-dispatch"))
        for i in range(self.max_activities):
            self.tasks.append(asyncio.create_task(self._activity_worker(), name=f"durable-activity-{i}"))
        self.wake.set()

    async def stop(self, grace: float = 5.0) -> None:
        self.stopping = True
        self.wake.set()
        deadline = time.monotonic() + grace
        while (self.in_flight or self.episodes) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        everything = [*self.tasks, *self.episodes]
        for t in everything:
            t.cancel()
        for t in everything:
            try:
                await t
            except (asyncio.CancelledError, Exception) as exc:
                log.debug("durable: task ended with %r at stop", exc)
        self.tasks.clear()
        if self.completions and self.store is not None:
            self._flush_completions()
        for handle in [*self.timer_handles.values(), *self.deferred.values()]:
            handle.cancel()
        self.timer_handles.clear()
        self.deferred.clear()
        if self.own_workers:
            await self.workers.stop()
        if self.http is not None:
            await self.http.close()
        if self.store is not None:
            self.store.close()
            self.store = None
