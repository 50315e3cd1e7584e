"""Random sequences of plan and seat changes and billing runs keep the billing invariants, on
both databases:

- the lines of every invoice sum exactly to its total (and its totals add up);
- within a period, proration credits never exceed what was charged for it;
- the ledger: the account's balance row equals the sum of its entries, which equals what its
  invoices (nothing paid here) still owe.

Upgrades apply now with a proration invoice (the credit of the old price and the charge of the
new one, from portal.subscriptions.proration); downgrades and fewer seats are scheduled for the
period end and applied by the billing run.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import clock as portal_clock
from portal.billing import ledger
from portal.billing import services as billing
from portal.billing.issuing import issue_invoice
from portal.billing.models import Invoice, LedgerEntry, LineKind
from portal.subscriptions.billing_run import run_billing
from portal.subscriptions.models import Plan, Price, Subscription, SubscriptionChange, TaxRate
from portal.subscriptions.periods import local_midnight, period_end
from portal.subscriptions.pricing import charge_for
from portal.subscriptions.proration import ProrationKind, prorate
from tests.factories import SELLER, make_account

CURRENCIES = {"USD": [900, 1500, 2500], "JPY": [980, 2200, 3300], "KWD": [4500, 9000, 15500]}
ZONES = ["UTC", "America/New_York", "Asia/Tokyo"]

change = st.tuples(st.just("change"), st.integers(0, 2), st.integers(1, 12), st.integers(0, 10_000))
billing_day = st.tuples(st.just("run"), st.integers(1, 45), st.just(0), st.just(0))
scenario = st.fixed_dictionaries(
    {
        "currency": st.sampled_from(sorted(CURRENCIES)),
        "zone": st.sampled_from(ZONES),
        "tax": st.sampled_from([None, (1900, False), (1000, True)]),
        "start_day": st.integers(1, 31),
        "steps": st.lists(st.one_of(change, billing_day), min_size=1, max_size=7),
    }
)


def _setup(session: Session, spec: dict) -> tuple[Subscription, list[Price]]:
    currency, zone = spec["currency"], spec["zone"]
    account = make_account(session, currency, timezone=zone, country="US")
    rate = None
    if spec["tax"] is not None:
        rate = TaxRate(name="Tax", rate_bp=spec["tax"][0], inclusive=spec["tax"][1])
        session.add(rate)
        session.flush()
    prices = []
    for rank, amount in enumerate(CURRENCIES[currency]):
        plan = Plan(code=f"prop-{account.id}-{rank}", name=f"Plan {rank}", rank=rank)
        session.add(plan)
        session.flush()
        price = Price(
            plan_id=plan.id,
            currency=currency,
            pricing_model="per_unit",
            unit_amount_minor=amount,
            unit_label="seat",
            tax_rate_id=rate.id if rate else None,
        )
        session.add(price)
        prices.append(price)
    session.flush()
    day = date(2027, 1, min(spec["start_day"], 28))
    start = local_midnight(day, zone)
    end = period_end(start, "month", 1, zone)
    subscription = Subscription(
        account_id=account.id,
        price_id=prices[0].id,
        quantity=3,
        started_at=start,
        current_period_start=start,
        current_period_end=end,
    )
    session.add(subscription)
    session.flush()
    # The first period, billed when the subscription starts, through the same finalization.
    draft = billing.create_draft_invoice(
        session,
        account,
        [_line(prices[0], 3, LineKind.SUBSCRIPTION, charge_for(prices[0], 3).minor)],
        issue_date=day,
        subscription_id=subscription.id,
        billing_period_start=start,
    )
    issue_invoice(session, draft, seller=SELLER, when=start)
    session.commit()
    return subscription, prices


def _line(price: Price, quantity: int, kind: LineKind, amount: int) -> billing.LineInput:
    return billing.LineInput(
        description=f"{price.plan.name} ({quantity} seats)",
        kind=kind,
        quantity=quantity,
        unit_amount_minor=price.unit_amount_minor,
        amount_minor=amount,
        tax_rate=price.tax_rate,
        price_id=price.id,
    )


def _check_invoices(session: Session, account_id: int, currency: str) -> None:
    invoices = session.scalars(select(Invoice).where(Invoice.account_id == account_id)).all()
    for invoice in invoices:
        assert invoice.total_minor == sum(
            line.amount_minor + line.tax_minor for line in invoice.lines
        )
        assert invoice.total_minor == (
            invoice.subtotal_minor - invoice.discount_minor + invoice.tax_minor
        )
    entries = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0)).where(
            LedgerEntry.account_id == account_id
        )
    )
    assert ledger.balance(session, account_id, currency).minor == entries
    assert entries == sum(invoice.amount_due_minor for invoice in invoices)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=scenario)
def test_random_changes_and_runs_keep_the_invariants(session: Session, spec: dict) -> None:
    subscription, prices = _setup(session, spec)
    account = subscription.account
    zone = ZoneInfo(account.timezone)
    as_of = subscription.current_period_start.astimezone(zone).date()
    charged = {subscription.current_period_start: charge_for(prices[0], 3).minor}
    credited: dict[datetime, int] = {}
    previous = portal_clock.set_source(lambda: local_midnight(as_of, account.timezone))
    try:
        for op, a, b, c in spec["steps"]:
            session.refresh(subscription)
            if op == "run":
                as_of = as_of + timedelta(days=a)
                moment = local_midnight(as_of, account.timezone)
                portal_clock.set_source(lambda moment=moment: moment)
                run_billing(session, as_of, seller=SELLER)
                session.refresh(subscription)
                for invoice in session.scalars(
                    select(Invoice).where(
                        Invoice.subscription_id == subscription.id,
                        Invoice.billing_period_start.is_not(None),
                    )
                ):
                    key = invoice.billing_period_start
                    charged.setdefault(
                        key,
                        sum(
                            line.amount_minor + (line.tax_minor if line.tax_inclusive else 0)
                            for line in invoice.lines
                        ),
                    )
            else:
                _change(session, subscription, prices[a], b, c, charged, credited)
            _check_invoices(session, account.id, account.currency)
            for period, credit in credited.items():
                assert credit <= charged.get(period, 0), (period, credit, charged)
        # leave nothing due for the next example
        subscription.status = "canceled"
        session.commit()
    finally:
        portal_clock.set_source(previous)


def _change(
    session: Session,
    subscription: Subscription,
    price: Price,
    quantity: int,
    ten_thousandths: int,
    charged: dict[datetime, int],
    credited: dict[datetime, int],
) -> None:
    start, end = subscription.current_period_start, subscription.current_period_end
    if subscription.status != "active":
        return
    at = start + (end - start) * ten_thousandths // 10_000
    at = at.replace(microsecond=0)
    if at < portal_clock.now():
        at = max(portal_clock.now(), start)
    if at >= end:
        return
    old_price = subscription.price
    old = charge_for(old_price, subscription.quantity)
    new = charge_for(price, quantity)
    pending = session.scalar(
        select(SubscriptionChange).where(
            SubscriptionChange.subscription_id == subscription.id,
            SubscriptionChange.status == "scheduled",
        )
    )
    if pending is not None:
        pending.status, pending.withdrawn_at = "withdrawn", at
        session.flush()
    if new <= old:
        # a downgrade or fewer seats: at the period end, applied by the billing run
        session.add(
            SubscriptionChange(
                subscription_id=subscription.id,
                kind="plan",
                status="scheduled",
                timing="period_end",
                requested_at=at,
                effective_at=end,
                from_price_id=old_price.id,
                to_price_id=price.id,
                from_quantity=subscription.quantity,
                to_quantity=quantity,
            )
        )
        session.commit()
        return
    lines = prorate(
        old_price=old_price,
        old_quantity=subscription.quantity,
        new_price=price,
        new_quantity=quantity,
        period_start=start,
        period_end=end,
        at=at,
    )
    record = SubscriptionChange(
        subscription_id=subscription.id,
        kind="plan",
        status="applied",
        timing="now",
        requested_at=at,
        effective_at=at,
        applied_at=at,
        from_price_id=old_price.id,
        to_price_id=price.id,
        from_quantity=subscription.quantity,
        to_quantity=quantity,
    )
    session.add(record)
    session.flush()
    for line in lines:
        if line.kind == ProrationKind.CREDIT:
            credited[start] = credited.get(start, 0) - line.amount.minor
        else:
            charged[start] = charged.get(start, 0) + line.amount.minor
    if lines:
        draft = billing.create_draft_invoice(
            session,
            subscription.account,
            [
                billing.LineInput(
                    **{
                        **_line(
                            line.price, line.quantity, LineKind.PRORATION, line.amount.minor
                        ).__dict__,
                        "subscription_change_id": record.id,
                    }
                )
                for line in lines
            ],
            subscription_id=subscription.id,
        )
        invoice = issue_invoice(session, draft, seller=SELLER, when=at)
        record.invoice_id = invoice.id
    subscription.price_id, subscription.quantity = price.id, quantity
    subscription.bump_version()
    session.commit()
