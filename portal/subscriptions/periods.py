"""Billing periods, anchored in the account's time zone (pure: no Flask, no database).

A subscription's periods start at the same local wall-clock time on the same day of the month
(clamped to the month's last day: Jan 31, Feb 28, Mar 31) in the account's time zone, and are
stored as UTC instants. A period that contains a daylight-saving change is therefore an hour
shorter or longer than the same period elsewhere, and proration counts the real seconds.
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


def _add_months(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def local_midnight(day: date, tz: str) -> datetime:
    """The first moment of `day` in the time zone, in UTC."""
    return datetime.combine(day, time(0), ZoneInfo(tz)).astimezone(UTC)


def period_end(
    start: datetime, interval: str, count: int, tz: str, *, anchor_day: int | None = None
) -> datetime:
    """The end of the period that starts at `start`: `count` months or years later at the same
    local time, on `anchor_day` (default: the start's local day) clamped to the month's end."""
    if start.tzinfo is None:
        raise ValueError("period_end needs an aware datetime")
    if interval not in ("month", "year") or count < 1:
        raise ValueError("an interval is a positive number of months or years")
    zone = ZoneInfo(tz)
    local = start.astimezone(zone)
    months = count * (12 if interval == "year" else 1)
    year, month = _add_months(local.year, local.month, months)
    day = min(anchor_day or local.day, calendar.monthrange(year, month)[1])
    end = datetime.combine(date(year, month, day), local.timetz().replace(tzinfo=None), zone)
    # NOTE: a wall-clock time skipped by a spring-forward change is taken after the gap (fold 0
    # then normalised through UTC), an ambiguous one as its first occurrence.
    return end.astimezone(UTC)


def seconds_between(start: datetime, end: datetime) -> int:
    """Whole seconds from start to end (the unit proration is computed in).

    NOTE: through UTC: Python subtracts two datetimes of the same zone by wall clock, which
    would ignore a daylight-saving change between them.
    """
    return (end.astimezone(UTC) - start.astimezone(UTC)) // timedelta(seconds=1)
