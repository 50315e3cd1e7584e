"""Proration, table-driven, in exact minor units (pure: no database).

Periods are UTC instants anchored in the account's time zone: a New York period that contains a
daylight-saving change is an hour shorter (March) or longer (November), and the credit and the
charge count its real seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from portal.billing.money import Money
from portal.subscriptions.periods import period_end, seconds_between
from portal.subscriptions.proration import ProrationKind, net, prorate
from tests.factories import make_price

NY = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def flat(minor: int, currency: str = "USD"):
    return make_price(currency=currency, pricing_model="flat", flat_amount_minor=minor)


def seats(minor: int, currency: str = "USD"):
    return make_price(currency=currency, pricing_model="per_unit", unit_amount_minor=minor)


# name, old (price, qty), new (price, qty), period start, period end, at, credit, charge
CASES = [
    (
        "upgrade 10 -> 20 USD at exactly half the period",
        (flat(1000), 1),
        (flat(2000), 1),
        utc(2026, 4, 1),
        utc(2026, 5, 1),
        utc(2026, 4, 16),
        -500,
        1000,
    ),
    (
        "downgrade 20 -> 10 USD at half: a credit larger than the charge",
        (flat(2000), 1),
        (flat(1000), 1),
        utc(2026, 4, 1),
        utc(2026, 5, 1),
        utc(2026, 4, 16),
        -1000,
        500,
    ),
    (
        "first second of the period: the whole old price back, the whole new one charged",
        (flat(1000), 1),
        (flat(2000), 1),
        utc(2026, 4, 1),
        utc(2026, 5, 1),
        utc(2026, 4, 1),
        -1000,
        2000,
    ),
    (
        "one second into the period still rounds to the whole amounts",
        (flat(1000), 1),
        (flat(2000), 1),
        utc(2026, 4, 1),
        utc(2026, 5, 1),
        utc(2026, 4, 1, 0, 0, 1),
        -1000,
        2000,
    ),
    (
        "last second of a period of a large price: 1 s of 2,592,000 s",
        (flat(2_592_000_00), 1),
        (flat(5_184_000_00), 1),
        utc(2026, 4, 1),
        utc(2026, 5, 1),
        utc(2026, 4, 30, 23, 59, 59),
        -100,
        200,
    ),
    (
        "February (28 days): 21 of 28 days left",
        (flat(2800), 1),
        (flat(5600), 1),
        utc(2026, 2, 1),
        utc(2026, 3, 1),
        utc(2026, 2, 8),
        -2100,
        4200,
    ),
    (
        "February, same date in a common year: 20 of 28 days left",
        (flat(2900), 1),
        (flat(5800), 1),
        utc(2027, 2, 1),
        utc(2027, 3, 1),
        utc(2027, 2, 9),
        -2071,  # 2900 x 20/28 = 2071.43
        4143,  # 5800 x 20/28 = 4142.86
    ),
    (
        "leap February (29 days): 10 of 29 days left",
        (flat(2900), 1),
        (flat(5800), 1),
        utc(2028, 2, 1),
        utc(2028, 3, 1),
        utc(2028, 2, 20),
        -1000,
        2000,
    ),
    (
        "a 31-day month: 11 of 31 days left",
        (flat(3100), 1),
        (flat(6200), 1),
        utc(2026, 1, 1),
        utc(2026, 2, 1),
        utc(2026, 1, 21),
        -1100,
        2200,
    ),
    (
        "DST ends in New York (Nov 1): the period has 30 days and 1 hour; change at noon EST",
        (flat(10000), 1),
        (flat(20000), 1),
        datetime(2026, 11, 1, tzinfo=NY),
        datetime(2026, 12, 1, tzinfo=NY),
        datetime(2026, 11, 1, 12, tzinfo=NY),
        -9820,  # 10000 x 2,548,800 / 2,595,600 s
        19639,
    ),
    (
        "DST starts in New York (Mar 8): 31 days less 1 hour; change at noon EDT",
        (flat(10000), 1),
        (flat(20000), 1),
        datetime(2026, 3, 1, tzinfo=NY),
        datetime(2026, 4, 1, tzinfo=NY),
        datetime(2026, 3, 8, 12, tzinfo=NY),
        -7591,  # 10000 x 2,030,400 / 2,674,800 s (by wall clock it would be 7581)
        15182,
    ),
    (
        "seat change mid-period: 5 -> 8 seats at 15.00 with 20 of 30 days left",
        (seats(1500), 5),
        (seats(1500), 8),
        utc(2026, 4, 1),
        utc(2026, 5, 1),
        utc(2026, 4, 11),
        -5000,
        8000,
    ),
    (
        "fewer seats: 8 -> 5 with 20 of 30 days left credits more than it charges",
        (seats(1500), 8),
        (seats(1500), 5),
        utc(2026, 4, 1),
        utc(2026, 5, 1),
        utc(2026, 4, 11),
        -8000,
        5000,
    ),
    (
        "JPY (no decimals): 980 -> 1960 yen, 10 of 31 days left",
        (flat(980, "JPY"), 1),
        (flat(1960, "JPY"), 1),
        utc(2026, 1, 1),
        utc(2026, 2, 1),
        utc(2026, 1, 22),
        -316,  # 316.13
        632,  # 632.26
    ),
    (
        "JPY half a yen rounds away from zero on both lines",
        (flat(1001, "JPY"), 1),
        (flat(2001, "JPY"), 1),
        utc(2026, 4, 1),
        utc(2026, 5, 1),
        utc(2026, 4, 16),
        -501,  # 500.5
        1001,  # 1000.5
    ),
    (
        "KWD (three decimals): 10.000 -> 20.000 with 20 of 30 days left",
        (flat(10000, "KWD"), 1),
        (flat(20000, "KWD"), 1),
        utc(2026, 4, 1),
        utc(2026, 5, 1),
        utc(2026, 4, 11),
        -6667,  # 6666.67 fils
        13333,
    ),
    (
        "yearly: 120.00 -> 240.00 a year with 183 of 365 days left (one rounding per line)",
        (make_price(pricing_model="flat", flat_amount_minor=12000), 1),
        (make_price(pricing_model="flat", flat_amount_minor=24000), 1),
        utc(2027, 1, 1),
        utc(2028, 1, 1),
        utc(2027, 7, 2),
        -6016,  # 6016.44
        12033,  # 12032.88
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "start", "end", "at", "credit", "charge"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_proration_table(old, new, start, end, at, credit, charge) -> None:
    lines = prorate(
        old_price=old[0],
        old_quantity=old[1],
        new_price=new[0],
        new_quantity=new[1],
        period_start=start,
        period_end=end,
        at=at,
    )
    currency = old[0].currency
    assert [(line.kind, line.amount) for line in lines] == [
        (ProrationKind.CREDIT, Money(credit, currency)),
        (ProrationKind.CHARGE, Money(charge, currency)),
    ]
    assert net(lines, currency) == Money(credit + charge, currency)
    assert all(line.end == end and line.start == at for line in lines)


def test_upgrade_at_half_is_plus_five_dollars() -> None:
    lines = prorate(
        old_price=flat(1000),
        old_quantity=1,
        new_price=flat(2000),
        new_quantity=1,
        period_start=utc(2026, 4, 1),
        period_end=utc(2026, 5, 1),
        at=utc(2026, 4, 16),
    )
    assert net(lines, "USD") == Money(500, "USD")


@pytest.mark.parametrize(
    "at", [utc(2026, 5, 1), utc(2026, 4, 30, 23, 59, 59)], ids=["at the end", "last second"]
)
def test_a_change_at_the_very_end_prorates_nothing(at: datetime) -> None:
    assert (
        prorate(
            old_price=flat(1000),
            old_quantity=1,
            new_price=flat(2000),
            new_quantity=1,
            period_start=utc(2026, 4, 1),
            period_end=utc(2026, 5, 1),
            at=at,
        )
        == []
    )


def test_metered_prices_prorate_their_fixed_part_only() -> None:
    old = make_price(pricing_model="metered", unit_amount_minor=250, flat_amount_minor=4900)
    new = make_price(pricing_model="metered", unit_amount_minor=200, flat_amount_minor=9800)
    lines = prorate(
        old_price=old,
        old_quantity=1000,
        new_price=new,
        new_quantity=1000,
        period_start=utc(2026, 4, 1),
        period_end=utc(2026, 5, 1),
        at=utc(2026, 4, 16),
    )
    assert [line.amount.minor for line in lines] == [-2450, 4900]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"at": utc(2026, 3, 31)}, "within its period"),
        ({"at": utc(2026, 5, 2)}, "within its period"),
        ({"period_end": utc(2026, 4, 1)}, "end after it starts"),
        ({"at": datetime(2026, 4, 2)}, "aware"),
        ({"new_price": flat(2000, "EUR")}, "currencies"),
    ],
)
def test_bad_input_is_refused(kwargs: dict, message: str) -> None:
    arguments = {
        "old_price": flat(1000),
        "old_quantity": 1,
        "new_price": flat(2000),
        "new_quantity": 1,
        "period_start": utc(2026, 4, 1),
        "period_end": utc(2026, 5, 1),
        "at": utc(2026, 4, 16),
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        prorate(**arguments)


# -- periods anchored in the account's time zone --------------------------------------------


@pytest.mark.parametrize(
    ("start", "tz", "interval", "anchor", "end"),
    [
        (datetime(2026, 1, 31, tzinfo=NY), "America/New_York", "month", 31, (2026, 2, 28)),
        (datetime(2026, 2, 28, tzinfo=NY), "America/New_York", "month", 31, (2026, 3, 31)),
        (datetime(2028, 1, 31, tzinfo=NY), "America/New_York", "month", 31, (2028, 2, 29)),
        (datetime(2026, 11, 1, tzinfo=NY), "America/New_York", "month", None, (2026, 12, 1)),
        (datetime(2028, 2, 29, tzinfo=NY), "America/New_York", "year", 29, (2029, 2, 28)),
    ],
)
def test_periods_end_at_the_same_local_time_clamped_to_the_month(
    start: datetime, tz: str, interval: str, anchor: int | None, end: tuple[int, int, int]
) -> None:
    result = period_end(start.astimezone(UTC), interval, 1, tz, anchor_day=anchor)
    local = result.astimezone(ZoneInfo(tz))
    assert (local.year, local.month, local.day, local.hour, local.minute) == (*end, 0, 0)


def test_a_new_york_november_is_an_hour_longer_than_thirty_days() -> None:
    start = datetime(2026, 11, 1, tzinfo=NY).astimezone(UTC)
    end = period_end(start, "month", 1, "America/New_York")
    assert seconds_between(start, end) == int(timedelta(days=30, hours=1).total_seconds())
