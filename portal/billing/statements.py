"""Account statements: the period a customer asks for, the ledger read for it, aging, CSV.

Flask-free, so the statement page, its CSV and its PDF all read the same view model.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from sqlalchemy import (
    CompoundSelect,
    and_,
    bindparam,
    func,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from portal.accounts.models import Account
from portal.billing import ledger
from portal.billing.models import (
    OPEN_STATUSES,
    CreditNote,
    Invoice,
    LedgerKind,
)
from portal.billing.money import Money
from portal.payments.models import Payment, PaymentAllocation


def N_(message: str) -> str:
    """Marks text for translation (pybabel extracts N_) where Flask-Babel may not run: billing
    logic stays Flask-free, and pages and PDFs translate these labels when they print them."""
    return message


# NOTE: a statement reads every ledger entry of its period; five years is far more than any
# customer asks for and keeps one request from scanning an account's whole history forever.
MAX_PERIOD_DAYS = 5 * 366
EARLIEST = date(2000, 1, 1)
PRESETS = {
    "this_month": N_("This month"),
    "last_month": N_("Last month"),
    "this_year": N_("This year"),
    "custom": N_("Custom dates"),
}
KIND_LABELS = {
    LedgerKind.INVOICE.value: N_("Invoice"),
    LedgerKind.INVOICE_VOID.value: N_("Invoice voided"),
    LedgerKind.PAYMENT.value: N_("Payment"),
    LedgerKind.CREDIT_NOTE.value: N_("Credit note"),
    LedgerKind.REFUND.value: N_("Refund"),
    LedgerKind.CHARGEBACK.value: N_("Card payment disputed with the bank"),
    LedgerKind.CHARGEBACK_FEE.value: N_("Bank dispute fee"),
    LedgerKind.CHARGEBACK_REVERSAL.value: N_("Bank dispute decided for us: payment restored"),
}


class InvalidPeriod(ValueError):
    """The period asked for makes no sense; the message is written for the customer.

    `msgid` and `params` let the page translate it (`_(error.msgid, **error.params)`);
    `message` is the English text.
    """

    def __init__(self, msgid: str, field: str = "", **params: object) -> None:
        message = msgid % params if params else msgid
        super().__init__(message)
        self.msgid = msgid
        self.params = params
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Period:
    """Whole days, both ends included, in the account's time zone."""

    start: date
    end: date
    preset: str
    # True when the customer asked for nothing and this month had no activity yet, so the
    # statement shows last month instead of an empty page.
    fallback: bool = False
    # The period the statement shows instead when this one has no activity (the default
    # period only); statement_view decides in the same query that reads the entries.
    otherwise: Period | None = None

    @property
    def label(self) -> str:
        return PRESETS.get(self.preset, "Custom dates")

    def bounds(self, tz: str) -> tuple[datetime, datetime]:
        """[start, end) in UTC: from the start day's midnight to the midnight after the end day."""
        zone = ZoneInfo(tz)
        begin = datetime.combine(self.start, time(0), zone).astimezone(UTC)
        after = datetime.combine(self.end + timedelta(days=1), time(0), zone).astimezone(UTC)
        return begin, after

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


_NOT_A_DATE = {
    "start": N_("The start date “%(text)s” is not a date. Use the form 2026-01-31."),
    "end": N_("The end date “%(text)s” is not a date. Use the form 2026-01-31."),
}
_BAD_FORM = {
    "start": N_("Write the start date as YYYY-MM-DD, for example 2026-01-31."),
    "end": N_("Write the end date as YYYY-MM-DD, for example 2026-01-31."),
}


def _parse_day(raw: str, field: str) -> date:
    text = raw.strip()
    try:
        parsed = date.fromisoformat(text)
    except ValueError:
        raise InvalidPeriod(_NOT_A_DATE[field], field, text=text[:20]) from None
    if len(text) != 10:
        raise InvalidPeriod(_BAD_FORM[field], field)
    return parsed


