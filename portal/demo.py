"""The demo data of CONTRACT.md: three customers with a year of history, and two staff users.

Every object is looked up by a natural key before it is created, so seeding twice changes nothing.
Dates are relative to the clock, so the demo always has an open invoice not yet due and an
overdue one.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from portal import clock
from portal.accounts.models import Account, Membership, User
from portal.billing import services as billing
from portal.billing.models import Invoice, LineKind
from portal.billing.money import Money, allocate_minor
from portal.payments.models import PaymentMethod
from portal.subscriptions.models import Plan, Price, Subscription, TaxRate, UsageRecord
from portal.subscriptions.pricing import charge_for


def add_months(day: date, months: int) -> date:
    """The same day of another month, clamped to that month's last day (Jan 31 + 1 = Feb 28)."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


def at(day: date, hour: int, tz: str) -> datetime:
    return datetime.combine(day, time(hour), ZoneInfo(tz))


# plan code -> (name, description, [(currency, model, unit, flat, unit_label, tax bp, tax name)])
PLANS: dict[str, tuple[str, str, list[tuple[str, str, int, int, str, int, str]]]] = {
    "starter": (
        "Starter",
        "For one person getting started.",
        [
            ("USD", "flat", 0, 2900, "", 0, ""),
            ("EUR", "flat", 0, 2900, "", 1900, "VAT 19%"),
            ("JPY", "flat", 0, 9800, "", 1000, "Consumption tax 10%"),
        ],
    ),
    "team": (
        "Team",
        "Per-seat pricing for growing teams.",
        [
            ("USD", "per_unit", 1500, 0, "seat", 0, ""),
            ("EUR", "per_unit", 1400, 0, "seat", 1900, "VAT 19%"),
            ("JPY", "per_unit", 2200, 0, "seat", 1000, "Consumption tax 10%"),
        ],
    ),
    "business": (
        "Business",
        "Priority support and audit features.",
        [
            ("USD", "per_unit", 2500, 0, "seat", 0, ""),
            ("EUR", "per_unit", 2300, 0, "seat", 1900, "VAT 19%"),
        ],
    ),
    "usage": (
        "Usage",
        "A platform fee plus what you process, billed at the end of each month.",
        [("EUR", "metered", 250, 4900, "GB", 1900, "VAT 19%")],
    ),
}


@dataclass(frozen=True)
class DemoCustomer:
    email: str
    name: str
    account: dict[str, Any]
    plan: str
    quantity: int
    months: int


CUSTOMERS = (
    DemoCustomer(
        email="ada@example.com",
        name="Ada Lovelace",
        account={
            "name": "Ada Lovelace Studio",
            "billing_email": "ada@example.com",
            "address_line1": "12 Analytical Row",
            "city": "Boston",
            "region": "MA",
            "postal_code": "02110",
            "country": "US",
            "currency": "USD",
            "locale": "en_US",
            "timezone": "America/New_York",
            "invoice_prefix": "ALS",
        },
        plan="team",
        quantity=5,
        months=12,
    ),
    DemoCustomer(
        email="grace@example.com",
        name="Grace Hopper",
        account={
            "name": "Hopper Consulting GmbH",
            "billing_email": "grace@example.com",
            "address_line1": "Friedrichstraße 68",
            "city": "Berlin",
            "postal_code": "10117",
            "country": "DE",
            "tax_id": "DE 811 907 980",
            "currency": "EUR",
            "locale": "de_DE",
            "timezone": "Europe/Berlin",
            "invoice_prefix": "HCG",
        },
        plan="usage",
        quantity=1,
        months=4,
    ),
    DemoCustomer(
        email="kenji@example.com",
        name="Kenji Tanaka",
        account={
            "name": "Kenji Foods",
            "billing_email": "kenji@example.com",
            "address_line1": "1-2-3 Shibuya",
            "city": "Tokyo",
            "postal_code": "150-0002",
            "country": "JP",
            "currency": "JPY",
            "locale": "ja_JP",
            "timezone": "Asia/Tokyo",
            "invoice_prefix": "KF",
        },
        plan="starter",
        quantity=1,
        months=3,
    ),
)

STAFF = (
    ("support@example.com", "Sam Support", "support"),
    ("admin@example.com", "Alex Admin", "admin"),
)

# GB processed in each of Grace's months, oldest first (reported as daily usage records).
GRACE_USAGE_GB = (96, 118, 143, 131)


