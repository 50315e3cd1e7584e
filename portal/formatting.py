"""Template filters that format money and dates in the account's locale (Babel)."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, get_currency_precision
from flask import Flask, g

from portal.billing.money import Money, exponent


def _locale() -> str:
    account = g.get("account")
    return account.locale if account is not None else "en_US"


def money(value: Money | None, locale: str | None = None) -> str:
    if value is None:
        return ""
    digits = exponent(value.currency)
    if get_currency_precision(value.currency) == digits:
        return format_currency(value.to_decimal(), value.currency, locale=locale or _locale())
    # NOTE: CLDR and ISO 4217 disagree on a few currencies (IQD); ISO's exponent decides.
    pattern = "¤#,##0" + ("." + "0" * digits if digits else "")
    return format_currency(
        value.to_decimal(),
        value.currency,
        format=pattern,
        locale=locale or _locale(),
        currency_digits=False,
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
    return format_date(value, format=style, locale=locale or _locale())


def moment(value: datetime | None, locale: str | None = None) -> str:
    if value is None:
        return ""
    return format_datetime(value, format="medium", locale=locale or _locale())


def init_app(app: Flask) -> None:
    app.add_template_filter(money)
    app.add_template_filter(money_minor)
    app.add_template_filter(day)
    app.add_template_filter(moment)
