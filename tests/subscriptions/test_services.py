"""The customer's subscription rules: preview, change (now or at renewal), the guards (allowed
targets, seat limits, overdue bills, stale forms, double submits), cancel and reactivate, pause
and resume, withdraw, the retention offer. Each writes history, an audit event and an email."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import clock as portal_clock
from portal.audit.models import AuditEvent
from portal.audit.services import Actor
from portal.billing.models import Invoice, InvoiceStatus
from portal.errors import Conflict, NotAllowed, NotFound
from portal.notifications.models import OutboxEmail
from portal.subscriptions import services
from portal.subscriptions.models import PlanTransition, SubscriptionChange
from tests.factories import SELLER, make_account, make_invoice
from tests.subscriptions.ladder import HALFWAY, PERIOD_END, customer_on_team

ACTOR = Actor(kind="customer", user_id=None)


@pytest.fixture()
def halfway(clock: portal_clock.FrozenClock) -> portal_clock.FrozenClock:
    clock.set(HALFWAY)
    return clock


def _change(session: Session, c: Any, **kwargs: Any) -> services.Outcome:
    options: dict[str, Any] = {
        "plan_code": c.ladder.plans["business"].code,
        "interval": "month",
        "quantity": None,
        "timing": None,
        "expected_version": c.subscription.version,
        "seller": SELLER,
        "actor": ACTOR,
    }
    options.update(kwargs)
    return services.change_subscription(session, c.account, c.subscription.public_id, **options)


def _count(session: Session, model: Any, *where: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_the_preview_shows_the_exact_proration_the_tax_and_the_next_invoice(
    session: Session, halfway: Any
) -> None:
    c = customer_on_team(session, quantity=1, tax_bp=1000)
    preview = services.preview_change(
        session, c.subscription, plan_code=c.ladder.plans["business"].code
    )
    assert preview.direction == "upgrade"
    assert preview.timing == "now" and preview.timing_choices == ("now", "period_end")
    # NOTE: 10.00 -> 20.00 at exactly half the period: a credit of 5.00 and a charge of 10.00.
    assert sorted(line.amount.minor for line in preview.due_now.lines) == [-500, 1000]
    assert preview.due_now.subtotal.minor == 500
    assert preview.due_now.tax.minor == 50
    assert preview.due_now.total.minor == 550
    assert preview.next_invoice.on == PERIOD_END
    assert preview.next_invoice.subtotal.minor == 2000
    assert preview.next_invoice.total.minor == 2200


def test_an_upgrade_applies_now_and_its_proration_is_invoiced(
    session: Session, halfway: Any
) -> None:
    c = customer_on_team(session)
    session.commit()
    before = _count(session, AuditEvent)
    outcome = _change(session, c)
    session.flush()
    assert outcome.change is not None and outcome.change.status == "applied"
    assert outcome.change.kind == "plan"
    invoice = outcome.invoice
    assert invoice is not None and invoice.status == InvoiceStatus.OPEN.value
    assert invoice.subscription_id == c.subscription.id
    assert invoice.total_minor == 2500  # 5 seats: -25.00 + 50.00
    assert sum(line.amount_minor + line.tax_minor for line in invoice.lines) == invoice.total_minor
    assert outcome.change.invoice_id == invoice.id
    assert c.subscription.price_id == c.ladder.prices[("business", "month")].id
    assert c.subscription.version == 2
    assert _count(session, AuditEvent) > before
    event = session.scalar(select(AuditEvent).where(AuditEvent.action == "subscription.changed"))
    assert event is not None and event.before["plan"] != event.after["plan"]
    email = session.scalar(
        select(OutboxEmail).where(
            OutboxEmail.template == "subscription_changed",
            OutboxEmail.account_id == c.account.id,
        )
    )
    assert email is not None and c.ladder.plans["business"].name in email.text_body


def test_a_downgrade_is_scheduled_for_the_period_end_and_can_be_withdrawn(
    session: Session, halfway: Any
) -> None:
    c = customer_on_team(session)
    session.commit()
    outcome = _change(session, c, plan_code=c.ladder.plans["starter"].code)
    change = outcome.change
    assert change is not None and change.status == "scheduled" and change.timing == "period_end"
    assert change.effective_at == PERIOD_END and outcome.invoice is None
    assert c.subscription.price_id == c.ladder.prices[("team", "month")].id
    services.withdraw_scheduled_change(
        session, c.account, c.subscription.public_id, expected_version=c.subscription.version
    )
    session.flush()
    assert change.status == "withdrawn" and change.withdrawn_at is not None
    assert session.scalar(
        select(OutboxEmail.id).where(OutboxEmail.template == "subscription_changed")
    )


def test_fewer_seats_wait_for_the_renewal_more_seats_apply_now(
    session: Session, halfway: Any
) -> None:
    c = customer_on_team(session)
    session.commit()
    team = c.ladder.plans["team"].code
    fewer = _change(session, c, plan_code=team, quantity=3)
    assert fewer.change is not None and fewer.change.kind == "quantity"
    assert fewer.change.status == "scheduled" and c.subscription.quantity == 5
    services.withdraw_scheduled_change(
        session, c.account, c.subscription.public_id, expected_version=c.subscription.version
    )
    more = _change(session, c, plan_code=team, quantity=7, expected_version=c.subscription.version)
    assert more.change is not None and more.change.status == "applied"
    assert c.subscription.quantity == 7
    assert more.invoice is not None and more.invoice.total_minor == 1000  # 2 seats, half a month


def test_a_new_billing_interval_starts_at_the_renewal(session: Session, halfway: Any) -> None:
    c = customer_on_team(session)
    session.commit()
    outcome = _change(session, c, plan_code=c.ladder.plans["team"].code, interval="year")
    assert outcome.change is not None and outcome.change.kind == "interval"
    assert outcome.change.status == "scheduled"


def test_an_upgrade_can_wait_for_the_renewal_when_the_customer_says_so(
    session: Session, halfway: Any
) -> None:
    c = customer_on_team(session)
    session.commit()
    outcome = _change(session, c, timing="period_end")
    assert outcome.change is not None and outcome.change.status == "scheduled"
    assert outcome.invoice is None


def test_only_allowed_targets(session: Session, halfway: Any) -> None:
    c = customer_on_team(session)
    session.execute(
        PlanTransition.__table__.delete().where(
            PlanTransition.from_plan_id == c.ladder.plans["team"].id,
            PlanTransition.to_plan_id == c.ladder.plans["business"].id,
        )
    )
    session.commit()
    with pytest.raises(services.ChangeRefused, match="cannot be changed to"):
        _change(session, c)
    assert _count(session, SubscriptionChange) == 0


def test_an_unknown_plan_is_refused(session: Session, halfway: Any) -> None:
    c = customer_on_team(session)
    session.commit()
    with pytest.raises(services.ChangeRefused, match="do not offer"):
        _change(session, c, plan_code="no-such-plan")


@pytest.mark.parametrize("seats", [0, 51, 10**12])
def test_seat_limits(session: Session, halfway: Any, seats: int) -> None:
    c = customer_on_team(session)
    session.commit()
    with pytest.raises(services.ChangeRefused):
        _change(session, c, quantity=seats)
    assert _count(session, SubscriptionChange) == 0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("-3", "negative"),
        ("0", "at least one"),
        ("abc", "not a number"),
        ("1e3", "not a number"),
        (str(10**12), "not a number"),
        ("20000", "more than we can"),
    ],
)
def test_typed_seat_counts_get_clear_messages(raw: str, message: str) -> None:
    with pytest.raises(services.ChangeRefused, match=message):
        services.parse_quantity(raw, default=1)


def test_no_change_while_an_invoice_is_overdue_beyond_the_grace_period(
    session: Session, halfway: Any
) -> None:
    c = customer_on_team(session)
    late = make_invoice(
        session, c.account, (1000,), issue_date=(HALFWAY - timedelta(days=60)).date()
    )
    late.subscription_id = c.subscription.id
    session.commit()
    with pytest.raises(services.ChangeRefused, match="overdue"):
        _change(session, c, grace_days=14)
    # Within the grace period the change goes through.
    _change(session, c, grace_days=60)


def test_a_stale_form_is_refused(session: Session, halfway: Any) -> None:
    c = customer_on_team(session)
    c.subscription.version = 4
    session.commit()
    with pytest.raises(services.StaleForm):
        _change(session, c, expected_version=3)
    assert _count(session, SubscriptionChange) == 0


def test_a_double_submit_makes_one_change(session: Session, halfway: Any) -> None:
    c = customer_on_team(session)
    session.commit()
    first = _change(session, c, expected_version=1)
    session.commit()
    second = _change(session, c, expected_version=1)
    assert second.duplicate and second.change is not None and first.change is not None
    assert second.change.id == first.change.id
    assert _count(session, SubscriptionChange) == 1
    assert _count(session, Invoice, Invoice.subscription_id == c.subscription.id) == 1


def test_another_accounts_subscription_is_not_found(session: Session, halfway: Any) -> None:
    c = customer_on_team(session)
    other = make_account(session)
    session.commit()
    with pytest.raises(NotFound):
        services.change_subscription(
            session,
            other,
            c.subscription.public_id,
            plan_code=None,
            interval=None,
            quantity=None,
            timing=None,
            expected_version=1,
            seller=SELLER,
        )


def test_cancel_at_the_period_end_then_reactivate(session: Session, halfway: Any) -> None:
    c = customer_on_team(session)
    session.commit()
    outcome = services.cancel_subscription(
        session,
        c.account,
        c.subscription.public_id,
        reason="too_expensive",
        reason_text="Budget cut",
        expected_version=1,
        actor=ACTOR,
    )
    assert outcome.change is not None and outcome.change.status == "scheduled"
    assert outcome.change.reason == "too_expensive" and outcome.change.reason_text == "Budget cut"
    assert c.subscription.cancel_at_period_end and c.subscription.status == "active"
    kept = services.reactivate(
        session, c.account, c.subscription.public_id, expected_version=c.subscription.version
    )
    assert kept.change is not None and kept.change.kind == "reactivate"
    assert outcome.change.status == "withdrawn" and not c.subscription.cancel_at_period_end
    session.flush()
    templates = set(session.scalars(select(OutboxEmail.template)))
    assert {"subscription_canceled", "subscription_resumed"} <= templates


def test_cancel_now_only_where_the_plan_allows_it(session: Session, halfway: Any) -> None:
    c = customer_on_team(session)
    session.commit()
    with pytest.raises(NotAllowed):
        services.cancel_subscription(
            session,
            c.account,
            c.subscription.public_id,
            when="now",
            reason="other",
            expected_version=1,
        )
    c.ladder.plans["team"].allows_cancel_now = True
    session.commit()
    services.cancel_subscription(
        session,
        c.account,
        c.subscription.public_id,
        when="now",
        reason="other",
        expected_version=1,
    )
    assert c.subscription.status == "canceled" and c.subscription.canceled_at == HALFWAY


def test_a_cancel_needs_a_reason_from_the_list(session: Session, halfway: Any) -> None:
    c = customer_on_team(session)
    session.commit()
    with pytest.raises(services.ValidationFailed):
        services.cancel_subscription(
            session, c.account, c.subscription.public_id, reason="because", expected_version=1
        )


def test_a_pause_is_scheduled_for_the_period_end_and_can_be_withdrawn(
    session: Session, halfway: portal_clock.FrozenClock
) -> None:
    c = customer_on_team(session)
    session.commit()
    resume_on = (PERIOD_END + timedelta(days=30)).date()
    outcome = services.pause(
        session, c.account, c.subscription.public_id, resume_on=resume_on, expected_version=1
    )
    change = outcome.change
    assert change is not None and change.kind == "pause" and change.status == "scheduled"
    assert change.effective_at == PERIOD_END and change.resume_at is not None
    assert c.subscription.status == "active"  # the paid period runs to its end
    # One scheduled change at a time: a downgrade waits until the pause is withdrawn.
    with pytest.raises(Conflict):
        _change(
            session,
            c,
            plan_code=c.ladder.plans["starter"].code,
            expected_version=c.subscription.version,
        )
    services.withdraw_scheduled_change(
        session, c.account, c.subscription.public_id, expected_version=c.subscription.version
    )
    assert change.status == "withdrawn"
    assert session.scalar(
        select(OutboxEmail.id).where(OutboxEmail.template == "subscription_paused")
    )


def test_a_paused_subscription_resumes_early_with_a_new_billed_period(
    session: Session, halfway: portal_clock.FrozenClock
) -> None:
    from portal.subscriptions.billing_run import bill_due_periods

    c = customer_on_team(session)
    session.commit()
    services.pause(
        session,
        c.account,
        c.subscription.public_id,
        resume_on=(PERIOD_END + timedelta(days=30)).date(),
        expected_version=1,
    )
    # The billing run at the period end applies the pause: no invoice while paused.
    halfway.set(PERIOD_END + timedelta(days=2))
    bill_due_periods(
        session, c.subscription, (PERIOD_END + timedelta(days=2)).date(), seller=SELLER
    )
    session.commit()
    assert c.subscription.status == "paused"
    with pytest.raises(Conflict):
        _change(session, c, expected_version=c.subscription.version)
    halfway.advance(days=8)
    outcome = services.resume(
        session,
        c.account,
        c.subscription.public_id,
        expected_version=c.subscription.version,
        seller=SELLER,
    )
    assert c.subscription.status == "active" and c.subscription.pause_until is None
    assert c.subscription.current_period_start == PERIOD_END + timedelta(days=10)
    assert outcome.change is not None and outcome.change.status == "applied"
    assert outcome.invoice is not None and outcome.invoice.total_minor == 5000
    with pytest.raises(Conflict):
        services.resume(
            session,
            c.account,
            c.subscription.public_id,
            expected_version=c.subscription.version,
            seller=SELLER,
        )


def test_a_pause_is_limited_to_the_plans_maximum(session: Session, halfway: Any) -> None:
    c = customer_on_team(session)
    starts = PERIOD_END.date()
    plan = c.ladder.plans["team"]
    with pytest.raises(services.ValidationFailed, match="at most"):
        services.parse_resume_on(
            (starts + timedelta(days=91)).isoformat(), starts_on=starts, plan=plan
        )
    with pytest.raises(services.ValidationFailed):
        services.parse_resume_on("tomorrow", starts_on=starts, plan=plan)
    with pytest.raises(services.ValidationFailed, match="begins on"):
        services.parse_resume_on(starts.isoformat(), starts_on=starts, plan=plan)
    assert services.parse_resume_on(
        (starts + timedelta(days=90)).isoformat(), starts_on=starts, plan=plan
    ) == starts + timedelta(days=90)


def test_the_retention_offer_once(session: Session, halfway: Any) -> None:
    c = customer_on_team(session)
    session.commit()
    assert services.retention_offer(c.subscription) == (2000, 3)
    services.accept_retention_offer(
        session, c.account, c.subscription.public_id, expected_version=1
    )
    assert (c.subscription.discount_bp, c.subscription.discount_periods_left) == (2000, 3)
    assert services.retention_offer(c.subscription) is None
    preview = services.next_regular_invoice(c.subscription)
    assert preview.subtotal.minor == 5000 - 1000


def test_a_trial_changes_now_at_no_charge(session: Session, halfway: Any) -> None:
    c = customer_on_team(session)
    c.subscription.status = "trialing"
    c.subscription.trial_end = PERIOD_END
    session.commit()
    outcome = _change(session, c)
    assert outcome.change is not None and outcome.change.status == "applied"
    assert outcome.invoice is None
