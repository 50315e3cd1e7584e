"""The one source of "now". Tests replace it with a frozen or advancing clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

_source: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def now() -> datetime:
    """The current time, aware, in UTC."""
    return _source()


def today(tz: str = "UTC") -> date:
    """Today's date in the given time zone."""
    return now().astimezone(ZoneInfo(tz)).date()


def set_source(source: Callable[[], datetime]) -> Callable[[], datetime]:
    """Replace the clock; returns the previous source so callers can restore it."""
    global _source
    previous, _source = _source, source
    return previous


class FrozenClock:
    """A clock that stands still until moved: `clock.advance(minutes=11)`."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs an aware datetime")
        self.current = start.astimezone(UTC)

    def __call__(self) -> datetime:
        return self.current

    def advance(self, **delta: float) -> datetime:  # money-safe: a duration
        self.current += timedelta(**delta)
        return self.current

    def set(self, when: datetime) -> None:
        self.current = when.astimezone(UTC)
