"""Query builders and read models for the customer's billing pages."""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Date,
    Select,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session, aliased, defer, joinedload

from portal.billing import ledger
from portal.billing.models import (
    OPEN_STATUSES as OPEN_STATUSES,  # NOTE: defined with the model; imported from here too
)
from portal.billing.models import (
    CreditNote,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
)
from portal.billing.money import Money
from portal.db import parse_row_id
from portal.disputes.models import Dispute
from portal.disputes.queries import OPEN_DISPUTE_STATUSES
from portal.notifications.models import PaymentRetry, RetryStatus
from portal.payments.models import Payment, PaymentAllocation
from portal.subscriptions.models import Plan, Price, Subscription

# NOTE: lists show an invoice's number, dates, amounts and status; the seller and buyer snapshots
# (JSON, decoded per row) and the memo are read only on the invoice's own page and PDF.
LIST_ONLY = (defer(Invoice.seller), defer(Invoice.buyer), defer(Invoice.memo))


def open_invoices(account_id: int | ColumnElement[int]) -> Select[tuple[Invoice]]:
    """The account's payable invoices (Invoice.is_payable), oldest due first."""
    return (
        select(Invoice)
        .where(Invoice.account_id == account_id, Invoice.is_payable)
        .order_by(Invoice.due_date, Invoice.id)
    )


# NOTE: invoice numbers are "<prefix>-<sequence>": letters, digits and dashes. Anything else (a
# NUL byte PostgreSQL would refuse, 2,000 characters) cannot name an invoice and never reaches
# the database.
INVOICE_NUMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,39}")


def with_settlements(statement: Select[Any], account_id: Any) -> Select[Any]:
    """`statement` (over invoices) with the invoice's payment allocations, their payments and
    its credit notes outer-joined, each of this account: the product of the two lists, for
    one statement where there were three (the caller takes each row once by its id)."""
    return (
        statement.outerjoin(PaymentAllocation, PaymentAllocation.invoice_id == Invoice.id)
        .outerjoin(
            Payment,
            and_(Payment.id == PaymentAllocation.payment_id, Payment.account_id == account_id),
        )
        .outerjoin(
            CreditNote,
            and_(CreditNote.invoice_id == Invoice.id, CreditNote.account_id == account_id),
        )
    )


def is_invoice_number(text: str) -> bool:
    return INVOICE_NUMBER.fullmatch(text) is not None


def issued_invoices(account_id: int, numbers: Collection[str]) -> Select[tuple[Invoice]]:
    """The account's issued invoices with these numbers (drafts have none and are never found);
    text that cannot be an invoice number finds nothing. The one lookup of invoices by number:
    add options, a lock or an order to it."""
    wanted = sorted({n for n in numbers if is_invoice_number(n)})
    return select(Invoice).where(
        Invoice.account_id == account_id,
        Invoice.number.in_(wanted),
        Invoice.status != InvoiceStatus.DRAFT.value,
    )


def issued_invoice(account_id: int, number: str) -> Select[tuple[Invoice]]:
    """An issued invoice of this account by number (see issued_invoices)."""
    return issued_invoices(account_id, [number])


def subscriptions_of(account_id: int | ColumnElement[int]) -> Select[tuple[Subscription]]:
    return (
        select(Subscription)
        .where(Subscription.account_id == account_id)
        .order_by(Subscription.created_at)
    )


@dataclass(frozen=True)
class NextCharge:
    amount: Money
    on: datetime
    subscription: Subscription


@dataclass(frozen=True)
class DashboardSummary:
    balance: Money
    overdue: Money
    overdue_count: int
    open_invoices: list[Invoice]
    subscriptions: list[Subscription]
    next_charge: NextCharge | None
    open_disputes: int


