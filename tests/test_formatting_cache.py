"""day() keeps each formatted day (portal.formatting._formatted_day): the cache must never hand
one locale's text, or one time zone's day, to another account."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from types import SimpleNamespace

import pytest
from flask import Flask, g

from portal.formatting import day


@pytest.fixture()
def bare_app() -> Iterator[Flask]:
    application = Flask(__name__)
    with application.app_context():
        yield application


def _as(locale: str, timezone: str = "UTC") -> None:
    g.account = SimpleNamespace(locale=locale, timezone=timezone)


def test_the_same_day_is_written_in_each_accounts_locale(bare_app: Flask) -> None:
    when = date(2026, 10, 21)
    _as("en_US")
    assert day(when) == "Oct 21, 2026"
    _as("de_DE")
    assert day(when) == "21.10.2026"
    _as("en_US")
    assert day(when) == "Oct 21, 2026"
    assert day(when, locale="ja_JP") == "2026/10/21"
    assert day(when, "long", locale="en_US") == "October 21, 2026"


def test_a_moment_is_the_day_it_was_in_the_accounts_time_zone(bare_app: Flask) -> None:
    # 01:30 UTC on the 22nd is still the 21st in New York, and already the 22nd in Tokyo.
    moment = datetime(2026, 10, 22, 1, 30, tzinfo=UTC)
    _as("en_US", "America/New_York")
    assert day(moment) == "Oct 21, 2026"
    _as("en_US", "Asia/Tokyo")
    assert day(moment) == "Oct 22, 2026"
    _as("en_US", "America/New_York")
    assert day(moment) == "Oct 21, 2026"


def test_a_kept_address_layout_follows_every_field_and_the_pages_language() -> None:
    # NOTE: postal_address keeps each layout (portal.formatting._address_lines, performance
    # work of issue 9): a changed field or another language must never get a kept answer.
    from portal.formatting import postal_address

    address = {
        "name": "Ada",
        "address_line1": "1 Main St",
        "address_line2": "",
        "city": "Boston",
        "postal_code": "02110",
        "region": "MA",
        "country": "US",
    }
    assert postal_address(address, locale="en") == [
        "1 Main St",
        "Boston, MA 02110",
        "United States",
    ]
    assert postal_address(address, locale="de") == [
        "1 Main St",
        "Boston, MA 02110",
        "Vereinigte Staaten",
    ]
    moved = {**address, "city": "Cambridge", "postal_code": "02139"}
    assert postal_address(moved, locale="en")[1] == "Cambridge, MA 02139"
    assert postal_address(address, locale="en", include_name=True)[0] == "Ada"
    assert postal_address(address, locale="en", include_country=False)[-1] == "Boston, MA 02110"
