"""Business hours in the merchant's time zone: when a dispute's answer is due, and how much of
the response target a dispute has used. Pure functions (no Flask, no database)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKEND = frozenset({5, 6})  # Saturday, Sunday (date.weekday())


@dataclass(frozen=True)
class BusinessHours:
    """The merchant's working week: Monday to Friday from `start` to `end` o'clock, local time
    in `timezone` (PORTAL_TIMEZONE)."""

    timezone: str = "UTC"
    start: int = 9
    end: int = 17

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= 24:
            raise ValueError("business hours must start before they end, within one day")
        ZoneInfo(self.timezone)  # an unknown zone fails here, at configuration time

    @property
    def hours_per_day(self) -> int:
        return self.end - self.start


def _opening(day: datetime, hours: BusinessHours, zone: ZoneInfo) -> datetime:
    return datetime.combine(day.date(), time(hours.start), zone)


def _closing(day: datetime, hours: BusinessHours, zone: ZoneInfo) -> datetime:
    if hours.end == 24:
        return datetime.combine(day.date() + timedelta(days=1), time(0), zone)
    return datetime.combine(day.date(), time(hours.end), zone)


def _next_open_moment(local: datetime, hours: BusinessHours, zone: ZoneInfo) -> datetime:
    """`local` itself when it falls inside business hours, otherwise the next opening."""
    while True:
        if local.weekday() not in WEEKEND:
            opening = _opening(local, hours, zone)
            if local < opening:
                return opening
            if local < _closing(local, hours, zone):
                return local
        local = _opening(local + timedelta(days=1), hours, zone)


def add_business_hours(start: datetime, hours_to_add: int, hours: BusinessHours) -> datetime:
    """The moment `hours_to_add` business hours after `start` (aware; answered in UTC).

    NOTE: counted on the wall clock of the merchant's time zone, so a working day is always
    `end - start` hours, also across a daylight-saving change. A target of 16 hours with
    9-to-17 days is "2 business days": a dispute opened on Friday at 16:00 is due on Tuesday
    at 16:00; one opened on Saturday is due on Tuesday at 17:00.
    """
    if start.tzinfo is None:
        raise ValueError("add_business_hours needs an aware datetime")
    if hours_to_add < 0:
        raise ValueError("cannot add negative business hours")
    zone = ZoneInfo(hours.timezone)
    left = timedelta(hours=hours_to_add)
    local = _next_open_moment(start.astimezone(zone), hours, zone)
    while True:
        closing = _closing(local, hours, zone)
        available = closing.replace(tzinfo=None) - local.replace(tzinfo=None)
        if left <= available:
            due = (local.replace(tzinfo=None) + left).replace(tzinfo=zone)
            return due.astimezone(UTC)
        left -= available
        local = _next_open_moment(_opening(local + timedelta(days=1), hours, zone), hours, zone)


def business_hours_between(start: datetime, end: datetime, hours: BusinessHours) -> float:
    """How many business hours passed from `start` to `end` (0 when `end` is not later)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("business_hours_between needs aware datetimes")
    if end <= start:
        return 0.0
    zone = ZoneInfo(hours.timezone)
    stop = end.astimezone(zone).replace(tzinfo=None)
    local = _next_open_moment(start.astimezone(zone), hours, zone)
    total = timedelta()
    while local.replace(tzinfo=None) < stop:
        closing = _closing(local, hours, zone).replace(tzinfo=None)
        total += min(closing, stop) - local.replace(tzinfo=None)
        local = _next_open_moment(_opening(local + timedelta(days=1), hours, zone), hours, zone)
    return total.total_seconds() / 3600  # money-safe: a duration in hours
