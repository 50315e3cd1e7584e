"""Business hours: the response target counts working hours in the merchant's time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from portal.disputes.hours import BusinessHours, add_business_hours, business_hours_between

UTC_9_TO_5 = BusinessHours("UTC", 9, 17)
BERLIN = BusinessHours("Europe/Berlin", 9, 17)


def at(day: int, hour: int, minute: int = 0, zone: str = "UTC", month: int = 12) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=ZoneInfo(zone))


# December 2026: Tuesday the 1st, Friday the 4th, Saturday the 5th, Monday the 7th.
@pytest.mark.parametrize(
    ("opened", "due"),
    [
        (at(1, 10), at(3, 10)),  # Tuesday 10:00 -> Thursday 10:00
        (at(1, 8), at(2, 17)),  # before opening: two whole days, Wednesday at closing
        (at(1, 18), at(3, 17)),  # after closing: counts from Wednesday 9:00
        (at(4, 16), at(8, 16)),  # Friday 16:00 -> the weekend does not count -> Tuesday 16:00
        (at(5, 12), at(8, 17)),  # Saturday -> Monday and Tuesday -> Tuesday 17:00
        (at(6, 23, 59), at(8, 17)),  # late Sunday
        (at(3, 17), at(7, 17)),  # Thursday at closing -> Friday and Monday
    ],
)
def test_two_business_days_skip_nights_and_weekends(opened: datetime, due: datetime) -> None:
    assert add_business_hours(opened, 16, UTC_9_TO_5) == due.astimezone(UTC)


def test_the_merchants_time_zone_decides_what_a_business_day_is() -> None:
    # 07:30 UTC on Friday is 08:30 in Berlin: before opening, so Friday 9:00 + 16h is
    # Monday 17:00 Berlin time (16:00 UTC).
    opened = datetime(2026, 12, 4, 7, 30, tzinfo=UTC)
    due = add_business_hours(opened, 16, BERLIN)
    assert due == at(7, 17, zone="Europe/Berlin").astimezone(UTC)
    assert due.tzinfo is UTC


def test_a_daylight_saving_change_keeps_working_days_whole() -> None:
    # Berlin moves to summer time in the night to Sunday 29 March 2026.
    opened = at(27, 12, zone="Europe/Berlin", month=3)  # Friday noon
    due = add_business_hours(opened, 8, BERLIN)
    assert due == at(30, 12, zone="Europe/Berlin", month=3).astimezone(UTC)


def test_zero_hours_is_the_next_open_moment() -> None:
    assert add_business_hours(at(5, 12), 0, UTC_9_TO_5) == at(7, 9)
    assert add_business_hours(at(1, 10), 0, UTC_9_TO_5) == at(1, 10)


def test_business_hours_between_counts_only_working_time() -> None:
    assert business_hours_between(at(4, 16), at(7, 10), UTC_9_TO_5) == 2.0
    assert business_hours_between(at(1, 10), at(1, 10, 30), UTC_9_TO_5) == 0.5
    assert business_hours_between(at(5, 8), at(6, 20), UTC_9_TO_5) == 0.0
    assert business_hours_between(at(3, 10), at(1, 10), UTC_9_TO_5) == 0.0
    opened = at(4, 16)
    assert (
        business_hours_between(opened, add_business_hours(opened, 16, UTC_9_TO_5), UTC_9_TO_5)
        == 16.0
    )


def test_bad_settings_and_naive_times_are_refused() -> None:
    with pytest.raises(ValueError):
        BusinessHours("UTC", 17, 9)
    with pytest.raises(ValueError):
        add_business_hours(datetime(2026, 12, 1, 10), 16, UTC_9_TO_5)
    with pytest.raises(ValueError):
        add_business_hours(at(1, 10), -1, UTC_9_TO_5)
