"""The build slot activities: `acquire_build_slot` and `release_build_slot`, the storage side of the
app-wide limit IMAGEBUILDER_MAX_CONCURRENT_BUILDS (imagebuilder/store/slots.py holds the pool).

The orchestration calls `acquire_build_slot` until it is granted (waiting on durable timers between
calls, in runSubState Queued) and `release_build_slot` on every way out. The first in line asks with
`waitSeconds` (at most MAX_WAIT_SECONDS): the activity then asks the pool every POLL_SECONDS
until it is granted or that time is up, so a freed slot changes hands in a fraction of a second, not at
the next durable timer, and a long wait costs little history.
Both are idempotent, so the host's retries and a replay after a crash change nothing. A holder or waiter
whose run is terminal, or whose run record is gone (its template was deleted), is stale: the next
acquire drops it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import azure.durable_functions as df

from activities._common import build_of, in_background, settings, store, timeout_scale, write_status
from imagebuilder.pipeline.messages import RunRef
from imagebuilder.pipeline.plan import StatusUpdate
from imagebuilder.store import InvalidKeyError
from imagebuilder.store.slots import open_slots

bp = df.Blueprint()
log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.25


def run_is_over(run: RunRef) -> bool:
    """True when `run` can hold no slot: its record is terminal or gone."""
    try:
        record = store().runs.get(run)
    except InvalidKeyError:
        return True
    return record is None or record.terminal


@bp.activity_trigger(input_name="payload")
def acquire_build_slot(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, holder, waitSeconds?, onGrant?} (holder: the orchestration instance; onGrant: a
    run status to write once granted, a StatusUpdate: sent by orchestrations started before Building
    rode on `prepare`). Output: Grant JSON (granted, position, inUse, limit, waiting, reclaimed, ticket,
    grant), once granted the host's timeoutScale, and statusWritten when onGrant was written."""
    build = build_of(payload)
    holder = str(payload["holder"])
    # the run's log is opened (made) meanwhile, so prepare does not wait for it (this process keeps
    # it open); a failure here is harmless: the first write opens it again
    opening = in_background(store().runs.log(build.run).open)
    try:
        answer = _acquire(payload, build.run, holder)
    finally:
        try:
            opening.result()
        except Exception as exc:
            log.warning("opening the log of run %s failed (its first write retries): %s", holder, exc)
    return answer


def _acquire(payload: dict[str, Any], run: RunRef, holder: str) -> dict[str, Any]:
    cfg = settings()
    slots = open_slots(cfg.storage_connection)
    limit = cfg.max_concurrent_builds
    grant = slots.acquire(cfg.build_slot_pool, holder, run, limit, run_is_over)
    wait = min(MAX_WAIT_SECONDS, max(0.0, float(payload.get("waitSeconds") or 0)))
    deadline = time.monotonic() + wait
    while not grant.granted and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)  # stale holders were checked above: the next call checks again
        grant = slots.acquire(cfg.build_slot_pool, holder, run, limit, lambda _: False)
    for stale in grant.reclaimed:
        log.warning("build slots: reclaimed the entry of %s (its run is over or gone)", stale)
    answer = grant.as_json()
    if not grant.granted:
        return answer
    answer["timeoutScale"] = timeout_scale()
    on_grant = payload.get("onGrant")
    if isinstance(on_grant, dict):
        # a failure raises: the host retries the activity, whose acquire then answers granted again
        write_status(run, StatusUpdate.model_validate(on_grant))
        answer["statusWritten"] = True
    return answer


@bp.activity_trigger(input_name="payload")
def release_build_slot(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, holder}. Output: {released: bool} (False when it held nothing: a retry)."""
    holder = str(payload["holder"])
    cfg = settings()
    released = open_slots(cfg.storage_connection).release(cfg.build_slot_pool, holder)
    return {"released": released}