@functools.cache
def _dashboard_statements() -> tuple[Select[Any], Select[Any]]:
    """The dashboard's statements, built once with bound parameters (account_id, currency,
    today): building them and their cache keys on every request cost more than running them."""
    account_id = bindparam("account_id")
    today = bindparam("today")
    overdue = Invoice.due_date < today  # of payable invoices: Invoice.is_overdue
    disputes = select(func.count(Dispute.id)).where(
        Dispute.account_id == account_id,
        Dispute.status.in_(OPEN_DISPUTE_STATUSES),
    )
    # NOTE: the balance (one row of account_balances) and the open disputes' count ride along
    # with the overdue sums, and the five open invoices are joined to that one row (none: one
    # row of sums with no invoice): one statement, where each was a round trip on PostgreSQL.
    sums = (
        select(
            func.coalesce(func.sum(case((overdue, Invoice.amount_due_minor), else_=0)), 0).label(
                "overdue_minor"
            ),
            func.count(Invoice.id).filter(overdue).label("overdue_count"),
            ledger.balance_expr(account_id, bindparam("currency")).label("balance_minor"),
            disputes.scalar_subquery().label("open_disputes"),
        )
        .where(Invoice.account_id == account_id, Invoice.is_payable)
        .subquery("sums")
    )
    first_open = open_invoices(account_id).limit(5).subquery("first_open")
    shown = aliased(Invoice, first_open)
    summary = (
        select(sums, shown)
        .select_from(sums)
        .outerjoin(first_open, true())
        .options(defer(shown.seller), defer(shown.buyer), defer(shown.memo))
        .order_by(first_open.c.due_date, first_open.c.id)
    )
    # The page shows each subscription's plan: loaded in the same query, not one by one.
    subscriptions = (
        subscriptions_of(account_id)
        .where(Subscription.status != "canceled")
        .options(
            joinedload(Subscription.price).joinedload(Price.plan).joinedload(Plan.tax_rate),
            joinedload(Subscription.price).joinedload(Price.tax_rate),
        )
    )
    return summary, subscriptions


def dashboard_summary(
    session: Session, account_id: int, currency: str, today: date
) -> DashboardSummary:
    """Everything the dashboard shows, in a fixed handful of queries."""
    summary, subscriptions_of_account = _dashboard_statements()
    params = {"account_id": account_id, "currency": currency, "today": today}
    rows = session.execute(summary, params).all()
    overdue_minor, overdue_count, balance_minor, open_disputes, _first = rows[0]
    invoices = [row[-1] for row in rows if row[-1] is not None]
    subscriptions = list(session.scalars(subscriptions_of_account, params))
    return DashboardSummary(
        balance=Money(int(balance_minor), currency),
        overdue=Money(int(overdue_minor), currency),
        overdue_count=int(overdue_count),
        open_invoices=invoices,
        subscriptions=subscriptions,
        next_charge=_next_charge(subscriptions),
        open_disputes=int(open_disputes or 0),
    )


def _next_charge(subscriptions: list[Subscription]) -> NextCharge | None:
    from portal.subscriptions.pricing import estimate_period_amount

    upcoming = [
        s
        for s in subscriptions
        if s.status in ("active", "trialing", "past_due") and not s.cancel_at_period_end
    ]
    if not upcoming:
        return None
    soonest = min(upcoming, key=lambda s: s.current_period_end)
    return NextCharge(
        amount=estimate_period_amount(soonest.price, soonest.quantity),
        on=soonest.current_period_end,
        subscription=soonest,
    )


# --- The invoice list -------------------------------------------------------------------------

INVOICE_FILTERS = ("open", "overdue", "paid", "void")
PAGE_SIZE = 20


@dataclass(frozen=True)
class InvoiceFilters:
    """What the customer asked the list for; every field already checked by the form."""

    status: str = ""
    year: int | None = None
    search: str = ""


@dataclass(frozen=True)
class Cursor:
    """Keyset position: the last invoice shown (newest first, so the next page is older)."""

    issue_date: date
    id: int

    def encode(self) -> str:
        return f"{self.issue_date.isoformat()}.{self.id}"

    @classmethod
    def decode(cls, raw: str) -> Cursor | None:
        """The cursor a page link carries, or None for anything we did not write (a date that
        is not one, an id no row can have)."""
        day, _, ident = raw[:40].partition(".")
        row_id = parse_row_id(ident)
        if row_id is None:
            return None
        try:
            return cls(date.fromisoformat(day), row_id)
        except ValueError:
            return None


@dataclass(frozen=True)
class InvoicePage:
    invoices: list[Invoice]
    next_cursor: Cursor | None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@functools.cache
