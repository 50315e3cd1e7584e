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
from tests.subscriptions.ladder import HALFWAY, PERIOD_END, PERIOD_START, customer_on_team

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


# -- the retention offer in the history (issue 10 gaps) -------------------------------------------


def test_taking_the_retention_offer_is_a_change_in_the_history(
    session: Session, halfway: Any
) -> None:
    c = customer_on_team(session)
    session.commit()
    outcome = services.accept_retention_offer(
        session, c.account, c.subscription.public_id, expected_version=1, actor=ACTOR
    )
    change = outcome.change
    assert change is not None and change.kind == "discount" and change.status == "applied"
    assert change.discount_terms == (2000, 3)
    assert change.actor_kind == "customer" and change.applied_at == HALFWAY
    session.commit()  # the CHECK of migration 0009 accepts the new kind on both databases
    event = session.scalar(
        select(AuditEvent).where(AuditEvent.action == "subscription.discount_accepted")
    )
    assert event is not None and event.after["change_id"] == change.id
    [email] = session.scalars(select(OutboxEmail).where(OutboxEmail.account_id == c.account.id))
    assert "20% off your next 3 invoices" in email.text_body
    assert "20% off your next 3 invoices" in email.html_body
    assert "is now on the" not in email.text_body
    # A double tap (the first tap moved the version on) is the same change, not a second one.
    again = services.accept_retention_offer(
        session, c.account, c.subscription.public_id, expected_version=1, actor=ACTOR
    )
    assert again.duplicate and again.change is not None and again.change.id == change.id
    assert _count(session, SubscriptionChange, SubscriptionChange.kind == "discount") == 1


def test_the_retention_offer_is_not_offered_again_once_its_discount_has_run_out(
    session: Session, halfway: Any
) -> None:
    c = customer_on_team(session)
    session.commit()
    services.accept_retention_offer(
        session, c.account, c.subscription.public_id, expected_version=1
    )
    # The billing run used the three discounted invoices up.
    c.subscription.discount_bp, c.subscription.discount_periods_left = 0, 0
    session.commit()
    session.expire_all()
    assert services.retention_offer(c.subscription) is None
    with pytest.raises(Conflict, match="not available"):
        services.accept_retention_offer(
            session,
            c.account,
            c.subscription.public_id,
            expected_version=c.subscription.version,
        )


# -- the cheaper plan, one tap --------------------------------------------------------------------


def test_the_cheaper_alternative_is_previewed_per_the_plans_rules(
    session: Session, halfway: Any
) -> None:
    c = customer_on_team(session)  # Team, 5 seats: 50.00 a month
    option = services.cheaper_option(session, c.subscription)
    assert option is not None and option.price.id == c.ladder.prices[("starter", "month")].id
    # NOTE: a downgrade starts at the renewal: nothing due now, the next invoice is Starter's.
    assert option.preview.timing == "period_end" and not option.preview.due_now.lines
    assert option.preview.next_invoice.on == PERIOD_END
    assert option.preview.next_invoice.total.minor == 2900
    assert option.current_next.total.minor == 5000
    assert option.saving.minor == 2100
    # With a change already waiting for the renewal there is nothing to offer in one tap.
    _change(session, c, plan_code=c.ladder.plans["starter"].code)
    assert services.cheaper_option(session, c.subscription) is None


# -- canceling now credits the unused time --------------------------------------------------------

NOVEMBER = (PERIOD_END - HALFWAY) * 2  # 30 days