def parse_period(
    today: date, preset: str | None = None, start: str | None = None, end: str | None = None
) -> Period:
    """The statement period from the query string: a preset, or custom start and end dates."""
    preset = (preset or "").strip()
    if not preset:
        preset = "custom" if (start or end) else "this_month"
    if preset not in PRESETS:
        raise InvalidPeriod(N_("Please choose one of the periods offered."), "period")
    if preset == "this_month":
        return Period(today.replace(day=1), today, preset)
    if preset == "last_month":
        last = today.replace(day=1) - timedelta(days=1)
        return Period(last.replace(day=1), last, preset)
    if preset == "this_year":
        return Period(today.replace(month=1, day=1), today, preset)
    if not start or not start.strip():
        raise InvalidPeriod(N_("Please enter the first day of the statement."), "start")
    if not end or not end.strip():
        raise InvalidPeriod(N_("Please enter the last day of the statement."), "end")
    first = _parse_day(start, "start")
    last = _parse_day(end, "end")
    if last < first:
        raise InvalidPeriod(
            N_("The end date is before the start date. Swap them and try again."), "end"
        )
    if first < EARLIEST:
        raise InvalidPeriod(
            N_("Statements start on %(date)s at the earliest."), "start", date=EARLIEST.isoformat()
        )
    if first > today:
        raise InvalidPeriod(
            N_("The start date is in the future. Choose a day up to today."), "start"
        )
    if (last - first).days + 1 > MAX_PERIOD_DAYS:
        raise InvalidPeriod(N_("That period is too long: choose at most five years."), "start")
    return Period(first, last, preset)


def statement_period(
    today: date,
    preset: str | None = None,
    start: str | None = None,
    end: str | None = None,
) -> Period:
    """The period from the query string; with none asked for, this month, or last month when
    nothing has happened this month yet (statement_view reads which).

    NOTE: on the 1st (and any day before the month's first entry) "this month" is empty, while
    the customer who opens the statement wants the month that just ended.
    """
    period = parse_period(today, preset, start, end)
    if (preset or "").strip() or start or end:
        return period
    last = parse_period(today, "last_month")
    return replace(period, otherwise=replace(last, fallback=True))


@dataclass(frozen=True)
class StatementRow:
    """One ledger entry as the customer reads it. `amount` is signed: charges raise the balance."""

    on: date
    kind: str
    description: str
    amount: Money
    balance: Money

    @property
    def kind_label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)

    @property
    def charge(self) -> Money | None:
        return self.amount if self.amount.minor > 0 else None

    @property
    def credit(self) -> Money | None:
        return -self.amount if self.amount.minor < 0 else None


@dataclass(frozen=True)
class AgingBucket:
    key: str
    label: str
    amount: Money
    count: int


@dataclass(frozen=True)
class Aging:
    as_of: date
    buckets: Sequence[AgingBucket]

    @property
    def total(self) -> Money:
        currency = self.buckets[0].amount.currency
        return sum((b.amount for b in self.buckets), Money.zero(currency))


@dataclass(frozen=True)
class StatementView:
    """Everything a statement shows, as plain values (the page, the CSV and the PDF read it)."""

    account_name: str
    currency: str
    period: Period
    opening: Money
    rows: Sequence[StatementRow]
    closing: Money
    charges: Money
    credits: Money
    totals: dict[str, Money]
    aging: Aging


# (key, label, lowest days past due, highest or None)
AGING_BUCKETS: tuple[tuple[str, str, int, int | None], ...] = (
    ("current", N_("Current"), -(10**6), 0),
    ("1_30", N_("1–30 days"), 1, 30),
    ("31_60", N_("31–60 days"), 31, 60),
    ("61_90", N_("61–90 days"), 61, 90),
    ("over_90", N_("Over 90 days"), 91, None),
)


