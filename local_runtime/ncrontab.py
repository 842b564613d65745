"""NCRONTAB schedules as the Functions timer trigger reads them: 6 fields with seconds (or classic 5 fields),
`*`, lists, ranges, steps, month and day names; and .NET TimeSpan schedules (`00:00:05`).

Exceptions:
    ScheduleError   the expression cannot be parsed (the message names it and says what is expected)
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta

from local_runtime.config import ConfigError, parse_timespan


class ScheduleError(Exception):
    """A timer schedule is not a valid NCRONTAB expression or TimeSpan."""


_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}
_DAYS = {d.lower(): (i + 1) % 7 for i, d in enumerate(calendar.day_abbr)}  # Sunday = 0


def _field(text: str, lo: int, hi: int, names: dict[str, int], what: str, expr: str) -> frozenset[int]:
    values: set[int] = set()

    def num(s: str) -> int:
        key = s.lower()[:3]
        if key in names and not s.isdigit():
            return names[key]
        try:
            n = int(s)
        except ValueError as exc:
            raise ScheduleError(f"schedule {expr!r}: {what} value {s!r} is not a number") from exc
        if what == "day-of-week" and n == 7:
            n = 0
        if not lo <= n <= hi:
            raise ScheduleError(f"schedule {expr!r}: {what} value {n} is outside {lo}-{hi}")
        return n

    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"schedule {expr!r}: {what} step {step_text!r} must be a positive number")
            step = int(step_text)
        if part == "*":
            start, end = lo, hi
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = num(a), num(b)
        else:
            start = num(part)
            end = hi if step > 1 else start
        if start > end:
            raise ScheduleError(f"schedule {expr!r}: {what} range {part!r} runs backwards")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed NCRONTAB expression; `next_after(t)` is the first occurrence strictly after `t`."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    def next_after(self, after: datetime) -> datetime:
        t = after.replace(microsecond=0) + timedelta(seconds=1)
        limit = t + timedelta(days=366 * 5)
        while t < limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
                continue
            # NCrontab requires both the day of month and the day of week to match.
            if t.day not in self.days or (t.isoweekday() % 7) not in self.weekdays:
                t = t.replace(hour=0, minute=0, second=0) + timedelta(days=1)
                continue
            if t.hour not in self.hours:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if t.minute not in self.minutes:
                t = t.replace(second=0) + timedelta(minutes=1)
                continue
            if t.second not in self.seconds:
                t += timedelta(seconds=1)
                continue
            return t
        raise ScheduleError(f"schedule {self.expression!r} never fires")


@dataclass(frozen=True)
class IntervalSchedule:
    """A TimeSpan schedule: every `interval`, counted from the last run (the host's ConstantSchedule)."""

    expression: str
    interval: timedelta

    def next_after(self, after: datetime) -> datetime:
        return after + self.interval


Schedule = CronSchedule | IntervalSchedule


def parse_schedule(expression: str) -> Schedule:
    """Parse a timer trigger's `schedule`: NCRONTAB (6 or 5 fields) or a TimeSpan like `00:05:00`."""
    expr = expression.strip()
    fields = expr.split()
    if len(fields) == 1 and ":" in expr:
        try:
            interval = parse_timespan(expr, f"schedule {expr!r}")
        except ConfigError as exc:
            raise ScheduleError(str(exc)) from exc
        if interval <= timedelta(0):
            raise ScheduleError(f"schedule {expr!r}: a TimeSpan schedule must be positive")
        return IntervalSchedule(expr, interval)
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ScheduleError(
            f"schedule {expr!r}: expected 6 NCRONTAB fields "
            "'{second} {minute} {hour} {day} {month} {day-of-week}' (e.g. '0 */5 * * * *'), "
            "5 classic cron fields, or a TimeSpan like '00:05:00'"
        )
    s, mi, h, d, mo, wd = fields
    return CronSchedule(
        expression=expr,
        seconds=_field(s, 0, 59, {}, "second", expr),
        minutes=_field(mi, 0, 59, {}, "minute", expr),
        hours=_field(h, 0, 23, {}, "hour", expr),
        days=_field(d, 1, 31, {}, "day", expr),
        months=_field(mo, 1, 12, _MONTHS, "month", expr),
        weekdays=_field(wd, 0, 6, _DAYS, "day-of-week", expr),
    )


def default_use_monitor(schedule: Schedule, now: datetime) -> bool:
    """The host monitors a schedule by default when its occurrences are at least a minute apart."""
    first = schedule.next_after(now)
    return schedule.next_after(first) - first >= timedelta(minutes=1)
