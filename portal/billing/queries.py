"""Query builders and read models for the customer's billing pages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from portal.billing import ledger
from portal.billing.models import Invoice, InvoiceStatus
from portal.billing.money import Money
from portal.disputes.models import Dispute
from portal.subscriptions.models import Subscription

OPEN_STATUSES = (InvoiceStatus.OPEN.value, InvoiceStatus.UNCOLLECTIBLE.value)


def open_invoices(account_id: int) -> Select[tuple[Invoice]]:
    """Issued invoices with something left to pay, oldest due first."""
    return (
        select(Invoice)
        .where(Invoice.account_id == account_id, Invoice.status.in_(OPEN_STATUSES))
        .order_by(Invoice.due_date, Invoice.id)
    )


def subscriptions_of(account_id: int) -> Select[tuple[Subscription]]:
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


def dashboard_summary(
    session: Session, account_id: int, currency: str, today: date
) -> DashboardSummary:
    """Everything the dashboard shows, in a fixed handful of queries."""
    overdue_expr = case(
        (
            Invoice.due_date < today,
            Invoice.total_minor - Invoice.amount_paid_minor - Invoice.amount_credited_minor,
        ),
        else_=0,
    )
    overdue_minor, overdue_count = session.execute(
        select(
            func.coalesce(func.sum(overdue_expr), 0),
            func.count(Invoice.id).filter(Invoice.due_date < today),
        ).where(Invoice.account_id == account_id, Invoice.status.in_(OPEN_STATUSES))
    ).one()
    invoices = list(session.scalars(open_invoices(account_id).limit(5)))
    subscriptions = list(
        session.scalars(subscriptions_of(account_id).where(Subscription.status != "canceled"))
    )
    open_disputes = session.scalar(
        select(func.count(Dispute.id)).where(
            Dispute.account_id == account_id,
            Dispute.status.in_(("open", "in_review", "waiting_on_customer")),
        )
    )
    return DashboardSummary(
        balance=ledger.balance(session, account_id, currency),
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