@lru_cache(maxsize=1)
def _aging_query() -> CompoundSelect:
    """The aging query with the account, currency and cutoff as bound parameters: built once
    (building the expression costs more than running it)."""
    cutoff = bindparam("cutoff", type_=Invoice.finalized_at.type)
    account_id = bindparam("account_id", type_=Invoice.account_id.type)
    currency = bindparam("currency", type_=Invoice.currency.type)
    paid = (
        select(func.coalesce(func.sum(PaymentAllocation.amount_minor), 0))
        .join(Payment, Payment.id == PaymentAllocation.payment_id)
        .where(PaymentAllocation.invoice_id == Invoice.id, Payment.received_at < cutoff)
        .correlate(Invoice)
        .scalar_subquery()
    )
    credited = (
        select(func.coalesce(func.sum(CreditNote.amount_minor), 0))
        .where(CreditNote.invoice_id == Invoice.id, CreditNote.issued_at < cutoff)
        .correlate(Invoice)
        .scalar_subquery()
    )
    # Only invoices that could still have been open at the cutoff: open now, or paid or voided
    # after it. NOTE: three disjoint parts, each read through its own index ((account_id,
    # status, due_date), (account_id, paid_at), (account_id, voided_at)); one OR of the three
    # would read every invoice of the account.
    open_now = Invoice.status.in_(OPEN_STATUSES)
    parts = (
        open_now,
        and_(~open_now, Invoice.paid_at >= cutoff),
        and_(
            ~open_now,
            or_(Invoice.paid_at.is_(None), Invoice.paid_at < cutoff),
            Invoice.voided_at >= cutoff,
        ),
    )
    return union_all(
        *(
            select(Invoice.due_date, Invoice.total_minor - paid - credited).where(
                Invoice.account_id == account_id,
                part,
                Invoice.currency == currency,
                Invoice.finalized_at < cutoff,
            )
            for part in parts
        )
    )


def aging(session: Session, account_id: int, currency: str, as_of: date, tz: str) -> Aging:
    """What was open at the end of `as_of`, by days past due, in one query.

    NOTE: "open as of" a past day counts payments received and credits issued up to that day
    only, so an old statement's aging does not change when the invoice is paid later.
    """
    _, cutoff = Period(as_of, as_of, "custom").bounds(tz)
    rows = session.execute(
        _aging_query(), {"account_id": account_id, "currency": currency, "cutoff": cutoff}
    ).all()
    amounts = {key: 0 for key, *_ in AGING_BUCKETS}
    counts = {key: 0 for key, *_ in AGING_BUCKETS}
    for due_date, due_minor in rows:
        if due_minor <= 0:
            continue
        late = (as_of - due_date).days if due_date else 0
        key = _bucket(late)
        amounts[key] += int(due_minor)
        counts[key] += 1
    return Aging(
        as_of,
        [
            AgingBucket(key, label, Money(amounts[key], currency), counts[key])
            for key, label, *_ in AGING_BUCKETS
        ],
    )


def _bucket(days_late: int) -> str:
    for key, _label, low, high in AGING_BUCKETS:
        if days_late >= low and (high is None or days_late <= high):
            return key
    raise AssertionError("the buckets cover every day")


def statement_view(session: Session, account: Account, period: Period) -> StatementView:
    """The statement of one account for a period (or for its `otherwise` period, when this one
    has no activity): two queries, however long its history."""
    start, end = period.bounds(account.timezone)
    zone = ZoneInfo(account.timezone)
    otherwise = period.otherwise.bounds(account.timezone) if period.otherwise else None
    read = ledger.statement(session, account.id, account.currency, start, end, otherwise=otherwise)
    if period.otherwise is not None and (read.start, read.end) == otherwise:
        period = period.otherwise
    else:
        period = replace(period, otherwise=None)
    rows = [
        StatementRow(
            on=line.entry.effective_at.astimezone(zone).date(),
            kind=line.entry.kind,
            description=line.entry.description,
            amount=Money(line.entry.amount_minor, account.currency),
            balance=line.running,
        )
        for line in read.lines
    ]
    zero = Money.zero(account.currency)
    charges = sum((r.amount for r in rows if r.amount.minor > 0), zero)
    credits = sum((-r.amount for r in rows if r.amount.minor < 0), zero)
    return StatementView(
        account_name=account.name,
        currency=account.currency,
        period=period,
        opening=read.opening,
        rows=rows,
        closing=read.closing,
        charges=charges,
        credits=credits,
        totals=dict(read.totals),
        aging=aging(session, account.id, account.currency, period.end, account.timezone),
    )