def _invoice_list_statement(
    status: str, by_year: bool, by_search: bool, after: bool
) -> Select[tuple[Invoice]]:
    """Issued invoices of an account, newest first, for one shape of filters, with bound
    parameters (account_id, today, status, year_start, year_end, pattern, after_date,
    after_id, size). NOTE: built once per shape (at most 40 of them): building a select
    and its cache key on every request cost more than running it."""
    query = select(Invoice).where(
        Invoice.account_id == bindparam("account_id"),
        Invoice.status != InvoiceStatus.DRAFT.value,
    )
    if status == "open":
        query = query.where(Invoice.is_payable)
    elif status == "overdue":
        query = query.where(Invoice.is_overdue(bindparam("today", type_=Date())))
    elif status in ("paid", "void"):
        query = query.where(Invoice.status == bindparam("status"))
    if by_year:
        query = query.where(
            Invoice.issue_date >= bindparam("year_start", type_=Date()),
            Invoice.issue_date <= bindparam("year_end", type_=Date()),
        )
    if by_search:
        query = query.where(func.upper(Invoice.number).like(bindparam("pattern"), escape="\\"))
    if after:
        after_date = bindparam("after_date", type_=Date())
        query = query.where(
            or_(
                Invoice.issue_date < after_date,
                and_(Invoice.issue_date == after_date, Invoice.id < bindparam("after_id")),
            )
        )
    return (
        query.options(*LIST_ONLY)
        .order_by(Invoice.issue_date.desc(), Invoice.id.desc())
        .limit(bindparam("size"))
    )


def invoice_page(
    session: Session,
    account_id: int,
    filters: InvoiceFilters,
    today: date,
    after: Cursor | None = None,
    size: int = PAGE_SIZE,
) -> InvoicePage:
    """One page of the list in one query (one row more than shown tells whether more follow)."""
    status = filters.status if filters.status in INVOICE_FILTERS else ""
    query = _invoice_list_statement(
        status, filters.year is not None, bool(filters.search), after is not None
    )
    params: dict[str, Any] = {"account_id": account_id, "size": size + 1}
    if status == "overdue":
        params["today"] = today
    elif status in ("paid", "void"):
        params["status"] = status
    if filters.year is not None:
        params["year_start"] = date(filters.year, 1, 1)
        params["year_end"] = date(filters.year, 12, 31)
    if filters.search:
        params["pattern"] = f"%{_escape_like(filters.search.upper())}%"
    if after is not None:
        params["after_date"] = after.issue_date
        params["after_id"] = after.id
    rows = list(session.scalars(query, params))
    shown = rows[:size]
    more = len(rows) > size
    return InvoicePage(shown, Cursor(shown[-1].issue_date, shown[-1].id) if more else None)


@functools.cache
def _payable_count_statement() -> Select[tuple[int]]:
    listed = open_invoices(bindparam("account_id")).order_by(None).subquery()
    return select(func.count()).select_from(listed)


def payable_count(session: Session, account_id: int) -> int:
    """How many invoices the account can pay now, counted in SQL."""
    return int(session.scalar(_payable_count_statement(), {"account_id": account_id}) or 0)


@functools.cache
def _invoice_years_statement() -> Select[tuple[date | None, date | None]]:
    issued = (
        Invoice.account_id == bindparam("account_id"),
        Invoice.status != InvoiceStatus.DRAFT.value,
    )
    first = select(Invoice.issue_date).where(*issued).order_by(Invoice.issue_date).limit(1)
    last = select(Invoice.issue_date).where(*issued).order_by(Invoice.issue_date.desc()).limit(1)
    return select(first.scalar_subquery(), last.scalar_subquery())


def invoice_years(session: Session, account_id: int) -> list[int]:
    """The years from the account's first invoice to its latest, newest first (for the year
    filter): the two ends read from the (account_id, issue_date) index, whatever the history."""
    statement = _invoice_years_statement()
    oldest, newest = session.execute(statement, {"account_id": account_id}).one()
    return _years(oldest, newest)


def _years(oldest: date | None, newest: date | None) -> list[int]:
    if oldest is None or newest is None:
        return []
    return list(range(newest.year, oldest.year - 1, -1))


@functools.cache
def _list_header_statement() -> Select[tuple[date | None, date | None, int]]:
    ends = _invoice_years_statement()
    return ends.add_columns(_payable_count_statement().scalar_subquery())


def invoice_list_header(session: Session, account_id: int) -> tuple[list[int], int]:
    """invoice_years and payable_count of the invoice list, in one statement (each statement
    is a round trip on PostgreSQL)."""
    statement = _list_header_statement()
    oldest, newest, payable = session.execute(statement, {"account_id": account_id}).one()
    return _years(oldest, newest), int(payable or 0)


# --- One invoice ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaxRow:
    name: str
    rate_bp: int
    taxable: Money
    tax: Money


@dataclass(frozen=True)
class AppliedPayment:
    payment: Payment
    amount: Money


