"""Make the demo's saved cards real in the Stripe simulator: `flask --app wsgi portal
sync-demo-stripe`.

The demo seed stores a card (`pm_demo_…`) that no Stripe knows, and localstripe starts empty on
every `make demo` while the SQLite database persists. `portal seed-demo` runs it whenever the
settings name a simulator (`simulator_configured`), so the seeded card works there at once;
`portal sync-demo-stripe` runs it alone, for operators. This creates a simulator customer for each
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
from portal.db import begin_write
from portal.demo import CUSTOMERS
from portal.payments.gateway import Card, Gateway
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


def _api_host(config: Mapping[str, Any]) -> str:
    return (urlsplit(str(config.get("STRIPE_API_BASE") or "")).hostname or "").lower()


def _is_stripes_own(host: str) -> bool:
    return host == "stripe.com" or host.endswith(".stripe.com")


def simulator_configured(config: Mapping[str, Any]) -> bool:
    """True when STRIPE_API_BASE names a host that is not Stripe's own (a local simulator)."""
    host = _api_host(config)
    return bool(host) and not _is_stripes_own(host)


def ensure_simulator(config: Mapping[str, Any]) -> None:
    """Raise RealStripeRefused unless the demo key is used or the API is not Stripe's own."""
    key = str(config.get("STRIPE_SECRET_KEY") or "")
    if "_live_" in key:
        raise RealStripeRefused("STRIPE_SECRET_KEY is a live key: the demo sync never uses one.")
    if key == DEMO_STRIPE_SECRET_KEY or simulator_configured(config):
        return
    raise RealStripeRefused(
        "This is not the demo's Stripe simulator (STRIPE_API_BASE points at Stripe and "
        "STRIPE_SECRET_KEY is not the demo key); nothing was changed."
    )


@dataclass
class SyncReport:
    customers: list[str] = field(default_factory=list)
    cards: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.customers or self.cards)

    def lines(self) -> list[str]:
        if not self.changed and not self.skipped:
            return ["The demo's Stripe customers and cards are in the simulator; nothing changed."]
        return self.customers + self.cards + self.skipped


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


@dataclass(frozen=True)
class _SavedCard:
    """A saved card as read before any call to the simulator."""

    id: int
    public_id: str
    stripe_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class _DemoAccount:
    """A demo account as read before any call to the simulator."""

    id: int
    public_id: str
    name: str
    email: str
    customer: str | None
    cards: tuple[_SavedCard, ...]


def _read(session: Session, account: Account) -> _DemoAccount:
    methods = session.scalars(
        select(PaymentMethod)
        .where(PaymentMethod.account_id == account.id, PaymentMethod.detached_at.is_(None))
        .order_by(PaymentMethod.id)
    ).all()
    return _DemoAccount(
        id=account.id,
        public_id=account.public_id,
        name=account.name,
        email=account.billing_email,
        customer=account.stripe_customer_id,
        cards=tuple(
            _SavedCard(
                m.id,
                m.public_id,
                m.stripe_payment_method_id,
                m.brand,
                m.last4,
                m.exp_month,
                m.exp_year,
            )
            for m in methods
        ),
    )


def _customer_in_stripe(gw: Gateway, account: _DemoAccount) -> str:
    """The account's customer in the simulator: the stored one if it knows it, else a new one."""
    if account.customer and gw.find_customer(account.customer):
        return account.customer
    return gw.create_customer(
        email=account.email,
        name=account.name,
        account_ref=account.public_id,
        idempotency_key=_key("customer"),
    )


def _card_in_stripe(gw: Gateway, card: _SavedCard, customer: str) -> tuple[Card, str] | None:
    """None when the stored card is the customer's in the simulator; else the card that
    replaces it and why."""
    stored = card.stripe_id
    found = None if stored.startswith(DEMO_PREFIX) else gw.find_payment_method(stored)
    if found is not None and found.customer == customer:
        return None
    if found is not None and found.customer is None:
        attached = gw.attach_payment_method(
            found.id, customer=customer, idempotency_key=_key("attach")
        )
        return attached, "attached"
    created = gw.create_test_card(
        number=TEST_CARDS.get(card.last4, DEFAULT_TEST_CARD),
        exp_month=card.exp_month,
        exp_year=card.exp_year,
        idempotency_key=_key("card"),
    )
    attached = gw.attach_payment_method(
        created.id, customer=customer, idempotency_key=_key("attach")
    )
    why = "replaced fake " if stored.startswith(DEMO_PREFIX) else "replaced unknown "
    return attached, why + stored


def _apply_customer(
    session: Session, seen: _DemoAccount, customer: str, report: SyncReport
) -> bool:
    """Store the customer; False when someone else changed the account meanwhile."""
    account = session.get(Account, seen.id)
    if account is None or account.stripe_customer_id != seen.customer:
        report.skipped.append(f"{seen.name}: changed meanwhile, left as it is")
        return False
    if customer == seen.customer:
        return True
    account.stripe_customer_id = customer
    record(
        session,
        "payments.demo_customer_synced",
        account_id=account.id,
        target_type="account",
        target_id=account.public_id,
        before={"stripe_customer_id": seen.customer},
        after={"stripe_customer_id": customer},
    )
    why = "replaced unknown " + seen.customer if seen.customer else "created"
    report.customers.append(f"{seen.name}: customer {customer} ({why})")
    return True


def _apply_card(
    session: Session,
    seen: _DemoAccount,
    card: _SavedCard,
    replacement: tuple[Card, str],
    report: SyncReport,
) -> None:
    method = session.get(PaymentMethod, card.id)
    if method is None or method.stripe_payment_method_id != card.stripe_id:
        report.skipped.append(f"{seen.name}: card {card.stripe_id} changed meanwhile")
        return
    details, why = replacement
    before = {"stripe_payment_method_id": card.stripe_id, "brand": card.brand, "last4": card.last4}
    method.stripe_payment_method_id = details.id
    method.brand, method.last4 = details.brand[:32], details.last4
    method.exp_month, method.exp_year = details.exp_month, details.exp_year
    record(
        session,
        "payments.demo_card_synced",
        account_id=seen.id,
        target_type="payment_method",
        target_id=card.public_id,
        before=before,
        after={
            "stripe_payment_method_id": details.id,
            "brand": method.brand,
            "last4": method.last4,
        },
    )
    report.cards.append(f"{seen.name}: card {details.id} ending {details.last4} ({why})")


def sync_demo_stripe(
    session: Session,
    gw: Gateway,
    config: Mapping[str, Any],
    *,
    commit: Callable[[], None],
) -> SyncReport:
    """Bring the demo accounts' Stripe customers and saved cards into the simulator.

    Per account: read what is stored, end that read, ask the simulator (creating what it lacks),
    then write in a transaction of its own (`begin_write`) and `commit`, so an interrupted run
    keeps what it did and the next run finishes the rest.
    """
    ensure_simulator(config)
    report = SyncReport()
    accounts = [_read(session, account) for account in demo_accounts(session)]
    # NOTE: no transaction stays open across the simulator's calls, and the writes begin as a
    # writer: a read transaction that writes after a webhook's commit fails at once on SQLite.
    commit()
    for seen in accounts:
        customer = _customer_in_stripe(gw, seen)
        cards = [(card, _card_in_stripe(gw, card, customer)) for card in seen.cards]
        begin_write(session)
        if _apply_customer(session, seen, customer, report):
            for card, replacement in cards:
                if replacement is not None:
                    _apply_card(session, seen, card, replacement, report)
        session.flush()
        commit()
    return report