def seed_demo(session: Session, seller: dict[str, Any]) -> list[str]:
    """Create whatever of the demo data is missing; returns a line per thing created."""
    created: list[str] = []
    prices = _seed_plans(session, created)
    for email, name, role in STAFF:
        if session.scalar(select(User).where(User.email == email)) is None:
            session.add(User(email=email, name=name, staff_role=role))
            created.append(f"staff user {email} ({role})")
    for customer in CUSTOMERS:
        _seed_customer(session, customer, prices, seller, created)
    _seed_plan_ladder(session, created)
    _seed_dispute(session, created)
    session.flush()
    return created


def _seed_plans(session: Session, created: list[str]) -> dict[tuple[str, str], Price]:
    prices: dict[tuple[str, str], Price] = {}
    for code, (name, description, variants) in PLANS.items():
        plan = session.scalar(select(Plan).where(Plan.code == code))
        if plan is None:
            plan = Plan(code=code, name=name, description=description)
            session.add(plan)
            session.flush()
            created.append(f"plan {name}")
        for currency, model, unit, flat, label, tax_bp, tax_name in variants:
            price = session.scalar(
                select(Price).where(
                    Price.plan_id == plan.id,
                    Price.currency == currency,
                    Price.billing_interval == "month",
                    Price.interval_count == 1,
                )
            )
            if price is None:
                price = Price(
                    plan_id=plan.id,
                    currency=currency,
                    billing_interval="month",
                    pricing_model=model,
                    unit_amount_minor=unit,
                    flat_amount_minor=flat,
                    unit_label=label,
                    min_quantity=1 if model == "per_unit" else 0,
                    max_quantity=500 if model == "per_unit" else None,
                    tax_rate=_tax_rate(session, tax_bp, tax_name),
                )
                session.add(price)
                session.flush()
            prices[(code, currency)] = price
    return prices


def _tax_rate(session: Session, rate_bp: int, name: str) -> TaxRate | None:
    """The demo's tax rate row of that name and rate (created once), or None for no tax."""
    if not rate_bp:
        return None
    rate = session.scalar(select(TaxRate).where(TaxRate.name == name, TaxRate.rate_bp == rate_bp))
    if rate is None:
        rate = TaxRate(name=name, rate_bp=rate_bp, country="ALL", inclusive=False)
        session.add(rate)
        session.flush()
    return rate


