"""Timer triggers on a real host: NCRONTAB with seconds, TimeSpan, run_on_startup, use_monitor/past_due."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from local_runtime.ncrontab import ScheduleError, default_use_monitor, parse_schedule
from tests.runtime.conftest import RuntimeProcess, read_events, wait_until


def test_ncrontab_next_occurrences() -> None:
    t = datetime(2026, 1, 30, 23, 59, 58, tzinfo=UTC)
    s = parse_schedule("*/5 * * * * *")
    assert s.next_after(t) == datetime(2026, 1, 31, 0, 0, 0, tzinfo=UTC)
    s = parse_schedule("0 30 9 * * Mon-Fri")
    assert s.next_after(t) == datetime(2026, 2, 2, 9, 30, tzinfo=UTC)  # Jan 31 2026 is a Saturday
    s = parse_schedule("0 0 0 29 Feb *")
    assert s.next_after(t) == datetime(2028, 2, 29, tzinfo=UTC)
    s = parse_schedule("15 * * * *")  # classic 5 fields: seconds = 0
    assert s.next_after(t) == datetime(2026, 1, 31, 0, 15, tzinfo=UTC)
    s = parse_schedule("0 0 12 1,15 * 1")  # day of month AND day of week, as NCrontab
    assert s.next_after(t) == datetime(2026, 6, 1, 12, tzinfo=UTC)
    assert parse_schedule("00:00:05").next_after(t) == datetime(2026, 1, 31, 0, 0, 3, tzinfo=UTC)
    assert parse_schedule("1.00:00:00").next_after(t) == datetime(2026, 1, 31, 23, 59, 58, tzinfo=UTC)
    assert default_use_monitor(parse_schedule("0 */5 * * * *"), t)
    assert not default_use_monitor(parse_schedule("*/10 * * * * *"), t)


@pytest.mark.parametrize("bad", ["* * *", "61 * * * * *", "*/0 * * * * *", "0 0 0 * Foo *", "00:99:00x"])
def test_bad_schedules_are_named(bad: str) -> None:
    with pytest.raises(ScheduleError, match="schedule"):
        parse_schedule(bad)


@pytest.mark.slow
def test_timers_fire_and_past_due_after_restart(
    runtime: Callable[..., RuntimeProcess], tmp_path: Path
) -> None:
    events_file = tmp_path / "events.jsonl"
    env = {"RUNTIME_TEST_EVENTS": str(events_file)}
    state = tmp_path / "state"
    rp = runtime("timer_app", state, env)

    def by(fn: str) -> list[dict]:
        return [e for e in read_events(events_file) if e["fn"] == fn]

    wait_until(lambda: len(by("every_second")) >= 3 and len(by("every_span")) >= 1, 20, "timer invocations")
    first = by("every_second")
    assert first[0]["past_due"] is False  # run_on_startup
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(first[1:])]
    assert all(g > 0.3 for g in gaps), gaps  # one invocation per occurrence, never two in the same second
    status = json.loads((state / "timers" / "every_second.json").read_text())
    assert status["Next"] and status["Last"]
    assert not (state / "timers" / "every_span.json").exists()  # under a minute: not monitored by default
    flaky = wait_until(lambda: len(by("flaky")) >= 3 and by("flaky"), 20, "retries of the flaky timer")
    assert [(e["retry_count"], e["max_retry_count"]) for e in flaky] == [(0, 2), (1, 2), (2, 2)]  # @app.retry
    assert rp.stop() == 0

    before = len(by("every_second"))
    time.sleep(2.5)  # downtime longer than the schedule
    runtime("timer_app", state, env)
    wait_until(lambda: len(by("every_second")) > before + 1, 20, "invocations after restart")
    after = by("every_second")[before:]
    assert after[0]["past_due"] is True
    assert after[1]["past_due"] is False
