"""The build slot settler: on the sweeper's schedule (IMAGEBUILDER_SWEEP_SCHEDULE, every 5 minutes by
default) it looks at every run holding or waiting for one of the app's build slots
(imagebuilder/store/slots.py) whose run record is not terminal, and asks the durable host about its
orchestration. One that ended without recording its end (terminated, failed, crashed) is settled as the
API settles it (`api._builds.reconcile`); one the host no longer knows (purged, or its durable state
lost) is recorded Failed (Canceled if a cancel was asked). Their slots and places are given back at once,
so a run that can no longer release its slot keeps it at most until the next tick.
"""

from __future__ import annotations

import logging

import azure.durable_functions as df
import azure.functions as func

from api._arm import in_thread
from api._builds import reconcile
from imagebuilder.store.slots import open_slots, ref_of
from triggers._common import SWEEP_SCHEDULE, settings, store

bp = df.Blueprint()
log = logging.getLogger("triggers.slot_settler")

_ENDED = {"Completed", "Failed", "Terminated", "Canceled"}
GONE = (
    "The build orchestration is gone (the durable host no longer knows it: purged, or its state was "
    "lost) while it held or waited for a build slot; run the template again."
)


async def settle_build_slots_once(client: df.DurableOrchestrationClient) -> list[str]:
    """One pass; returns what it settled (`<holder>: <new runState>`)."""
    cfg = settings()
    slots = open_slots(cfg.storage_connection)
    state = await in_thread(slots.state, cfg.build_slot_pool)
    entries = [(holder, entry) for holder, entry in state.holders.items()]
    entries += [(str(entry["holder"]), entry) for entry in state.queue]
    st = store()
    settled = []
    for holder, entry in entries:
        record = await in_thread(st.runs.get, ref_of(entry))
        if record is not None and not record.terminal:
            try:
                status = await client.get_status(holder)
            except Exception as exc:  # the host cannot tell now: next tick
                log.warning("build slots: status of %s unavailable: %s", holder, exc)
                continue
            runtime = getattr(getattr(status, "runtime_status", None), "value", None)
            if runtime is None:
                canceled = record.run_state == "Canceling"
                record = await in_thread(
                    st.runs.set_status,
                    record.run,
                    run_state="Canceled" if canceled else "Failed",
                    message="The build was canceled." if canceled else GONE,
                    error=None if canceled else {"code": "BuildOrchestrationGone", "message": GONE},
                )
            elif runtime in _ENDED:
                record = await reconcile(client, st, record)
            if not record.terminal:
                continue  # alive: it releases its own slot
        await in_thread(slots.release, cfg.build_slot_pool, holder)
        settled.append(f"{holder}: {record.run_state if record is not None else 'run gone'}")
    return settled


@bp.timer_trigger(schedule=f"%{SWEEP_SCHEDULE}%", arg_name="timer", use_monitor=False)
@bp.durable_client_input(client_name="client")
async def settle_build_slots(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    """Give back the build slots of runs whose orchestration can no longer do it."""
    for line in await settle_build_slots_once(client):
        log.info("build slots: settled %s", line)
