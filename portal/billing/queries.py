"""Query builders and read models for the customer's billing pages."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, case, func, or_, select
from sqlalchemy.orm import Session, defer, joinedload, selectinload

from portal.billing import ledger
from portal.billing.models import CreditNote, Invoice, InvoiceLine, InvoiceStatus, LineKind
from portal.billing.money import Money
from portal.disputes.models import Dispute
from portal.payments.models import Payment, PaymentAllocation, Refund
from portal.subscriptions.models import Price, Subscription

OPEN_STATUSES = (InvoiceStatus.OPEN.value, InvoiceStatus.UNCOLLECTIBLE.value)
# NOTE: lists show an invoice's number, dates, amounts and status; the seller and buyer snapshots
# (JSON, decoded per row) and the memo are read only on the invoice's own page and PDF.
LIST_ONLY = (defer(Invoice.seller), defer(Invoice.buyer), defer(Invoice.memo))


def open_invoices(account_id: int | ColumnElement[int]) -> Select[tuple[Invoice]]:
    """Issued invoices with something left to pay, oldest due first (what can be paid now)."""
    due = Invoice.total_minor - Invoice.amount_paid_minor - Invoice.amount_credited_minor
    return (
        select(Invoice)
        .where(Invoice.account_id == account_id, Invoice.status.in_(OPEN_STATUSES), due > 0)
        .order_by(Invoice.due_date, Invoice.id)
    )


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
def _dashboard_statements() -> tuple[Select[Any], Select[Any], Select[Any], Select[Any]]:
    """The dashboard's statements, built once with bound parameters (account_id, currency,
    today): building them and their cache keys on every request cost more than running them."""
    account_id = bindparam("account_id")
    today = bindparam("today")
    overdue_expr = case(
        (
            Invoice.due_date < today,
            Invoice.total_minor - Invoice.amount_paid_minor - Invoice.amount_credited_minor,
        ),
        else_=0,
    )
    # NOTE: the balance (one row of account_balances) rides along with the overdue sums.
    sums = select(
        func.coalesce(func.sum(overdue_expr), 0),
        func.count(Invoice.id).filter(Invoice.due_date < today),
        ledger.balance_expr(account_id, bindparam("currency")),
    ).where(Invoice.account_id == account_id, Invoice.status.in_(OPEN_STATUSES))
    invoices = open_invoices(account_id).options(*LIST_ONLY).limit(5)
    # The page shows each subscription's plan: loaded in the same query, not one by one.
    subscriptions = (
        subscriptions_of(account_id)
        .where(Subscription.status != "canceled")
        .options(joinedload(Subscription.price).joinedload(Price.plan))
    )
    disputes = select(func.count(Dispute.id)).where(
        Dispute.account_id == account_id,
        Dispute.status.in_(("open", "in_review", "waiting_on_customer")),
    )
    return sums, invoices, subscriptions, disputes


def dashboard_summary(
    session: Session, account_id: int, currency: str, today: date
) -> DashboardSummary:
    """Everything the dashboard shows, in a fixed handful of queries."""
    sums, invoices_of, subscriptions_of_account, disputes = _dashboard_statements()
    params = {"account_id": account_id, "currency": currency, "today": today}
    overdue_minor, overdue_count, balance_minor = session.execute(sums, params).one()
    invoices = list(session.scalars(invoices_of, params))
    subscriptions = list(session.scalars(subscriptions_of_account, params))
    open_disputes = session.scalar(disputes, params)
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
        day, _, ident = raw.partition(".")
        try:
            return cls(date.fromisoformat(day), int(ident))
        except ValueError:
            return None


@dataclass(frozen=True)
class InvoicePage:
    invoices: list[Invoice]
    next_cursor: Cursor | None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def invoice_list(
    account_id: int, filters: InvoiceFilters, today: date, after: Cursor | None = None
) -> Select[tuple[Invoice]]:
    """Issued invoices of an account, newest first, filtered; keyset-paginated after `after`."""
    query = select(Invoice).where(
        Invoice.account_id == account_id, Invoice.status != InvoiceStatus.DRAFT.value
    )
    if filters.status == "open":
        query = query.where(Invoice.status.in_(OPEN_STATUSES))
    elif filters.status == "overdue":
        query = query.where(
            Invoice.status.in_(OPEN_STATUSES),
            Invoice.due_date < today,
            Invoice.total_minor > Invoice.amount_paid_minor + Invoice.amount_credited_minor,
        )
    elif filters.status in ("paid", "void"):
        query = query.where(Invoice.status == filters.status)
    if filters.year is not None:
        query = query.where(
            Invoice.issue_date >= date(filters.year, 1, 1),
            Invoice.issue_date <= date(filters.year, 12, 31),
        )
    if filters.search:
        pattern = f"%{_escape_like(filters.search.upper())}%"
        query = query.where(func.upper(Invoice.number).like(pattern, escape="\\"))
    if after is not None:
        query = query.where(
            or_(
                Invoice.issue_date < after.issue_date,
                and_(Invoice.issue_date == after.issue_date, Invoice.id < after.id),
            )
        )
    return query.order_by(Invoice.issue_date.desc(), Invoice.id.desc())


def invoice_page(
    session: Session,
    account_id: int,
    filters: InvoiceFilters,
    today: date,
    after: Cursor | None = None,
    size: int = PAGE_SIZE,
) -> InvoicePage:
    """One page of the list in one query (one row more than shown tells whether more follow)."""
    query = invoice_list(account_id, filters, today, after).options(*LIST_ONLY)
    rows = list(session.scalars(query.limit(size + 1)))
    shown = rows[:size]
    more = len(rows) > size
    return InvoicePage(shown, Cursor(shown[-1].issue_date, shown[-1].id) if more else None)


def payable_count(session: Session, account_id: int) -> int:
    """How many invoices the account can pay now, counted in SQL."""
    listed = open_invoices(account_id).order_by(None).subquery()
    return int(session.scalar(select(func.count()).select_from(listed)) or 0)


def invoice_years(session: Session, account_id: int) -> list[int]:
    """The years from the account's first invoice to its latest, newest first (for the year
    filter): the two ends read from the (account_id, issue_date) index, whatever the history."""
    issued = (Invoice.account_id == account_id, Invoice.status != InvoiceStatus.DRAFT.value)
    first = select(Invoice.issue_date).where(*issued).order_by(Invoice.issue_date).limit(1)
    last = select(Invoice.issue_date).where(*issued).order_by(Invoice.issue_date.desc()).limit(1)
    oldest, newest = session.execute(select(first.scalar_subquery(), last.scalar_subquery())).one()
    if oldest is None or newest is None:
        return []
    return list(range(newest.year, oldest.year - 1, -1))


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


def issued_invoice(account_id: int, number: str) -> Select[tuple[Invoice]]:
    """An issued invoice of this account by number (drafts have no number and are never shown)."""
    return select(Invoice).where(
        Invoice.account_id == account_id,
        Invoice.number == number,
        Invoice.status != InvoiceStatus.DRAFT.value,
    )


def invoice_detail(session: Session, account_id: int, number: str) -> InvoiceDetail | None:
    """The invoice with its lines, taxes per rate, payments and credit notes: four queries."""
    invoice = session.scalar(
        issued_invoice(account_id, number).options(selectinload(Invoice.lines))
    )
    if invoice is None:
        return None
    allocations = session.execute(
        select(PaymentAllocation.amount_minor, Payment)
        .join(Payment, Payment.id == PaymentAllocation.payment_id)
        .where(PaymentAllocation.invoice_id == invoice.id, Payment.account_id == account_id)
        .order_by(Payment.received_at, Payment.id)
    ).all()
    notes = list(
        session.scalars(
            select(CreditNote)
            .where(CreditNote.invoice_id == invoice.id, CreditNote.account_id == account_id)
            .order_by(CreditNote.issued_at, CreditNote.id)
        )
    )
    lines = list(invoice.lines)
    return InvoiceDetail(
        invoice=invoice,
        lines=[line for line in lines if line.kind != LineKind.DISCOUNT],
        taxes=tax_summary(lines, invoice.currency),
        payments=[
            AppliedPayment(p, Money(int(minor), invoice.currency)) for minor, p in allocations
        ],
        credit_notes=notes,
        discount_lines=[line for line in lines if line.kind == LineKind.DISCOUNT],
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


# --- Payments (the history and receipt pages of portal/payments) ------------------------------


@dataclass(frozen=True)
class PaymentCursor:
    received_at: datetime
    id: int

    def encode(self) -> str:
        return f"{self.received_at.isoformat()}~{self.id}"

    @classmethod
    def decode(cls, raw: str) -> PaymentCursor | None:
        moment, _, ident = raw.partition("~")
        try:
            when = datetime.fromisoformat(moment)
            return cls(when, int(ident)) if when.tzinfo is not None else None
        except ValueError:
            return None


@dataclass(frozen=True)
class PaymentRow:
    payment: Payment
    invoices: list[tuple[str, Money]]


@dataclass(frozen=True)
class PaymentHistory:
    rows: list[PaymentRow]
    next_cursor: PaymentCursor | None


def payment_history(
    session: Session, account_id: int, after: PaymentCursor | None = None, size: int = PAGE_SIZE
) -> PaymentHistory:
    """The account's payments, newest first, with the invoices each paid: two queries."""
    query = select(Payment).where(Payment.account_id == account_id)
    if after is not None:
        query = query.where(
            or_(
                Payment.received_at < after.received_at,
                and_(Payment.received_at == after.received_at, Payment.id < after.id),
            )
        )
    payments = list(
        session.scalars(
            query.order_by(Payment.received_at.desc(), Payment.id.desc()).limit(size + 1)
        )
    )
    shown = payments[:size]
    paid = _invoices_paid_by(session, [p.id for p in shown])
    more = len(payments) > size
    return PaymentHistory(
        [PaymentRow(p, paid.get(p.id, [])) for p in shown],
        PaymentCursor(shown[-1].received_at, shown[-1].id) if more else None,
    )


