"""The owner's payment objects for the authorization harness (made on first use)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect

from portal.extensions import db
from portal.payments.models import PaymentAttempt, PaymentAttemptItem, PaymentMethod


def _id(obj: Any) -> int:
    # NOTE: the identity survives the requests' commits (which expire and detach objects).
    return int(inspect(obj).identity[0])


def owner_card(world: Any) -> str:
    if "card" not in world.extra:
        session = db.session
        card = PaymentMethod(
            account_id=_id(world.account),
            stripe_payment_method_id=f"pm_auth_{_id(world.account)}",
            brand="visa",
            last4="4242",
            exp_month=12,
            exp_year=2031,
            is_default=False,
        )
        session.add(card)
        session.commit()
        world.extra["card"] = card.public_id
    return world.extra["card"]


def owner_attempt(world: Any) -> str:
    """A declined attempt: its pages answer without asking Stripe."""
    if "attempt" not in world.extra:
        session = db.session
        attempt = PaymentAttempt(
            account_id=_id(world.account),
            currency="USD",
            amount_minor=5000,
            status="failed",
            idempotency_key=f"pay_auth_{_id(world.account)}",
            failure_code="card_declined",
            failure_message="Your card was declined.",
            items=[
                PaymentAttemptItem(invoice_id=_id(world.invoice), amount_minor=5000, is_live=False)
            ],
        )
        session.add(attempt)
        session.commit()
        world.extra["attempt"] = attempt.public_id
    return world.extra["attempt"]
