"""NCRONTAB schedules of `Schedule` triggers evaluated in a time zone: pure, the clock is an argument. The
expression parser is template.ncrontab (the same one validates a trigger at PUT).

Exceptions::

    ValueError
    └── ScheduleError    a schedule or time zone that cannot be evaluated (names the field)
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from imagebuilder.template.ncrontab import CronSchedule, ScheduleError

__all__ = ["CronSchedule", "ScheduleError", "due", "time_zone"]


def time_zone(name: str | None) -> tzinfo:
    """The IANA time zone `name` (None or empty: UTC)."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(
            f"timeZone {name!r} is not a known IANA time zone (e.g. 'UTC', 'Europe/Paris')"
        ) from exc


def due(expression: str, tz_name: str | None, since: datetime, now: datetime) -> datetime | None:
    """The first occurrence of the schedule in (`since`, `now`], or None when it is not due. Several missed
    occurrences (the app was down) make it due once."""
    nxt = CronSchedule.parse(expression).next_after(since, time_zone(tz_name))
    return nxt if nxt is not None and nxt <= now else None