def _seed_customer(
    session: Session,
    customer: DemoCustomer,
    prices: dict[tuple[str, str], Price],
    seller: dict[str, Any],
    created: list[str],
) -> None:
    user = session.scalar(select(User).where(User.email == customer.email))
    if user is None:
        user = User(email=customer.email, name=customer.name)
        session.add(user)
        created.append(f"user {customer.email}")
    account = session.scalar(
        select(Account).where(Account.invoice_prefix == customer.account["invoice_prefix"])
    )
    if account is not None:
        return  # this customer's history exists already: seeding again changes nothing
    account = Account(**customer.account)
    session.add(account)
    session.flush()
    session.add(Membership(user_id=user.id, account_id=account.id, role="owner"))
    created.append(f"account {account.name}")

    tz = account.timezone
    today = clock.today(tz)
    price = prices[(customer.plan, account.currency)]
    # NOTE: the latest period began ten days ago, so with 30-day terms its invoice is open and
    # not yet due while the one before is overdue, whatever day the demo is seeded on.
    latest = today - timedelta(days=10)
    # Period boundaries, each computed from `latest` so that clamped month ends (Jan 31 ->
    # Feb 28) never make two periods overlap.
    bounds = [add_months(latest, k) for k in range(-customer.months, 2)]
    starts = bounds[1:-1]
    subscription = Subscription(
        account_id=account.id,
        price_id=price.id,
        quantity=customer.quantity,
        status="active",
        started_at=at(starts[0], 9, tz),
        current_period_start=at(latest, 0, tz),
        current_period_end=at(add_months(latest, 1), 0, tz),
    )
    session.add(subscription)
    session.flush()

    if account.currency == "USD":
        session.add(
            PaymentMethod(
                account_id=account.id,
                stripe_payment_method_id=f"pm_demo_{account.invoice_prefix.lower()}_visa",
                brand="visa",
                last4="4242",
                exp_month=12,
                exp_year=today.year + 2,
                is_default=True,
            )
        )

    metered = price.pricing_model == "metered"
    for index, start in enumerate(starts):
        end = bounds[index + 2]
        is_latest = index == len(starts) - 1
        is_previous = index == len(starts) - 2
        if metered:
            # Usage is billed in arrears: the invoice for a month goes out when it ends.
            start, end = bounds[index], start
            gb = GRACE_USAGE_GB[index % len(GRACE_USAGE_GB)]
            _seed_usage(session, subscription, start, end, gb, tz)
            lines = [
                billing.LineInput(
                    description=f"{price.plan.name} plan: platform fee",
                    unit_amount_minor=price.flat_amount_minor,
                    period_start=start,
                    period_end=end,
                    tax_rate=price.tax_rate,
                    price_id=price.id,
                ),
                billing.LineInput(
                    description=f"Data processed ({price.unit_label})",
                    kind=LineKind.USAGE,
                    quantity=gb,
                    unit_amount_minor=price.unit_amount_minor,
                    period_start=start,
                    period_end=end,
                    tax_rate=price.tax_rate,
                    price_id=price.id,
                ),
            ]
            issue = end
        else:
            quantity = customer.quantity
            per_unit = price.pricing_model == "per_unit"
            unit = charge_for(price, 1 if per_unit else 0).minor
            label = f" ({quantity} {price.unit_label}s)" if price.unit_label else ""
            lines = [
                billing.LineInput(
                    description=f"{price.plan.name} plan{label}",
                    quantity=quantity if per_unit else 1,
                    unit_amount_minor=unit,
                    period_start=start,
                    period_end=end,
                    tax_rate=price.tax_rate,
                    price_id=price.id,
                )
            ]
            issue = start
        invoice = billing.create_draft_invoice(
            session,
            account,
            lines,
            issue_date=issue,
            subscription_id=subscription.id,
            billing_key=f"sub:{subscription.id}:{start.isoformat()}",
            billing_period_start=at(issue, 0, tz),
            period=(start, end),
        )
        billing.finalize_invoice(session, invoice, seller=seller, finalized_at=at(issue, 9, tz))
        if is_latest or is_previous:
            continue  # the latest is open and not yet due; the one before is overdue
        paid_at = at(issue + timedelta(days=3), 10, tz)
        if account.currency == "USD" and index == len(starts) - 7:
            _credit_one_seat(session, invoice, price, at(issue + timedelta(days=1), 15, tz))
        billing.record_payment(
            session,
            account,
            invoice.amount_due,
            [(invoice, invoice.amount_due)],
            received_at=paid_at,
            method_description=(
                "Visa ending in 4242" if account.currency == "USD" else "Bank transfer"
            ),
            stripe_payment_intent_id=f"pi_demo_{invoice.number}",
        )
    created.append(f"{len(starts)} invoices for {account.name}")


def _credit_one_seat(session: Session, invoice: Invoice, price: Price, when: datetime) -> None:
    seat = Money(price.unit_amount_minor, price.currency)
    rate = price.tax_rate
    seat = seat + seat.basis_points(rate.rate_bp if rate is not None else 0)
    billing.issue_credit_note(
        session,
        invoice,
        seat,
        reason="order_change",
        memo="One seat removed on the first day of the period.",
        lines=[(invoice.lines[0], "Team plan: one seat not used this period", seat)],
        issued_at=when,
    )


def _seed_usage(
    session: Session, subscription: Subscription, start: date, end: date, gb: int, tz: str
) -> None:
    days = (end - start).days
    for offset, quantity in enumerate(allocate_minor(gb, [1] * days)):
        if quantity:
            session.add(
                UsageRecord(
                    subscription_id=subscription.id,
                    quantity=quantity,
                    occurred_at=at(start + timedelta(days=offset), 12, tz),
                    idempotency_key=f"demo:{(start + timedelta(days=offset)).isoformat()}",
                )
            )


# -- the plan ladder of issue 10: Starter, Team, Business, monthly and yearly, with the rules of
# each plan and the ways between them; Grace's usage this period; a trial for Kenji. ------------

# plan code -> (rank, allows pause, allows cancel now, retention discount bp, discount periods)
PLAN_RULES: dict[str, tuple[int, bool, bool, int, int]] = {
    "starter": (1, True, True, 0, 0),
    "team": (2, True, False, 2000, 3),
    "business": (3, True, False, 2000, 3),
    "usage": (1, True, False, 0, 0),
}
LADDER = ("starter", "team", "business")
# NOTE: a year costs ten months (two months free), the usual yearly offer.
YEARLY_MONTHS = 10
TRIAL_DAYS = 14


