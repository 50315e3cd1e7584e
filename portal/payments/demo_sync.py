"""Make the demo's saved cards real in the Stripe simulator: `flask --app wsgi portal
sync-demo-stripe`.

The demo seed stores a card (`pm_demo_…`) that no Stripe knows, and localstripe starts empty on
every `make demo` while the SQLite database persists. This creates a simulator customer for each
demo account whose customer is missing or unknown, and a real test card for each saved card whose
id is fake, unknown, or attached to another customer; the stored ids are replaced, with an audit
event. Running it again changes nothing. It refuses to run against real Stripe.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from portal.accounts.models import Account
from portal.audit.services import record
from portal.config import DEMO_STRIPE_SECRET_KEY
from portal.demo import CUSTOMERS
from portal.payments.gateway import Gateway
from portal.payments.models import PaymentMethod

DEMO_PREFIX = "pm_demo_"
# The simulator's test cards by their last four digits; any other card becomes a 4242 Visa.
TEST_CARDS = {
    "4242": "4242424242424242",
    "0341": "4000000000000341",
    "3184": "4000002760003184",
}
DEFAULT_TEST_CARD = TEST_CARDS["4242"]


class RealStripeRefused(Exception):
    """The configuration may point at real Stripe: the demo sync does not run there."""


def ensure_simulator(config: Mapping[str, Any]) -> None:
    """Raise RealStripeRefused unless the demo key is used or the API is not Stripe's own."""
    key = str(config.get("STRIPE_SECRET_KEY") or "")
    host = (urlsplit(str(config.get("STRIPE_API_BASE") or "")).hostname or "").lower()
    if "_live_" in key:
        raise RealStripeRefused("STRIPE_SECRET_KEY is a live key: the demo sync never uses one.")
    real_host = host == "stripe.com" or host.endswith(".stripe.com")
    if key == DEMO_STRIPE_SECRET_KEY or (host and not real_host):
        return
    raise RealStripeRefused(
        "This is not the demo's Stripe simulator (STRIPE_API_BASE points at Stripe and "
        "STRIPE_SECRET_KEY is not the demo key); nothing was changed."
    )


@dataclass
class SyncReport:
    customers: list[str] = field(default_factory=list)
    cards: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.customers or self.cards)

    def lines(self) -> list[str]:
        if not self.changed:
            return ["The demo's Stripe customers and cards are in the simulator; nothing changed."]
        return self.customers + self.cards


def demo_accounts(session: Session) -> list[Account]:
    """The seeded demo accounts, and any account holding a fake demo card."""
    prefixes = [customer.account["invoice_prefix"] for customer in CUSTOMERS]
    with_fake_card = select(PaymentMethod.account_id).where(
        PaymentMethod.stripe_payment_method_id.startswith(DEMO_PREFIX, autoescape=True)
    )
    return list(
        session.scalars(
            select(Account)
            .where(or_(Account.invoice_prefix.in_(prefixes), Account.id.in_(with_fake_card)))
            .order_by(Account.id)
        )
    )


def _key(what: str) -> str:
    # NOTE: a fresh key per creation: the simulator restarts empty, so an old key means nothing.
    return f"demo_sync_{what}_{secrets.token_urlsafe(12)}"


def _sync_customer(session: Session, gw: Gateway, account: Account, report: SyncReport) -> str:
    stored = account.stripe_customer_id
    if stored and gw.find_customer(stored):
        return stored
    customer = gw.create_customer(
        email=account.billing_email,
        name=account.name,
        account_ref=account.public_id,
        idempotency_key=_key("customer"),
    )
    account.stripe_customer_id = customer
    record(
        session,
        "payments.demo_customer_synced",
        account_id=account.id,
        target_type="account",
        target_id=account.public_id,
        before={"stripe_customer_id": stored},
        after={"stripe_customer_id": customer},
    )
    session.flush()
    why = "replaced unknown " + stored if stored else "created"
    report.customers.append(f"{account.name}: customer {customer} ({why})")
    return customer


def _sync_card(
    session: Session,
    gw: Gateway,
    account: Account,
    method: PaymentMethod,
    customer: str,
    report: SyncReport,
) -> None:
    stored = method.stripe_payment_method_id
    found = None if stored.startswith(DEMO_PREFIX) else gw.find_payment_method(stored)
    if found is not None and found.customer == customer:
        return
    if found is not None and found.customer is None:
        card = gw.attach_payment_method(found.id, customer=customer, idempotency_key=_key("attach"))
        why = "attached"
    else:
        created = gw.create_test_card(
            number=TEST_CARDS.get(method.last4, DEFAULT_TEST_CARD),
            exp_month=method.exp_month,
            exp_year=method.exp_year,
            idempotency_key=_key("card"),
        )
        card = gw.attach_payment_method(
            created.id, customer=customer, idempotency_key=_key("attach")
        )
        why = "replaced fake " if stored.startswith(DEMO_PREFIX) else "replaced unknown "
        why += stored
    before = {"stripe_payment_method_id": stored, "brand": method.brand, "last4": method.last4}
    method.stripe_payment_method_id = card.id
    method.brand, method.last4 = card.brand[:32], card.last4
    method.exp_month, method.exp_year = card.exp_month, card.exp_year
    record(
        session,
        "payments.demo_card_synced",
        account_id=account.id,
        target_type="payment_method",
        target_id=method.public_id,
        before=before,
        after={"stripe_payment_method_id": card.id, "brand": method.brand, "last4": method.last4},
    )
    session.flush()
    report.cards.append(f"{account.name}: card {card.id} ending {card.last4} ({why})")


def sync_demo_stripe(
    session: Session,
    gw: Gateway,
    config: Mapping[str, Any],
    *,
    commit: Callable[[], None],
) -> SyncReport:
    """Bring the demo accounts' Stripe customers and saved cards into the simulator.

    Each account's changes are committed (`commit`) as soon as the simulator holds its objects,
    so an interrupted run keeps what it did and the next run finishes the rest.
    """
    ensure_simulator(config)
    report = SyncReport()
    for account in demo_accounts(session):
        customer = _sync_customer(session, gw, account, report)
        methods = session.scalars(
            select(PaymentMethod)
            .where(PaymentMethod.account_id == account.id, PaymentMethod.detached_at.is_(None))
            .order_by(PaymentMethod.id)
        ).all()
        for method in methods:
            _sync_card(session, gw, account, method, customer, report)
        commit()
    return report
