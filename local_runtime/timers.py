"""Timer triggers: NCRONTAB or TimeSpan schedules, `run_on_startup`, and `use_monitor` with the last and next
occurrence persisted in `<state>/timers/<function>.json` so that a missed occurrence fires once on the next
start with `past_due` true. One invocation at a time per function, as on the host.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.functions.timer import TimerRequest

from local_runtime.indexing import FunctionInfo
from local_runtime.invoke import Invoker
from local_runtime.ncrontab import Schedule, default_use_monitor, parse_schedule
from local_runtime.storage import resolve_expression

log = logging.getLogger("local_runtime.timers")


def disabled(fn: FunctionInfo) -> bool:
    """`AzureWebJobs.<name>.Disabled` = true disables a function's trigger, as on the host."""
    return (os.environ.get(f"AzureWebJobs.{fn.name}.Disabled") or "").lower() in ("true", "1")


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class TimerListener:
    """Fires one timer function on its schedule until stopped."""

    def __init__(self, fn: FunctionInfo, invoker: Invoker, state_dir: Path) -> None:
        self.fn = fn
        self.name = fn.name
        self.invoker = invoker
        expr = resolve_expression(str(fn.trigger.get("schedule", "")), {}, f"function {fn.name!r} schedule")
        self.schedule: Schedule = parse_schedule(expr)
        self.run_on_startup = bool(fn.trigger.get("runOnStartup"))
        monitor = fn.trigger.get("useMonitor")
        now = datetime.now(UTC)
        self.use_monitor = default_use_monitor(self.schedule, now) if monitor is None else bool(monitor)
        self.status_path = state_dir / "timers" / f"{fn.name}.json"
        self._stopping = asyncio.Event()

    def read_status(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.status_path.read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def write_status(self, last: datetime | None, next_: datetime) -> dict[str, Any]:
        status = {
            "Last": _iso(last) if last else None,
            "Next": _iso(next_),
            "LastUpdated": _iso(datetime.now(UTC)),
        }
        if self.use_monitor:
            self.status_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.status_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(status))
            tmp.replace(self.status_path)
        return status

    async def fire(self, past_due: bool, status: dict[str, Any] | None) -> None:
        request = TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})
        reason = f"Timer fired at {_iso(datetime.now(UTC))}"
        await self.invoker.invoke_with_retry(self.fn, lambda _ann: request, {}, reason, self._stopping)

    async def run(self) -> None:
        now = datetime.now(UTC)
        status = self.read_status() if self.use_monitor else None
        last = _parse(status.get("Last")) if status else None
        recorded_next = _parse(status.get("Next")) if status else None
        past_due = recorded_next is not None and recorded_next < now
        if past_due or self.run_on_startup:
            next_ = self.schedule.next_after(datetime.now(UTC))
            if past_due:
                log.info(
                    "Timer '%s' is past due (its next occurrence was %s)",
                    self.name,
                    status and status["Next"],
                )
            await self.fire(past_due, status)
            last = datetime.now(UTC)
            status = self.write_status(last, next_)
        else:
            next_ = self.schedule.next_after(now)
            status = self.write_status(last, next_)
        log.info("Timer '%s' next occurrence: %s", self.name, _iso(next_))
        while not self._stopping.is_set():
            delay = (next_ - datetime.now(UTC)).total_seconds()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                    return
                except TimeoutError:
                    pass
            fired_at = next_
            await self.fire(False, status)
            # never before the occurrence that just fired (a wake-up can come a few ms early)
            next_ = self.schedule.next_after(max(fired_at, datetime.now(UTC)))
            status = self.write_status(fired_at, next_)

    def stop(self) -> None:
        self._stopping.set()


def listeners(functions: list[FunctionInfo], invoker: Invoker, state_dir: Path) -> Iterator[TimerListener]:
    for fn in functions:
        if fn.trigger_type == "timerTrigger" and not disabled(fn):
            yield TimerListener(fn, invoker, state_dir)


async def invoke_manually(fn: FunctionInfo, invoker: Invoker) -> None:
    """The admin API's `POST /admin/functions/<timer>`: one invocation now, not past due."""
    request = TimerRequest(past_due=False, schedule_status=None, schedule={"AdjustForDST": True})
    await invoker.invoke(
        fn, lambda _ann: request, {}, "This function was programmatically called via the host APIs."
    )