@dataclass(frozen=True)
class InvoiceDetail:
    invoice: Invoice
    lines: list[InvoiceLine]
    taxes: list[TaxRow]
    payments: list[AppliedPayment]
    credit_notes: list[CreditNote]
    discount_lines: list[InvoiceLine] = field(default_factory=list)
    # The days the saved card will be tried again, soonest first (planned_retry_days).
    card_retries: list[date] = field(default_factory=list)


@functools.cache
def _invoice_detail_statements() -> tuple[Select[Any], Select[Any]]:
    """The invoice page's statements with bound parameters (account_id, number, invoice_id),
    built once: see _dashboard_statements. The invoice is found as issued_invoice finds it."""
    account_id = bindparam("account_id")
    invoice = (
        select(Invoice)
        .where(
            Invoice.account_id == account_id,
            Invoice.number == bindparam("number"),
            Invoice.status != InvoiceStatus.DRAFT.value,
        )
        # NOTE: the lines joined to the invoice: one statement, where selectinload sent a
        # second (a round trip on PostgreSQL); the invoice's columns repeat per line.
        .options(joinedload(Invoice.lines))
    )
    # NOTE: the payments applied, the credit notes and the planned card retries, outer-joined
    # to the invoice's one row: one statement where there were three (each a PostgreSQL round
    # trip). The rows are their product (an invoice has a few of each at most); each is taken
    # once and ordered in Python.
    invoice_id = bindparam("invoice_id")
    extras = (
        with_settlements(
            select(
                PaymentAllocation.id,
                PaymentAllocation.amount_minor,
                Payment,
                CreditNote,
                PaymentRetry.id,
                PaymentRetry.scheduled_for,
            ).select_from(Invoice),
            account_id,
        )
        .outerjoin(
            PaymentRetry,
            and_(
                PaymentRetry.invoice_id == Invoice.id,
                PaymentRetry.status == RetryStatus.SCHEDULED.value,
            ),
        )
        .where(Invoice.id == invoice_id, Invoice.account_id == account_id)
    )
    return invoice, extras


def invoice_detail(session: Session, account_id: int, number: str) -> InvoiceDetail | None:
    """The invoice with its lines, taxes per rate, payments, credit notes and planned card
    retries: two queries."""
    if not is_invoice_number(number):
        return None
    find_invoice, find_extras = _invoice_detail_statements()
    invoice = (
        session.scalars(find_invoice, {"account_id": account_id, "number": number}).unique().first()
    )
    if invoice is None:
        return None
    params = {"account_id": account_id, "invoice_id": invoice.id}
    allocations: dict[int, tuple[int, Payment]] = {}
    notes: dict[int, CreditNote] = {}
    retries: dict[int, datetime] = {}
    for alloc_id, minor, payment, note, retry_id, retry_at in session.execute(find_extras, params):
        if alloc_id is not None and payment is not None:
            allocations[alloc_id] = (int(minor), payment)
        if note is not None:
            notes[note.id] = note
        if retry_id is not None:
            retries[retry_id] = retry_at
    applied = sorted(allocations.values(), key=lambda a: (a[1].received_at, a[1].id))
    lines = list(invoice.lines)
    return InvoiceDetail(
        invoice=invoice,
        lines=[line for line in lines if line.kind != LineKind.DISCOUNT],
        taxes=tax_summary(lines, invoice.currency),
        payments=[AppliedPayment(p, Money(minor, invoice.currency)) for minor, p in applied],
        credit_notes=sorted(notes.values(), key=lambda n: (n.issued_at, n.id)),
        discount_lines=[line for line in lines if line.kind == LineKind.DISCOUNT],
        card_retries=sorted(when.date() for when in retries.values()),
    )


def tax_summary(lines: Sequence[InvoiceLine], currency: str) -> list[TaxRow]:
    """Tax grouped by name and rate, with the amount it was charged on (rates that apply only)."""
    grouped: dict[tuple[str, int], tuple[int, int]] = {}
    for line in lines:
        if not line.tax_rate_bp and not line.tax_minor:
            continue
        key = (line.tax_name, line.tax_rate_bp)
        taxable, tax = grouped.get(key, (0, 0))
        grouped[key] = (taxable + line.amount_minor, tax + line.tax_minor)
    return [
        TaxRow(name or "Tax", rate, Money(taxable, currency), Money(tax, currency))
        for (name, rate), (taxable, tax) in sorted(grouped.items(), key=lambda kv: -kv[0][1])
    ]
