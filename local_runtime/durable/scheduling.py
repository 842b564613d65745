"""Scheduling: which instance is processed next. Ready instances start an episode (or an entity
batch) on the event loop, at most `maxConcurrentOrchestratorFunctions` at once and never two for one instance;
a host-side failure is retried with back-off and, after POISON_LIMIT attempts, fails the instance.
"""

from __future__ import annotations

import asyncio
import json
import time

from local_runtime.durable import history as h
from local_runtime.durable.core import (
    _STATUS_NUM,
    FAILED,
    POISON_LIMIT,
    TERMINAL,
    EngineCore,
    _Effects,
    log,
)
from local_runtime.durable.workers import WorkerDied


class Scheduler(EngineCore):
    async def _dispatch_loop(self) -> None:
        """Start an episode (or entity batch) for every ready instance not already being processed, at
        most `maxConcurrentOrchestratorFunctions` at once; one instance is never processed twice at once."""
        assert self.slots is not None
        while not self.stopping:
            await self.wake.wait()
            self.wake.clear()
            while not self.stopping:
                iid = next((i for i in self.ready if i not in self.running), None)
                if iid is None:
                    break  # the rest are being processed: their end wakes this loop
                await self.slots.acquire()
                if self.stopping:
                    self.slots.release()
                    break
                if iid not in self.ready or iid in self.running:  # consumed while waiting for a slot
                    self.slots.release()
                    continue
                del self.ready[iid]
                self.running.add(iid)
                task = asyncio.create_task(self._process(iid), name=f"durable:{iid}")
                self.episodes.add(task)
                task.add_done_callback(self.episodes.discard)

    async def _process(self, iid: str) -> None:
        assert self.slots is not None
        try:
            if iid.startswith("@"):
                await self._entity_batch(iid)
            else:
                t0 = time.perf_counter()
                await self._episode(iid)
                if iid in self.outstanding:
                    self.replay_cost[iid] = time.perf_counter() - t0
                else:
                    self.replay_cost.pop(iid, None)
        except Exception as exc:
            self._processing_failed(iid, exc)
        else:
            self.failures.pop(iid, None)
        finally:
            self.running.discard(iid)
            self.slots.release()
            if iid in self.ready:
                self.wake.set()

    def _processing_failed(self, iid: str, exc: Exception) -> None:
        """A host-side error (not user code) while processing `iid`: the transaction rolled back. Retry
        with back-off; after POISON_LIMIT attempts the instance fails (an entity drops the batch), as a
        poison message would on Azure, instead of being retried forever."""
        self.instances.pop(iid, None)  # forget what memory may have changed, reload from SQLite
        n = self.failures.get(iid, 0) + 1
        self.failures[iid] = n
        loop = asyncio.get_running_loop()
        if n < POISON_LIMIT and isinstance(exc, WorkerDied):  # collateral of a recycled or killed worker
            log.warning("durable: %s: %s (attempt %d of %d); retrying", iid, exc, n, POISON_LIMIT)
            loop.call_later(min(30.0, 0.25 * 2**n), self._mark_ready, iid)
            return
        if n < POISON_LIMIT:
            log.exception("durable: processing %s failed (attempt %d of %d); retrying", iid, n, POISON_LIMIT)
            loop.call_later(min(30.0, 0.25 * 2**n), self._mark_ready, iid)
            return
        log.error("durable: processing %s failed %d times; giving up on it", iid, n, exc_info=exc)
        try:
            self._poison(iid, f"{type(exc).__name__}: {exc}")
            self.failures.pop(iid, None)
        except Exception:
            log.exception("durable: could not record the failure of %s; retrying in 60 s", iid)
            self.instances.pop(iid, None)
            loop.call_later(60.0, self._mark_ready, iid)

    def _poison(self, iid: str, error: str) -> None:
        visible = self._visible(iid)
        ids = [i.id for i in visible]
        fx = _Effects()
        inst = None if iid.startswith("@") else self._instance(iid)
        with self.db.transaction() as c:
            self.db.delete_inbox(c, ids)
            if inst is not None and inst.row.status not in TERMINAL:
                row = inst.row
                message = f"The host could not process this instance after {POISON_LIMIT} attempts: {error}"
                done = h.event(
                    h.EXECUTION_COMPLETED,
                    h.utcnow(),
                    OrchestrationStatus=_STATUS_NUM[FAILED],
                    Result=json.dumps(message),
                    FailureDetails={"ErrorType": "PoisonMessage", "ErrorMessage": message},
                )
                # history may be what cannot be read: append without parsing it
                self.db.append_history(c, iid, self.db.history_length(iid), [done])
                self.db.delete_execution_work(c, iid, row.execution_id)
                row.status, row.output, row.updated = FAILED, json.dumps(message), time.time()
                self.db.put_instance(c, row)
                self._notify_parent(c, row, failed=True, result=None, reason=message, fx=fx)
        self._consume(iid, set(ids))
        self.instances.pop(iid, None)
        self._apply(fx)
