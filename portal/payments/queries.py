"""Query builders and read models for the payment pages: the history and the receipts."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, or_, select
from sqlalchemy.orm import Session

from portal.billing.models import Invoice
from portal.billing.money import Money
from portal.billing.queries import PAGE_SIZE
from portal.db import parse_row_id
from portal.payments.models import Payment, PaymentAllocation, Refund


@dataclass(frozen=True)
class PaymentCursor:
    received_at: datetime
    id: int

    def encode(self) -> str:
        return f"{self.received_at.isoformat()}~{self.id}"

    @classmethod
    def decode(cls, raw: str) -> PaymentCursor | None:
        """The cursor a page link carries, or None for anything we did not write: a naive or
        out-of-range moment (one UTC cannot hold), an id no row can have."""
        moment, _, ident = raw[:80].partition("~")
        row_id = parse_row_id(ident)
        try:
            when = datetime.fromisoformat(moment)
            if when.tzinfo is None or row_id is None:
                return None
            return cls(when.astimezone(UTC), row_id)
        except (ValueError, OverflowError):
            return None


@dataclass(frozen=True)
class PaymentRow:
    payment: Payment
    invoices: list[tuple[str, Money]]


@dataclass(frozen=True)
class PaymentHistory:
    rows: list[PaymentRow]
    next_cursor: PaymentCursor | None


@functools.cache
def _history_statement(after: bool) -> Select[tuple[Payment]]:
    """The history's page query with bound parameters (account_id, after_at, after_id, size),
    built once per shape: building a select and its cache key per request cost more than
    running it."""
    query = select(Payment).where(Payment.account_id == bindparam("account_id"))
    if after:
        after_at = bindparam("after_at", type_=Payment.received_at.type)
        query = query.where(
            or_(
                Payment.received_at < after_at,
                and_(Payment.received_at == after_at, Payment.id < bindparam("after_id")),
            )
        )
    return query.order_by(Payment.received_at.desc(), Payment.id.desc()).limit(bindparam("size"))


def payment_history(
    session: Session, account_id: int, after: PaymentCursor | None = None, size: int = PAGE_SIZE
) -> PaymentHistory:
    """The account's payments, newest first, with the invoices each paid: two queries."""
    params: dict[str, Any] = {"account_id": account_id, "size": size + 1}
    if after is not None:
        params["after_at"] = after.received_at
        params["after_id"] = after.id
    payments = list(session.scalars(_history_statement(after is not None), params))
    shown = payments[:size]
    paid = _invoices_paid_by(session, [p.id for p in shown])
    more = len(payments) > size
    return PaymentHistory(
        [PaymentRow(p, paid.get(p.id, [])) for p in shown],
        PaymentCursor(shown[-1].received_at, shown[-1].id) if more else None,
    )


@functools.cache
def _paid_by_statement() -> Select[tuple[int, str, int, str]]:
    return (
        select(
            PaymentAllocation.payment_id,
            Invoice.number,
            PaymentAllocation.amount_minor,
            Invoice.currency,
        )
        .join(Invoice, Invoice.id == PaymentAllocation.invoice_id)
        .where(PaymentAllocation.payment_id.in_(bindparam("payment_ids", expanding=True)))
        .order_by(PaymentAllocation.payment_id, Invoice.number)
    )


def _invoices_paid_by(
    session: Session, payment_ids: list[int]
) -> dict[int, list[tuple[str, Money]]]:
    if not payment_ids:
        return {}
    paid: dict[int, list[tuple[str, Money]]] = {}
    rows = session.execute(_paid_by_statement(), {"payment_ids": payment_ids})
    for payment_id, number, minor, currency in rows:
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
