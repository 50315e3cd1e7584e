"""One customer with one of everything an email can be about, and the context of every email
(shared by the email tests and scripts/render_emails.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from portal import clock
from portal.billing import services as billing
from portal.billing.money import Money
from portal.disputes.models import Dispute, DisputeMessage
from portal.notifications.models import OutboxEmail
from portal.notifications.queueing import render_pending
from portal.payments.models import PaymentMethod
from portal.subscriptions.models import Plan, Subscription
from tests.factories import make_account, make_invoice, make_price, make_user


def as_sent(session: Session, email: OutboxEmail) -> OutboxEmail:
    """The row with the bodies it is sent with: an email whose bodies are rendered when it is
    first sent (portal.notifications.queueing.render_pending) is rendered here, as the sender
    does."""
    render_pending(session, email)
    return email


class EmailWorld:
    def __init__(self, session: Session, **account: Any) -> None:
        fields: dict[str, Any] = {
            "name": "Ada Lovelace Studio",
            "billing_email": "ada@example.com",
            "locale": "en_US",
        }
        fields.update(account)
        self.account = make_account(session, **fields)
        self.user = make_user(session, email=self.account.billing_email, account=self.account)
        self.user.name = "Ada Lovelace"
        self.invoice = make_invoice(session, self.account, (4900, 2500))
        self.invoice.due_date = clock.today() + timedelta(days=3)
        self.overdue = make_invoice(
            session, self.account, (9900,), issue_date=clock.today() - timedelta(days=38)
        )
        self.overdue.due_date = clock.today() - timedelta(days=8)
        paid = make_invoice(session, self.account, (7500,))
        self.payment = billing.record_payment(
            session,
            self.account,
            Money(7500, self.account.currency),
            [(paid, Money(7500, self.account.currency))],
            received_at=clock.now(),
            method_description="Visa ending in 4242",
        )
        self.paid_invoice = paid
        self.method = PaymentMethod(
            account_id=self.account.id,
            stripe_payment_method_id=f"pm_world_{self.account.id}",
            brand="visa",
            last4="4242",
            exp_month=1,
            exp_year=2027,
            is_default=True,
        )
        session.add(self.method)
        plan = Plan(code=f"team-{self.account.id}", name="Team")
        price = make_price(
            session, currency=self.account.currency, flat_amount_minor=4900, plan=plan
        )
        start = datetime(2026, 11, 1, tzinfo=UTC)
        self.subscription = Subscription(
            account_id=self.account.id,
            price_id=price.id,
            quantity=5,
            status="active",
            current_period_start=start,
            current_period_end=start + timedelta(days=30),
            trial_end=start + timedelta(days=14),
            pause_until=start + timedelta(days=45),
        )
        session.add(self.subscription)
        self.dispute = Dispute(
            account_id=self.account.id,
            invoice_id=self.invoice.id,
            currency=self.account.currency,
            amount_minor=2500,
            reason="wrong_amount",
            description="We have 4 seats, not 5.",
            status="resolved",
            resolution="credit_note",
            resolution_note="You are right: we credited one seat.",
        )
        session.add(self.dispute)
        session.flush()
        self.message = DisputeMessage(
            dispute_id=self.dispute.id,
            author_kind="staff",
            body="Thank you. We are checking the seat count and will reply by Friday.",
            is_internal=False,
        )
        session.add(self.message)
        session.flush()

    def contexts(self) -> dict[str, dict[str, Any]]:
        """Each email's template name and the context its producer passes."""
        a = self.account
        subscription = {"account": a, "subscription": self.subscription, "change": None}
        dispute = {"account": a, "dispute": self.dispute, "message": None}
        return {
            "invoice_issued": {"account": a, "invoice": self.invoice},
            "receipt": {"account": a, "payment": self.payment, "invoices": [self.paid_invoice]},
            "payment_failed": {
                "account": a,
                "invoice": self.invoice,
                "reason": "Your card was declined: it does not have enough funds.",
                "next_retry_on": date(2026, 11, 24),
            },
            "action_required": {"account": a, "invoice": self.invoice},
            "card_expiring": {"account": a, "method": self.method},
            "reminder_before_due": {"account": a, "invoice": self.invoice},
            "reminder_after_due": {"account": a, "invoice": self.overdue},
            "subscription_changed": subscription,
            "subscription_canceled": subscription,
            "subscription_paused": subscription,
            "subscription_resuming": {**subscription, "resume_at": self.subscription.pause_until},
            "subscription_resumed": subscription,
            "trial_ending": subscription,
            "dispute_received": dispute,
            "dispute_replied": {**dispute, "message": self.message},
            "dispute_resolved": dispute,
        }
