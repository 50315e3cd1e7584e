"""Query builders and read models for the customer's subscription pages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session, contains_eager, joinedload

from portal.billing.models import Invoice
from portal.subscriptions.models import (
    Plan,
    PlanTransition,
    Price,
    Subscription,
    SubscriptionChange,
    UsageRecord,
)

# NOTE: public ids are URL-safe base64 (portal.db.new_public_id); anything else names no row
# and never reaches the database.
_PUBLIC_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def is_public_id(text: str) -> bool:
    return 0 < len(text) <= 24 and set(text) <= _PUBLIC_ID_CHARS


def subscriptions_of(account_id: int) -> Select[tuple[Subscription]]:
    """The account's subscriptions with their price and plan, newest last."""
    return (
        select(Subscription)
        .where(Subscription.account_id == account_id)
        .options(joinedload(Subscription.price).joinedload(Price.plan))
        .order_by(Subscription.created_at, Subscription.id)
    )


def subscription_of(account_id: int, public_id: str) -> Select[tuple[Subscription]]:
    """One subscription of this account by public id (another account's answers nothing),
    with the tax rates of its price and plan: every amount its pages show is taxed
    (portal.billing.tax.rate_for), and these come in the same statement."""
    price = joinedload(Subscription.price)
    return (
        subscriptions_of(account_id)
        .where(Subscription.public_id == public_id)
        .options(
            price.joinedload(Price.tax_rate),
            price.joinedload(Price.plan).joinedload(Plan.tax_rate),
        )
    )


def history(session: Session, subscription_id: int) -> list[SubscriptionChange]:
    """Every change of the subscription, newest first."""
    return list(
        session.scalars(
            select(SubscriptionChange)
            .where(SubscriptionChange.subscription_id == subscription_id)
            .order_by(SubscriptionChange.requested_at.desc(), SubscriptionChange.id.desc())
        )
    )


def scheduled_change(session: Session, subscription_id: int) -> SubscriptionChange | None:
    """The one change waiting for the period end, if any."""
    return session.scalar(
        select(SubscriptionChange).where(
            SubscriptionChange.subscription_id == subscription_id,
            SubscriptionChange.status == "scheduled",
        )
    )


def allowed_target_plans(plan_id: int) -> Select[tuple[int]]:
    """The ids of the plans this plan may change to (plan_transitions), itself left out."""
    return select(PlanTransition.to_plan_id).where(PlanTransition.from_plan_id == plan_id)


def allowed_target_plan_ids(session: Session, plan_id: int) -> set[int]:
    """The plans this plan may change to (plan_transitions), and the plan itself (seats and
    interval changes stay on the same plan)."""
    return set(session.scalars(allowed_target_plans(plan_id))) | {plan_id}


def target_prices(session: Session, plan_id: int, currency: str) -> list[Price]:
    """The price a new subscriber of each plan this plan may change to (itself included) would
    get in this currency, per interval: the newest active version (older versions stay only
    for the customers already on them). One statement: the transitions are a subquery, and
    plans, tax rates and tiers come along (pricing a change reads them all)."""
    rows = session.scalars(
        select(Price)
        .join(Plan, Plan.id == Price.plan_id)
        .where(
            or_(Price.plan_id == plan_id, Price.plan_id.in_(allowed_target_plans(plan_id))),
            Price.currency == currency,
            Price.is_active.is_(True),
            Plan.is_active.is_(True),
        )
        .options(
            contains_eager(Price.plan).joinedload(Plan.tax_rate),
            joinedload(Price.tax_rate),
            joinedload(Price.tiers),
        )
        .order_by(Plan.rank, Plan.id, Price.billing_interval, Price.version.desc())
    ).unique()
    newest: dict[tuple[int, str, int], Price] = {}
    for price in rows:
        newest.setdefault((price.plan_id, price.billing_interval, price.interval_count), price)
    return list(newest.values())


def overdue_invoices(
    session: Session, subscription_id: int, before: date
) -> Select[tuple[Invoice]]:
    """Payable invoices of this subscription that were due before the given day."""
    return (
        select(Invoice)
        .where(Invoice.subscription_id == subscription_id, Invoice.is_overdue(before))
        .order_by(Invoice.due_date)
    )


def latest_invoices(session: Session, subscription_id: int, limit: int = 5) -> list[Invoice]:
    return list(
        session.scalars(
            select(Invoice)
            .where(Invoice.subscription_id == subscription_id, Invoice.number.is_not(None))
            .order_by(Invoice.issue_date.desc(), Invoice.id.desc())
            .limit(limit)
        )
    )


@dataclass(frozen=True)
class UsageDay:
    day: date
    quantity: int


def usage_by_day(
    session: Session, subscription_id: int, start: datetime, end: datetime, tz: str
) -> list[UsageDay]:
    """Metered usage per day of the period (in the account's time zone), every day listed."""
    zone = ZoneInfo(tz)
    rows = session.execute(
        select(UsageRecord.occurred_at, UsageRecord.quantity).where(
            UsageRecord.subscription_id == subscription_id,
            UsageRecord.occurred_at >= start,
            UsageRecord.occurred_at < end,
        )
    ).all()
    totals: dict[date, int] = {}
    for occurred_at, quantity in rows:
        day = occurred_at.astimezone(zone).date()
        totals[day] = totals.get(day, 0) + int(quantity)
    first = start.astimezone(zone).date()
    last = (end - timedelta(microseconds=1)).astimezone(zone).date()
    days = []
    current = first
    while current <= last:
        days.append(UsageDay(current, totals.get(current, 0)))
        current += timedelta(days=1)
    return days


def usage_total(session: Session, subscription_id: int, start: datetime, end: datetime) -> int:
    return int(
        session.scalar(
            select(func.coalesce(func.sum(UsageRecord.quantity), 0)).where(
                UsageRecord.subscription_id == subscription_id,
                UsageRecord.occurred_at >= start,
                UsageRecord.occurred_at < end,
            )
        )
        or 0
    )
