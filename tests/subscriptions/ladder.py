"""A small plan ladder for subscription tests: Starter (flat), Team and Business (per seat),
monthly and yearly, with the ways between them, and a subscription on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from portal import clock
from portal.accounts.models import Account, User
from portal.subscriptions.models import Plan, PlanTransition, Price, Subscription, TaxRate
from tests.factories import make_account, make_user

# Team 10.00 a seat, Business 20.00 a seat, Starter 29.00 flat, a month; a year is ten months.
PERIOD_START = datetime(2026, 11, 1, tzinfo=UTC)
PERIOD_END = datetime(2026, 12, 1, tzinfo=UTC)
HALFWAY = PERIOD_START + (PERIOD_END - PERIOD_START) / 2


@dataclass
class Ladder:
    plans: dict[str, Plan]
    prices: dict[tuple[str, str], Price] = field(default_factory=dict)


_made = 0


def make_ladder(
    session: Session, currency: str = "USD", *, tax_bp: int = 0, inclusive: bool = False
) -> Ladder:
    global _made
    _made += 1
    rate = (
        TaxRate(name="VAT", rate_bp=tax_bp, country="ALL", inclusive=inclusive) if tax_bp else None
    )
    if rate is not None:
        session.add(rate)
    ladder = Ladder(plans={})
    spec: dict[str, tuple[int, str, int, int]] = {
        # code: (rank, model, unit, flat)
        "starter": (1, "flat", 0, 2900),
        "team": (2, "per_unit", 1000, 0),
        "business": (3, "per_unit", 2000, 0),
    }
    for code, (rank, model, unit, flat) in spec.items():
        plan = Plan(
            code=f"{code}-{_made}",
            name=code.title(),
            rank=rank,
            allows_pause=True,
            allows_cancel_now=code == "starter",
            max_pause_days=90,
            retention_discount_bp=2000 if code != "starter" else 0,
            retention_discount_periods=3 if code != "starter" else 0,
        )
        session.add(plan)
        ladder.plans[code] = plan
        for interval, months in (("month", 1), ("year", 10)):
            price = Price(
                plan=plan,
                currency=currency,
                billing_interval=interval,
                interval_count=1,
                pricing_model=model,
                unit_amount_minor=unit * months,
                flat_amount_minor=flat * months,
                unit_label="seat" if model == "per_unit" else "",
                min_quantity=1,
                max_quantity=50 if model == "per_unit" else None,
                version=1,
                tax_rate=rate,
                is_active=True,
            )
            session.add(price)
            ladder.prices[(code, interval)] = price
    session.flush()
    for a in spec:
        for b in spec:
            if a != b:
                session.add(
                    PlanTransition(from_plan_id=ladder.plans[a].id, to_plan_id=ladder.plans[b].id)
                )
    session.flush()
    return ladder


def make_subscription(
    session: Session,
    account: Account,
    price: Price,
    quantity: int = 5,
    *,
    start: datetime = PERIOD_START,
    end: datetime = PERIOD_END,
    **fields: Any,
) -> Subscription:
    subscription = Subscription(
        account_id=account.id,
        price_id=price.id,
        quantity=quantity,
        status=fields.pop("status", "active"),
        started_at=start - timedelta(days=60),
        current_period_start=start,
        current_period_end=end,
        version=1,
        **fields,
    )
    session.add(subscription)
    session.flush()
    return subscription


@dataclass
class Customer:
    account: Account
    user: User
    ladder: Ladder
    subscription: Subscription


def customer_on_team(
    session: Session,
    currency: str = "USD",
    quantity: int = 5,
    *,
    account: Account | None = None,
    around_now: bool = False,
    **ladder_options: Any,
) -> Customer:
    """A customer on Team (monthly, `quantity` seats) in the ladder's first period, or, with
    `around_now`, in a period that began ten days before the clock's now."""
    account = account or make_account(session, currency=currency)
    user = make_user(session, account=account)
    ladder = make_ladder(session, currency, **ladder_options)
    period: dict[str, datetime] = {}
    if around_now:
        now = clock.now().replace(microsecond=0)
        period = {"start": now - timedelta(days=10), "end": now + timedelta(days=20)}
    subscription = make_subscription(
        session, account, ladder.prices[("team", "month")], quantity, **period
    )
    return Customer(account, user, ladder, subscription)


def resume_day(subscription: Subscription, days: int = 20) -> str:
    """A day to end a pause on, `days` after the pause begins (the period's end)."""
    return (subscription.current_period_end + timedelta(days=days)).date().isoformat()