def _bill_period(
    session: Session,
    c: Any,
    *,
    discount_bp: int = 0,
    paid: bool = True,
) -> Invoice:
    """The period's invoice as the billing run makes it: the plan for the period in advance (and
    a discount line when given), finalized, paid unless told otherwise."""
    from portal.billing import services as billing
    from portal.billing.money import Money
    from portal.billing.tax import rate_for

    s = c.subscription
    price = s.price
    amount = services.period_charge(price, s.quantity).minor
    rate = rate_for(price, c.account.country)
    lines = [
        billing.LineInput(
            description=f"{price.plan.name} plan",
            unit_amount_minor=amount,
            amount_minor=amount,
            period_start=s.current_period_start.date(),
            period_end=s.current_period_end.date(),
            tax_rate=rate,
            price_id=price.id,
        )
    ]
    if discount_bp:
        off = Money(amount, price.currency).basis_points(discount_bp).minor
        lines.append(
            billing.LineInput(
                description="Discount",
                kind=billing.LineKind.DISCOUNT,
                unit_amount_minor=-off,
                amount_minor=-off,
                period_start=s.current_period_start.date(),
                period_end=s.current_period_end.date(),
                tax_rate=rate,
                price_id=price.id,
            )
        )
    draft = billing.create_draft_invoice(
        session,
        c.account,
        lines,
        issue_date=s.current_period_start.date(),
        subscription_id=s.id,
        billing_key=f"sub:{s.id}:test",
        billing_period_start=s.current_period_start,
    )
    invoice = billing.finalize_invoice(session, draft, seller=SELLER)
    if paid:
        billing.record_payment(
            session,
            c.account,
            invoice.total,
            [(invoice, invoice.total)],
            received_at=s.current_period_start,
        )
    session.flush()
    return invoice


def _on_starter(session: Session, currency: str = "USD", **ladder: Any) -> Any:
    c = customer_on_team(session, currency, **ladder)
    c.subscription.price = c.ladder.prices[("starter", "month")]  # 29.00 flat, may end now
    c.subscription.quantity = 1
    session.flush()
    return c


