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
from babel.numbers import NumberPattern, get_currency_precision
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


def money(value: Money | None, locale: str | None = None) -> str:
    if value is None:
        return ""
    identifier = locale or _locale()
    pattern, currency_digits = _currency_pattern(identifier, value.currency)
    return pattern.apply(
        value.to_decimal(),
        _parsed_locale(identifier),
        currency=value.currency,
        currency_digits=currency_digits,
    )


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