def _seed_plan_ladder(session: Session, created: list[str]) -> None:
    from portal.subscriptions.models import PlanTransition

    plans = {plan.code: plan for plan in session.scalars(select(Plan))}
    for code, (rank, pause, cancel_now, discount_bp, periods) in PLAN_RULES.items():
        plan = plans.get(code)
        if plan is None:
            continue
        plan.rank, plan.allows_pause, plan.allows_cancel_now = rank, pause, cancel_now
        plan.retention_discount_bp, plan.retention_discount_periods = discount_bp, periods
        plan.max_pause_days = 90
        if code == "team":
            plan.trial_days = TRIAL_DAYS
    for code in LADDER:
        plan = plans.get(code)
        if plan is None:
            continue
        monthly = session.scalars(
            select(Price).where(Price.plan_id == plan.id, Price.billing_interval == "month")
        ).all()
        for price in monthly:
            exists = session.scalar(
                select(Price.id).where(
                    Price.plan_id == plan.id,
                    Price.currency == price.currency,
                    Price.billing_interval == "year",
                )
            )
            if exists is None:
                session.add(
                    Price(
                        plan_id=plan.id,
                        currency=price.currency,
                        billing_interval="year",
                        interval_count=1,
                        pricing_model=price.pricing_model,
                        unit_amount_minor=price.unit_amount_minor * YEARLY_MONTHS,
                        flat_amount_minor=price.flat_amount_minor * YEARLY_MONTHS,
                        unit_label=price.unit_label,
                        min_quantity=price.min_quantity,
                        max_quantity=price.max_quantity,
                        tax_rate_id=price.tax_rate_id,
                        version=1,
                    )
                )
                created.append(f"yearly price of {plan.name} in {price.currency}")
    existing = set(session.execute(select(PlanTransition.from_plan_id, PlanTransition.to_plan_id)))
    for a in LADDER:
        for b in LADDER:
            if a == b or a not in plans or b not in plans:
                continue
            pair = (plans[a].id, plans[b].id)
            if pair not in existing:
                session.add(PlanTransition(from_plan_id=pair[0], to_plan_id=pair[1]))
                created.append(f"plan change {plans[a].name} -> {plans[b].name}")
    session.flush()
    _seed_current_usage(session, created)
    _seed_trial(session, plans, created)


def _seed_current_usage(session: Session, created: list[str]) -> None:
    """Grace's usage so far this period, one record a day up to yesterday (keys make it once)."""
    account = session.scalar(select(Account).where(Account.invoice_prefix == "HCG"))
    if account is None:
        return
    subscription = session.scalar(
        select(Subscription).where(Subscription.account_id == account.id).limit(1)
    )
    if subscription is None or subscription.price.pricing_model != "metered":
        return
    seeded = session.scalar(
        select(UsageRecord.id)
        .where(
            UsageRecord.subscription_id == subscription.id,
            UsageRecord.idempotency_key.like("demo:current:%"),
        )
        .limit(1)
    )
    if seeded is not None:
        return  # NOTE: seeded once; a later run must not top the period up
    tz = account.timezone
    zone = ZoneInfo(tz)
    start = subscription.current_period_start.astimezone(zone).date()
    today = clock.today(tz)
    added = 0
    day = start
    while day < today:
        key = f"demo:current:{day.isoformat()}"
        found = session.scalar(
            select(UsageRecord.id).where(
                UsageRecord.subscription_id == subscription.id,
                UsageRecord.idempotency_key == key,
            )
        )
        if found is None:
            # NOTE: a weekly rhythm (quieter weekends), so the chart shows something real.
            quantity = 2 + (day.toordinal() * 7) % 5 + (0 if day.weekday() >= 5 else 3)
            session.add(
                UsageRecord(
                    subscription_id=subscription.id,
                    quantity=quantity,
                    occurred_at=at(day, 12, tz),
                    idempotency_key=key,
                )
            )
            added += 1
        day += timedelta(days=1)
    if added:
        created.append(f"{added} days of usage this period for {account.name}")


