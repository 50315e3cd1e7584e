"""Money, dates, cards, addresses and countries as the account (and the page) reads them.

The fast money path must print exactly what Babel prints."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask, g
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.billing.money import Money
from portal.formatting import (
    _babel_money,
    card,
    collation_key,
    countries,
    country_name,
    day,
    moment,
    money,
    postal_address,
)

LOCALES = ("en_US", "de_DE", "ja_JP", "fr_FR", "en_IN", "de_CH", "ar_EG", "nl_NL", "sv_SE")
CURRENCIES = ("USD", "EUR", "JPY", "KWD", "IQD", "CHF", "INR", "GBP")


@settings(max_examples=300, deadline=None)
@given(
    minor=st.integers(min_value=-(10**15), max_value=10**15),
    locale=st.sampled_from(LOCALES),
    currency=st.sampled_from(CURRENCIES),
)
def test_money_prints_exactly_what_babel_prints(minor: int, locale: str, currency: str) -> None:
    assert money(Money(minor, currency), locale) == _babel_money(minor, currency, locale)


@pytest.mark.parametrize(
    ("minor", "currency", "locale", "expected"),
    [
        (15000, "USD", "en_US", "$150.00"),
        (93178, "EUR", "de_DE", "931,78\xa0€"),
        (21560, "JPY", "en_US", "¥21,560"),
        (1234, "KWD", "en_US", "KWD1.234"),
        (-1500, "USD", "en_US", "-$15.00"),
    ],
)
def test_known_amounts(minor: int, currency: str, locale: str, expected: str) -> None:
    assert money(Money(minor, currency), locale) == expected


# --- one date style, moments in the account's time zone, cards, addresses, countries --------


@pytest.fixture()
def request_as(app: Flask) -> Iterator[Any]:
    """A request context whose signed-in account has this locale and time zone."""

    def enter(locale: str = "en_US", timezone: str = "UTC") -> Any:
        context = app.test_request_context("/")
        context.push()
        g.account = SimpleNamespace(id=1, locale=locale, timezone=timezone)
        return context

    contexts: list[Any] = []
    yield lambda *args: contexts.append(enter(*args))
    for context in reversed(contexts):
        context.pop()


def test_one_date_style_for_every_web_date(request_as: Any) -> None:
    request_as("en_US")
    assert day(date(2026, 10, 21)) == "Oct 21, 2026"
    assert day(date(2026, 12, 1), locale="de_DE") == "01.12.2026"
    assert day(date(2026, 12, 1), locale="ja_JP") == "2026/12/01"


@pytest.fixture()
def server_in_tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server's own local time zone is not UTC (naive times must not be read in it)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_moment_is_shown_in_the_account_time_zone_to_the_minute(
    request_as: Any, server_in_tokyo: None
) -> None:
    request_as("en_US", "America/New_York")
    when = datetime(2026, 12, 1, 21, 59, 42, tzinfo=UTC)
    assert moment(when) == "Dec 1, 2026, 4:59\u202fPM"
    # A naive value from the database is UTC, not the server's local time.
    assert moment(when.replace(tzinfo=None)) == "Dec 1, 2026, 4:59\u202fPM"
    # The day of a moment is the account's day: 02:00 UTC is still the evening before.
    assert day(datetime(2026, 12, 2, 2, 0, tzinfo=UTC)) == "Dec 1, 2026"


def test_a_moment_in_german_and_japanese(request_as: Any) -> None:
    request_as("de_DE", "Europe/Berlin")
    assert moment(datetime(2026, 12, 1, 21, 59, 42, tzinfo=UTC)) == "01.12.2026, 22:59"
    assert moment(datetime(2026, 12, 1, 21, 59, tzinfo=UTC), locale="ja_JP") == "2026/12/01 22:59"


def test_an_unknown_locale_or_time_zone_never_breaks_a_page(request_as: Any) -> None:
    request_as("xx_YY", "Mars/Olympus")
    assert day(date(2026, 10, 21)) == "Oct 21, 2026"
    assert moment(datetime(2026, 10, 21, 14, 5, tzinfo=UTC)) == "Oct 21, 2026, 2:05\u202fPM"


def test_a_card_is_written_one_way(request_as: Any) -> None:
    request_as()
    method = SimpleNamespace(brand="visa", last4="4242")
    assert card(method) == "Visa ending in 4242"
    assert card(brand="amex", last4="0005") == "American Express ending in 0005"
    assert card(brand="mastercard", last4="4444") == "Mastercard ending in 4444"
    assert card(brand="unknown", last4=None) == "Card"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {
                "address_line1": "12 Analytical Row",
                "address_line2": "Suite 3",
                "city": "Boston",
                "region": "MA",
                "postal_code": "02110",
                "country": "US",
            },
            ["12 Analytical Row", "Suite 3", "Boston, MA 02110", "United States"],
        ),
        (
            {
                "address_line1": "Friedrichstraße 68",
                "city": "Berlin",
                "postal_code": "10117",
                "country": "DE",
            },
            ["Friedrichstraße 68", "10117 Berlin", "Germany"],
        ),
        (
            {
                "address_line1": "10 Downing St",
                "city": "London",
                "postal_code": "SW1A 2AA",
                "country": "GB",
            },
            ["10 Downing St", "London", "SW1A 2AA", "United Kingdom"],
        ),
        (
            {
                "address_line1": "1-2-3 Shibuya",
                "city": "Tokyo",
                "postal_code": "150-0002",
                "country": "JP",
            },
            ["1-2-3 Shibuya, Tokyo", "150-0002", "Japan"],
        ),
        (
            {
                "address_line1": "渋谷1-2-3",
                "city": "渋谷区",
                "region": "東京都",
                "postal_code": "150-0002",
                "country": "JP",
            },
            ["〒150-0002", "東京都", "渋谷区渋谷1-2-3", "Japan"],
        ),
        ({"city": "Boston", "country": "US"}, ["Boston", "United States"]),
        ({}, []),
    ],
)
def test_an_address_is_laid_out_as_its_country_writes_it(
    request_as: Any, fields: dict[str, str], expected: list[str]
) -> None:
    request_as()
    assert postal_address(fields) == expected


def test_an_address_names_its_country_in_the_page_language(request_as: Any) -> None:
    request_as()
    fields = {"city": "Berlin", "postal_code": "10117", "country": "DE"}
    assert postal_address(fields, locale="de")[-1] == "Deutschland"
    assert postal_address(fields, include_country=False) == ["10117 Berlin"]
    assert country_name("JP", "ja") == "日本"
    assert country_name("EU") == "EU"  # not a country: shown as given, never "European Union"


def test_the_country_list_holds_real_countries_sorted_for_people(request_as: Any) -> None:
    request_as()
    listed = countries("en")
    names = [name for _, name in listed]
    codes = {code for code, _ in listed}
    assert len(listed) == 249  # ISO 3166-1
    for fake in ("EU", "EZ", "UN", "XA", "XB", "ZZ", "QO"):
        assert fake not in codes
    assert not {"European Union", "United Nations", "Pseudo-Accents", "Unknown Region"} & set(names)
    # Åland sorts with the A's (byte order would put it after Zimbabwe).
    assert names.index("Åland Islands") < names.index("Albania")
    assert names[0] == "Afghanistan" and names[-1] == "Zimbabwe"
    assert names.index("Côte d’Ivoire") < names.index("Croatia")
    assert names == sorted(names, key=collation_key)


def test_the_country_list_in_german(request_as: Any) -> None:
    request_as()
    names = [name for _, name in countries("de")]
    assert names.index("Oman") < names.index("Österreich") < names.index("Pakistan")
    assert "Deutschland" in names
    assert names.index("Ägypten") < names.index("Albanien")