# (case, currency, tax basis points, seconds into the 30-day period, discount, credit in minor)
CREDIT_TABLE = [
    ("half the period", "USD", 0, NOVEMBER // 2, 0, 1450),
    ("the first second", "USD", 0, 0, 0, 2900),
    ("one second in", "USD", 0, 1, 0, 2900),  # 2899.9989 rounds up
    ("the last second", "USD", 0, NOVEMBER.total_seconds() - 1, 0, None),  # 0.0011: nothing
    ("a third in, JPY", "JPY", 0, NOVEMBER // 3, 0, 1933),  # ¥2,900 x 20/30 = 1,933.33
    ("half, 20% VAT on top", "USD", 2000, NOVEMBER // 2, 0, 1740),  # 34.80 / 2
    ("half, after a 20% discount", "USD", 0, NOVEMBER // 2, 2000, 1160),  # 23.20 / 2
    ("12 days left", "USD", 0, NOVEMBER - timedelta(days=12), 0, 1160),  # 29.00 x 12/30
]


@pytest.mark.parametrize(
    ("currency", "tax_bp", "into", "discount_bp", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in CREDIT_TABLE],
)
def test_the_credit_for_unused_time_is_exact(
    session: Session,
    clock: portal_clock.FrozenClock,
    currency: str,
    tax_bp: int,
    into: Any,
    discount_bp: int,
    expected: int | None,
) -> None:
    c = _on_starter(session, currency, tax_bp=tax_bp)
    _bill_period(session, c, discount_bp=discount_bp)
    seconds = into if isinstance(into, int | float) else into.total_seconds()
    at = c.subscription.current_period_start + timedelta(seconds=int(seconds))
    credit = services.unused_time_credit(session, c.subscription, at)
    if expected is None:
        assert credit is None
        return
    assert credit is not None and credit.amount.minor == expected
    assert credit.amount.currency == currency
    assert credit.seconds == int((PERIOD_END - at).total_seconds())


def test_the_credit_after_an_upgrade_is_that_of_the_plan_on_now(
    session: Session, halfway: Any, clock: portal_clock.FrozenClock
) -> None:
    c = customer_on_team(session)  # 5 seats: Team 50.00, Business 100.00 a month
    c.ladder.plans["business"].allows_cancel_now = True
    _bill_period(session, c)
    session.commit()
    upgrade = _change(session, c)  # at half the period: an invoice of -25.00 + 50.00
    assert upgrade.invoice is not None and upgrade.invoice.total_minor == 2500
    at = HALFWAY + (PERIOD_END - HALFWAY) / 2  # three quarters in: 7.5 days left
    credit = services.unused_time_credit(session, c.subscription, at)
    assert credit is not None
    # 50.00 x 7.5/30 from the period's invoice, (-25.00 + 50.00) x 7.5/15 from the upgrade's:
    # 25.00, Business's own 100.00 x 7.5/30.
    assert [amount.minor for _invoice, amount in credit.parts] == [1250, 1250]
    assert credit.amount.minor == 2500


def test_the_credit_never_exceeds_what_is_left_to_credit_on_the_invoice(
    session: Session, clock: portal_clock.FrozenClock
) -> None:
    from portal.billing import services as billing
    from portal.billing.models import CreditNoteReason
    from portal.billing.money import Money

    c = _on_starter(session)
    invoice = _bill_period(session, c)
    billing.issue_credit_note(
        session, invoice, Money(2000, "USD"), reason=CreditNoteReason.GOODWILL.value
    )
    credit = services.unused_time_credit(
        session, c.subscription, c.subscription.current_period_start
    )
    assert credit is not None and credit.amount.minor == 900  # 29.00 less the 20.00 given


def test_no_credit_without_an_invoice_for_the_period_or_once_it_is_void(
    session: Session, halfway: Any
) -> None:
    from portal.billing import services as billing

    c = _on_starter(session)
    assert services.unused_time_credit(session, c.subscription) is None
    invoice = _bill_period(session, c, paid=False)
    billing.void_invoice(session, invoice)
    assert services.unused_time_credit(session, c.subscription) is None


def test_canceling_now_issues_the_credit_note_and_audits_it(session: Session, halfway: Any) -> None:
    from portal.billing import ledger
    from portal.billing.models import CreditNote

    c = _on_starter(session)
    invoice = _bill_period(session, c)
    session.commit()
    assert ledger.balance(session, c.account.id, "USD").minor == 0
    outcome = services.cancel_subscription(
        session,
        c.account,
        c.subscription.public_id,
        when="now",
        reason="not_using",
        expected_version=c.subscription.version,
        actor=ACTOR,
    )
    assert outcome.credit is not None and outcome.credit.amount.minor == 1450
    assert c.subscription.status == "canceled"
    note = session.scalar(select(CreditNote).where(CreditNote.invoice_id == invoice.id))
    assert note is not None and note.amount_minor == 1450 and note.reason == "order_change"
    assert note.lines[0].description.startswith("Unused time on Starter")
    assert outcome.change is not None and outcome.change.invoice_id == invoice.id
    # NOTE: the invoice was paid: the credit is the customer's, a balance below zero.
    assert ledger.balance(session, c.account.id, "USD").minor == -1450
    event = session.scalar(
        select(AuditEvent).where(AuditEvent.action == "subscription.unused_time_credited")
    )
    assert event is not None and event.after["amount_minor"] == 1450
    assert event.after["credit_notes"] == [note.number]
    email = session.scalar(
        select(OutboxEmail).where(OutboxEmail.template == "subscription_canceled")
    )
    assert email is not None
    assert "We credited $14.50 for the unused time" in email.text_body
    assert "We credited $14.50 for the unused time" in email.html_body
    session.commit()
    # A double tap is the same cancel: no second credit note.
    again = services.cancel_subscription(
        session,
        c.account,
        c.subscription.public_id,
        when="now",
        reason="not_using",
        expected_version=1,
        actor=ACTOR,
    )
    assert again.duplicate
    assert _count(session, CreditNote, CreditNote.invoice_id == invoice.id) == 1


def test_canceling_now_an_unpaid_period_lowers_what_is_due(session: Session, halfway: Any) -> None:
    c = _on_starter(session)
    invoice = _bill_period(session, c, paid=False)
    services.cancel_subscription(
        session,
        c.account,
        c.subscription.public_id,
        when="now",
        reason="other",
        expected_version=c.subscription.version,
    )
    assert invoice.amount_due_minor == 2900 - 1450


def test_canceling_at_the_period_end_gives_no_credit(session: Session, halfway: Any) -> None:
    from portal.billing.models import CreditNote

    c = _on_starter(session)
    _bill_period(session, c)
    outcome = services.cancel_subscription(
        session,
        c.account,
        c.subscription.public_id,
        when="period_end",
        reason="other",
        expected_version=c.subscription.version,
    )
    assert outcome.credit is None
    assert _count(session, CreditNote, CreditNote.account_id == c.account.id) == 0


def test_the_invoice_of_the_billing_run_is_the_one_credited(
    session: Session, clock: portal_clock.FrozenClock
) -> None:
    from portal.subscriptions.billing_run import bill_due_periods

    c = _on_starter(session)
    s = c.subscription
    # October's period ends on November 1st: the billing run bills November in advance.
    s.current_period_start, s.current_period_end = PERIOD_START - timedelta(days=31), PERIOD_START
    clock.set(PERIOD_START)
    session.flush()
    billed = bill_due_periods(session, s, PERIOD_START.date(), seller=SELLER)
    assert billed.invoices and s.current_period_end == PERIOD_END
    credit = services.unused_time_credit(session, s, HALFWAY)
    assert credit is not None and credit.parts[0][0].id == billed.invoices[0].id
    assert credit.amount.minor == 1450


def test_proration_lines_are_stored_in_the_accounts_language(
    session: Session, halfway: Any
) -> None:
    from flask_babel import force_locale

    c = customer_on_team(session)
    session.commit()
    calls: list[str] = []
    real = services.proration_description

    def spy(*args: Any, **kwargs: Any) -> str:
        from flask_babel import get_locale

        calls.append(str(get_locale()))
        return real(*args, **kwargs)

    c.account.locale = "en_GB"
    services.proration_description = spy  # type: ignore[assignment]
    try:
        with force_locale("de"):
            outcome = _change(session, c)
    finally:
        services.proration_description = real  # type: ignore[assignment]
    assert outcome.invoice is not None
    # The stored lines were described under the account's language, not the page's "de".
    assert calls and all(locale == "en" for locale in calls[-2:])
    words = sorted(line.description for line in outcome.invoice.lines)
    assert words == ["Remaining time on Business, 5 seats", "Unused time on Team, 5 seats"]


def test_no_one_tap_cheaper_plan_while_a_bill_is_overdue(session: Session, halfway: Any) -> None:
    c = customer_on_team(session)
    late = make_invoice(
        session, c.account, (1000,), issue_date=(HALFWAY - timedelta(days=60)).date()
    )
    late.subscription_id = c.subscription.id
    session.flush()
    assert services.cheaper_option(session, c.subscription, grace_days=14) is None
    assert services.cheaper_option(session, c.subscription, grace_days=60) is not None


def test_the_credit_counts_real_seconds_across_a_daylight_saving_change(
    session: Session, clock: portal_clock.FrozenClock
) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    new_york = ZoneInfo("America/New_York")
    account = make_account(session, timezone="America/New_York")
    c = customer_on_team(session, account=account)
    s = c.subscription
    s.price, s.quantity = c.ladder.prices[("starter", "month")], 1
    # November in New York: clocks go back an hour on the 1st, so it lasts 30 days and 1 hour.
    s.current_period_start = datetime(2026, 11, 1, tzinfo=new_york)
    s.current_period_end = datetime(2026, 12, 1, tzinfo=new_york)
    session.flush()
    _bill_period(session, c)
    credit = services.unused_time_credit(session, s, datetime(2026, 11, 16, tzinfo=new_york))
    # 29.00 x 15 days / (30 days + 1 hour) = 14.4799...: 14.48, not the 14.50 of a naive half.
    assert credit is not None and credit.amount.minor == 1448