def _seed_trial(session: Session, plans: dict[str, Plan], created: list[str]) -> None:
    """Kenji tries the Team plan (three seats) on a free trial that ends in ten days."""
    account = session.scalar(select(Account).where(Account.invoice_prefix == "KF"))
    team = plans.get("team")
    if account is None or team is None:
        return
    price = session.scalar(
        select(Price).where(
            Price.plan_id == team.id,
            Price.currency == account.currency,
            Price.billing_interval == "month",
            Price.is_active.is_(True),
        )
    )
    if price is None:
        return
    exists = session.scalar(
        select(Subscription.id).where(
            Subscription.account_id == account.id, Subscription.price_id == price.id
        )
    )
    if exists is not None:
        return
    now = clock.now()
    started = now - timedelta(days=TRIAL_DAYS - 10)
    trial_end = started + timedelta(days=TRIAL_DAYS)
    session.add(
        Subscription(
            account_id=account.id,
            price_id=price.id,
            quantity=3,
            status="trialing",
            started_at=started,
            current_period_start=started,
            current_period_end=trial_end,
            trial_end=trial_end,
        )
    )
    created.append(f"a Team trial for {account.name}")


# -- a dispute in progress (issue 11): Ada questions one seat on her latest paid invoice, and
# support's answer waits for her, so /disputes and the staff queue are not empty. -------------

DEMO_DISPUTE = (
    "We went from 5 seats to 4 at the start of this period (Charles left the team), but the "
    "invoice still charges for 5. Could you credit the seat we did not use?"
)
DEMO_REPLY = (
    "Thank you, Ada. Our records show 5 seats active until the 3rd of the period. Could you "
    "tell us on which day Charles's seat was removed, so we can credit the right amount?"
)


@contextmanager
def _as_of(moment: datetime) -> Iterator[None]:
    """Write history as of `moment` (the services stamp rows with the clock)."""
    previous = clock.set_source(lambda: moment)
    try:
        yield
    finally:
        clock.set_source(previous)


def _seed_dispute(session: Session, created: list[str]) -> None:
    from portal.audit.services import Actor
    from portal.disputes import services as disputes
    from portal.disputes.hours import BusinessHours
    from portal.disputes.models import Dispute, DisputeReason, DisputeStatus
    from portal.notifications.models import OutboxEmail

    account = session.scalar(select(Account).where(Account.invoice_prefix == "ALS"))
    support = session.scalar(select(User).where(User.email == STAFF[0][0]))
    if account is None or support is None:
        return
    if session.scalar(select(Dispute.id).where(Dispute.account_id == account.id).limit(1)):
        return  # NOTE: seeded once; Ada's later disputes (from the demo itself) are hers
    paid = session.scalars(
        select(Invoice)
        .where(Invoice.account_id == account.id, Invoice.status == "paid")
        .order_by(Invoice.issue_date.desc(), Invoice.id.desc())
        .limit(1)
    ).first()
    ada = session.scalar(select(User).where(User.email == account.billing_email))
    if paid is None or ada is None:
        return
    line = paid.lines[0]
    seat = Money(line.unit_amount_minor, paid.currency)
    now = clock.now()
    target = disputes.ResponseTarget(business_hours=BusinessHours(timezone=account.timezone))
    with _as_of(now - timedelta(days=2, hours=3)):
        dispute = disputes.open_dispute(
            session,
            account=account,
            invoice=paid,
            amount=seat + seat.basis_points(line.tax_rate_bp or 0),
            reason=DisputeReason.WRONG_AMOUNT.value,
            description=DEMO_DISPUTE,
            actor=Actor("customer", ada.id),
            target=target,
            line_ids=[line.id],
        )
    staff = Actor("staff", support.id)
    with _as_of(now - timedelta(days=1, hours=5)):
        dispute.assigned_to_user_id = support.id
        disputes.transition(session, dispute, DisputeStatus.IN_REVIEW, staff)
        disputes.add_message(session, dispute, body=DEMO_REPLY, actor=staff)
        disputes.transition(session, dispute, DisputeStatus.WAITING_ON_CUSTOMER, staff)
    # NOTE: the demo writes history; it does not send that history's emails.
    session.flush()
    session.execute(
        delete(OutboxEmail).where(
            OutboxEmail.account_id == account.id,
            OutboxEmail.template.in_(("dispute_received", "dispute_replied")),
            OutboxEmail.status == "pending",
        )
    )
    created.append(f"a dispute on {paid.number} waiting for {account.name}")
