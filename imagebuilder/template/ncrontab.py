"""NCRONTAB expressions (6 fields, seconds first, as Azure Functions timers and our `Schedule` trigger use
them): the one parser, used both to validate a trigger at PUT (template.models) and to evaluate it
(pipeline.schedule). Pure. Day-of-month and day-of-week must both match (NCrontab's rule, unlike Vixie
cron).

Exceptions::

    ValueError
    └── ScheduleError    an expression (or, in pipeline.schedule, a time zone) that cannot be evaluated;
                         the message names the field
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _DAYS),
)
# How far ahead to look for the next occurrence (a schedule such as 30 February never occurs).
_HORIZON_DAYS = 366 * 5


class ScheduleError(ValueError):
    """A schedule or time zone that cannot be evaluated."""


def _step(text: str) -> int | None:
    """A step such as the 5 of `*/5`: a positive number of at most 10 digits, else None."""
    ok = 0 < len(text) <= 10 and text.isascii() and text.isdigit() and int(text) > 0
    return int(text) if ok else None


def _value(text: str, low: int, high: int, names: tuple[str, ...], field: str) -> int:
    if 0 < len(text) <= 10 and text.isascii() and text.isdigit():
        value = int(text)
    elif text.lower() in names:
        value = names.index(text.lower()) + low
    else:
        raise ScheduleError(f"the {field} field has {text!r}, which is not a number ({low}-{high})")
    if not low <= value <= high:
        raise ScheduleError(f"the {field} field has {value}, outside {low}-{high}")
    return value


def _field(text: str, low: int, high: int, names: tuple[str, ...], field: str) -> frozenset[int]:
    out: set[int] = set()
    for item in text.split(","):
        base, _, step_text = item.partition("/")
        step = _step(step_text)
        if step_text and step is None:
            raise ScheduleError(f"the {field} field has the step {step_text!r}; use a positive number")
        if base == "*":
            first, last = low, high
        else:
            start, dash, end = base.partition("-")
            first = _value(start, low, high, names, field)
            last = _value(end, low, high, names, field) if dash else (high if step else first)
        if first > last:
            raise ScheduleError(f"the {field} field has the range {base!r}, which runs backwards")
        out.update(range(first, last + 1, step or 1))
    return frozenset(out)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed 6-field NCRONTAB expression."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        parts = expression.split()
        if len(parts) != len(_FIELDS):
            raise ScheduleError(
                f"schedule {expression!r} has {len(parts)} fields; NCRONTAB has 6: "
                "{second} {minute} {hour} {day} {month} {day-of-week}"
            )
        sets = [_field(p, lo, hi, names, f) for p, (f, lo, hi, names) in zip(parts, _FIELDS, strict=True)]
        return cls(expression, *sets)

    def _day_ok(self, day: date) -> bool:
        return day.month in self.months and day.day in self.days and day.isoweekday() % 7 in self.weekdays

    def next_after(self, moment: datetime, tz: tzinfo) -> datetime | None:
        """The first occurrence strictly after `moment` (aware), as an aware datetime in `tz`."""
        local = moment.astimezone(tz)
        day = local.date()
        for _ in range(_HORIZON_DAYS):
            if self._day_ok(day):
                for h in sorted(self.hours):
                    for m in sorted(self.minutes):
                        if day == local.date() and (h, m) < (local.hour, local.minute):
                            continue
                        for s in sorted(self.seconds):
                            candidate = datetime(day.year, day.month, day.day, h, m, s, tzinfo=tz)
                            if candidate > moment:
                                return candidate
            day += timedelta(days=1)
        return None
