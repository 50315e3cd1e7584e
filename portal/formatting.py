"""Template filters that format money and dates in the account's locale (Babel).

NOTE: Babel parses the locale and the number or date pattern again on every call; a page of
invoices formats dozens of amounts and dates, so the parsed Locale and patterns are cached per
(locale, currency) and (locale, style) and applied directly, with the same options Babel's
format_currency and format_date use (the output is byte for byte theirs).
"""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import DateTimePattern, format_datetime, get_date_format
from babel.dates import parse_pattern as parse_date_pattern
from babel.numbers import (
    NumberPattern,
    get_currency_precision,
    get_decimal_symbol,
    get_group_symbol,
)
from babel.numbers import parse_pattern as parse_number_pattern
from flask import Flask, g

from portal.billing.money import Money, exponent

_DATE_STYLES = ("full", "long", "medium", "short")


def _locale() -> str:
    account = g.get("account")
    return account.locale if account is not None else "en_US"


@lru_cache(maxsize=64)
def _parsed_locale(identifier: str) -> Locale:
    return Locale.parse(identifier)


@lru_cache(maxsize=512)
def _currency_pattern(identifier: str, currency: str) -> tuple[NumberPattern, bool]:
    """The pattern for amounts in `currency` and whether CLDR's digits apply (currency_digits)."""
    digits = exponent(currency)
    if get_currency_precision(currency) == digits:
        return _parsed_locale(identifier).currency_formats["standard"], True
    # NOTE: CLDR and ISO 4217 disagree on a few currencies (IQD); ISO's exponent decides.
    return parse_number_pattern("¤#,##0" + ("." + "0" * digits if digits else "")), False


@lru_cache(maxsize=256)
def _date_pattern(identifier: str, style: str) -> DateTimePattern:
    locale = _parsed_locale(identifier)
    return parse_date_pattern(
        get_date_format(style, locale=locale) if style in _DATE_STYLES else style
    )


def _babel_money(minor: int, currency: str, identifier: str) -> str:
    pattern, currency_digits = _currency_pattern(identifier, currency)
    return pattern.apply(
        Money(minor, currency).to_decimal(),
        _parsed_locale(identifier),
        currency=currency,
        currency_digits=currency_digits,
    )


# Amounts the fast formatter is checked against Babel with before it is trusted for a locale.
_CHECKED_MINORS = (
    0,
    1,
    -1,
    7,
    99,
    100,
    -100,
    999,
    1000,
    -1000,
    12345,
    -12345,
    100000,
    999999,
    1234567,
    -1234567,
    12345678,
    123456789012,
    -(10**15) - 7,
)


@lru_cache(maxsize=512)
def _fast_money(
    identifier: str, currency: str
) -> tuple[str, str, str, str, str, str, int, int] | None:
    """The pieces of the account's amount format (prefixes, suffixes, separators, grouping),
    taken from Babel's own output, or None when they do not reproduce Babel's output exactly
    for every checked amount (then Babel formats every amount)."""
    digits = exponent(currency)
    locale = _parsed_locale(identifier)
    pattern, _ = _currency_pattern(identifier, currency)
    grouping = pattern.grouping
    decimal = get_decimal_symbol(locale)
    group = get_group_symbol(locale)
    try:
        pieces = []
        for minor in (1, -1):
            number = _plain(abs(minor), digits, decimal, group, grouping[0], grouping[1])
            text = _babel_money(minor, currency, identifier)
            at = text.index(number)
            pieces += [text[:at], text[at + len(number) :]]
        found = (*pieces, decimal, group, grouping[0], grouping[1])
        for minor in _CHECKED_MINORS:
            if _apply_fast(minor, digits, found) != _babel_money(minor, currency, identifier):
                return None
    except (ValueError, IndexError, TypeError):
        return None
    return found  # type: ignore[return-value]


def _plain(minor: int, digits: int, decimal: str, group: str, first: int, then: int) -> str:
    text = str(minor).rjust(digits + 1, "0")
    whole, fraction = (text[:-digits], text[-digits:]) if digits else (text, "")
    grouped = ""
    size = first
    while len(whole) > size:
        grouped = group + whole[-size:] + grouped
        whole = whole[:-size]
        size = then
    return whole + grouped + (decimal + fraction if digits else "")


def _apply_fast(
    minor: int, digits: int, found: tuple[str, str, str, str, str, str, int, int]
) -> str:
    pos_prefix, pos_suffix, neg_prefix, neg_suffix, decimal, group, first, then = found
    number = _plain(abs(minor), digits, decimal, group, first, then)
    if minor < 0:
        return neg_prefix + number + neg_suffix
    return pos_prefix + number + pos_suffix


def money(value: Money | None, locale: str | None = None) -> str:
    if value is None:
        return ""
    identifier = locale or _locale()
    found = _fast_money(identifier, value.currency)
    if found is None:
        return _babel_money(value.minor, value.currency, identifier)
    return _apply_fast(value.minor, exponent(value.currency), found)


def money_minor(minor: int, currency: str, locale: str | None = None) -> str:
    return money(Money(int(minor), currency), locale)


def day(value: date | datetime | None, style: str = "medium", locale: str | None = None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        account = g.get("account")
        tz = ZoneInfo(account.timezone) if account is not None else ZoneInfo("UTC")
        value = value.astimezone(tz).date()
    identifier = locale or _locale()
    return _date_pattern(identifier, style).apply(value, _parsed_locale(identifier))


def moment(value: datetime | None, locale: str | None = None) -> str:
    if value is None:
        return ""
    return format_datetime(value, format="medium", locale=_parsed_locale(locale or _locale()))


def init_app(app: Flask) -> None:
    app.add_template_filter(money)
    app.add_template_filter(money_minor)
    app.add_template_filter(day)
    app.add_template_filter(moment)