# NOTE: a spreadsheet runs a cell that starts with one of these as a formula (CSV injection,
# OWASP), also after leading spaces or control characters, which it skips; full-width forms
# count too (some spreadsheets fold them). A leading apostrophe makes the cell plain text.
_FORMULA_STARTS = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_SKIPPED = " \t\r\n\x0b\x0c\u00a0\u3000"


def neutralise_cell(value: str) -> str:
    """Text a spreadsheet shows as text, never runs."""
    if value[:1] in ("\t", "\r", "\n") or value.lstrip(_SKIPPED).startswith(_FORMULA_STARTS):
        return "'" + value
    return value


@dataclass(frozen=True)
class CsvDialect:
    """How amounts and fields are written, for the spreadsheets of the account's locale."""

    delimiter: str
    decimal: str


def csv_dialect(locale: str) -> CsvDialect:
    """Semicolons and a decimal comma where the locale writes decimals with a comma.

    NOTE: a spreadsheet opening a CSV by double-click splits fields on the list separator of
    the machine's locale and reads numbers in its decimal style: German Excel splits on ";"
    and reads "1234.50" as text (or a date), so a comma-separated file with "." decimals opens
    as one column of text. The file is written the way the account's locale reads it; the
    amounts carry no symbol or grouping, and the currency has a column of its own.
    """
    from babel import Locale
    from babel.numbers import get_decimal_symbol

    try:
        decimal = get_decimal_symbol(Locale.parse(locale or "en_US"))
    except (ValueError, TypeError):
        decimal = "."
    if decimal == ",":
        return CsvDialect(delimiter=";", decimal=",")
    return CsvDialect(delimiter=",", decimal=".")


def _plain(amount: Money | None, dialect: CsvDialect) -> str:
    # Amounts are written without grouping or symbol, so spreadsheets read them as numbers.
    if amount is None:
        return ""
    return str(amount.to_decimal()).replace(".", dialect.decimal)


CSV_HEADER = (
    N_("Date"),
    N_("Type"),
    N_("Description"),
    N_("Charges"),
    N_("Credits"),
    N_("Balance"),
    N_("Currency"),
)


def statement_csv(
    view: StatementView,
    locale: str = "en_US",
    translate: Callable[[str], str] = N_,
) -> str:
    """The statement as CSV: an opening row, one row per entry, a closing row.

    NOTE: the Charges and Credits columns hold entries only: the opening and closing rows carry
    just the balance, so summing a column gives the period's total instead of twice it.
    """
    dialect = csv_dialect(locale)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=dialect.delimiter, lineterminator="\r\n")
    opening, closing = translate("Opening balance"), translate("Closing balance")
    rows: Iterable[Sequence[str]] = [
        [translate(name) for name in CSV_HEADER],
        [view.period.start.isoformat(), opening, opening, "", "", _plain(view.opening, dialect)],
        *(
            [
                row.on.isoformat(),
                translate(row.kind_label),
                row.description,
                _plain(row.charge, dialect),
                _plain(row.credit, dialect),
                _plain(row.balance, dialect),
            ]
            for row in view.rows
        ),
        [view.period.end.isoformat(), closing, closing, "", "", _plain(view.closing, dialect)],
    ]
    for row in rows:
        # NOTE: amounts are numbers we wrote, not text: only text cells are neutralised.
        cells = [neutralise_cell(cell) if i in (1, 2) else cell for i, cell in enumerate(row)]
        if len(cells) == 6:
            cells.append(view.currency)
        writer.writerow(cells)
    return out.getvalue()


def csv_filename(account: Account, period: Period) -> str:
    """Built by the server from safe parts only (never from what the request said)."""
    prefix = "".join(ch for ch in account.invoice_prefix if ch.isalnum()) or "account"
    return f"statement-{prefix}-{period.start.isoformat()}-to-{period.end.isoformat()}.csv"
