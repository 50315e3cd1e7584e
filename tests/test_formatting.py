"""Money and dates in the account's locale: the fast path must print exactly what Babel prints."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.billing.money import Money
from portal.formatting import _babel_money, money

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