def _invoices_paid_by(
    session: Session, payment_ids: list[int]
) -> dict[int, list[tuple[str, Money]]]:
    if not payment_ids:
        return {}
    paid: dict[int, list[tuple[str, Money]]] = {}
    for payment_id, number, minor, currency in session.execute(
        select(
            PaymentAllocation.payment_id,
            Invoice.number,
            PaymentAllocation.amount_minor,
            Invoice.currency,
        )
        .join(Invoice, Invoice.id == PaymentAllocation.invoice_id)
        .where(PaymentAllocation.payment_id.in_(payment_ids))
        .order_by(PaymentAllocation.payment_id, Invoice.number)
    ):
        paid.setdefault(payment_id, []).append((number, Money(int(minor), currency)))
    return paid


@dataclass(frozen=True)
class Receipt:
    payment: Payment
    invoices: list[tuple[str, Money]]
    refunds: list[Refund]

    @property
    def amount(self) -> Money:
        return Money(self.payment.amount_minor, self.payment.currency)

    @property
    def refunded(self) -> Money:
        return Money(self.payment.amount_refunded_minor, self.payment.currency)


def payment_receipt(session: Session, account_id: int, public_id: str) -> Receipt | None:
    """One payment of this account, with what it paid and what was refunded: three queries."""
    payment = session.scalar(
        select(Payment).where(Payment.account_id == account_id, Payment.public_id == public_id)
    )
    if payment is None:
        return None
    refunds = list(
        session.scalars(
            select(Refund)
            .where(Refund.payment_id == payment.id, Refund.account_id == account_id)
            .order_by(Refund.created_at, Refund.id)
        )
    )
    return Receipt(payment, _invoices_paid_by(session, [payment.id]).get(payment.id, []), refunds)
