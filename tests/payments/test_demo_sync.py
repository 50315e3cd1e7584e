"""`portal sync-demo-stripe`: the demo's saved card becomes a real card in localstripe, stale ids
are repaired, a second run changes nothing, and real Stripe is refused."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.accounts.models import Account
from portal.audit.models import AuditEvent
from portal.billing.models import InvoiceStatus
from portal.config import DEMO_STRIPE_SECRET_KEY
from portal.demo import seed_demo
from portal.payments import services
from portal.payments.demo_sync import RealStripeRefused, ensure_simulator, sync_demo_stripe
from portal.payments.gateway import Gateway
from portal.payments.models import Payment, PaymentMethod
from tests.payments.conftest import gateway_for, stripe_config
from tests.payments.fault_proxy import FaultProxy

SELLER = {"name": "Seller Ltd.", "address": "1 Street", "tax_id": "X1", "email": "s@example.com"}
SYNC_ACTIONS = ("payments.demo_customer_synced", "payments.demo_card_synced")


def _ada(session: Session) -> Account:
    account = session.scalar(select(Account).where(Account.invoice_prefix == "ALS"))
    assert account is not None
    return account


def _default_card(session: Session, account: Account) -> PaymentMethod:
    cards = services.active_cards(session, account)
    assert cards and cards[0].is_default
    return cards[0]


def _sync_events(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action.in_(SYNC_ACTIONS))
        )
        or 0
    )


def _sync(session: Session, gw: Gateway, proxy: FaultProxy) -> Any:
    return sync_demo_stripe(session, gw, stripe_config(proxy.url), commit=session.commit)


def _pay_als_0011_with_default_card(session: Session, gw: Gateway) -> None:
    account = _ada(session)
    card = _default_card(session, account)
    customer = services.ensure_customer(session, account, gw, session.commit)
    services.begin_locked_write(session)
    invoices = services.lock_invoices(session, account, ["ALS-0011"])
    started = services.start_payment(session, account, invoices, payment_method=card)
    assert not started.reused
    session.commit()
    intent = services.charge(
        session,
        started.attempt,
        gw,
        customer=customer,
        payment_method=card.stripe_payment_method_id,
        checkpoint=session.commit,
    )
    assert intent is not None and intent.status == "succeeded"
    session.expire_all()
    invoice = services.invoice_of(session, account, "ALS-0011")
    assert invoice is not None and invoice.status == InvoiceStatus.PAID
    payment = session.scalar(select(Payment).where(Payment.stripe_payment_intent_id == intent.id))
    assert payment is not None and payment.amount_minor == intent.amount


def test_without_the_sync_the_seeded_card_is_unknown_to_stripe(
    stripe_app: Flask, session: Session, proxy: FaultProxy
) -> None:
    """The bug this command fixes: the seed's card id exists in no Stripe."""
    seed_demo(session, SELLER)
    card = _default_card(session, _ada(session))
    assert card.stripe_payment_method_id.startswith("pm_demo_")
    assert gateway_for(proxy.url).find_payment_method(card.stripe_payment_method_id) is None


def test_sync_makes_the_demo_card_real_and_one_tap_payment_succeeds(
    stripe_app: Flask, session: Session, proxy: FaultProxy
) -> None:
    seed_demo(session, SELLER)
    gw = gateway_for(proxy.url)
    before = _default_card(session, _ada(session))
    old_id, exp = before.stripe_payment_method_id, (before.exp_month, before.exp_year)

    report = _sync(session, gw, proxy)

    assert report.changed
    session.expire_all()
    accounts = session.scalars(select(Account).order_by(Account.id)).all()
    demo = [a for a in accounts if a.invoice_prefix in ("ALS", "HCG", "KF")]
    assert len(demo) == 3
    for account in demo:
        assert account.stripe_customer_id and gw.find_customer(account.stripe_customer_id)
    ada = _ada(session)
    card = _default_card(session, ada)
    assert card.stripe_payment_method_id != old_id
    assert not card.stripe_payment_method_id.startswith("pm_demo_")
    in_stripe = gw.find_payment_method(card.stripe_payment_method_id)
    assert in_stripe is not None and in_stripe.customer == ada.stripe_customer_id
    assert (in_stripe.last4, in_stripe.exp_month, in_stripe.exp_year) == ("4242", *exp)
    assert (card.last4, card.exp_month, card.exp_year) == ("4242", *exp)
    # One event per customer created (3) and per card replaced (ada's 1).
    assert _sync_events(session) == 4
    event = session.scalar(
        select(AuditEvent).where(
            AuditEvent.action == "payments.demo_card_synced", AuditEvent.target_id == card.public_id
        )
    )
    assert event is not None and event.account_id == ada.id
    assert event.before is not None and event.before["stripe_payment_method_id"] == old_id

    _pay_als_0011_with_default_card(session, gw)


def test_running_twice_changes_nothing(
    stripe_app: Flask, session: Session, proxy: FaultProxy
) -> None:
    seed_demo(session, SELLER)
    gw = gateway_for(proxy.url)
    _sync(session, gw, proxy)
    session.expire_all()
    ids = {a.id: a.stripe_customer_id for a in session.scalars(select(Account))}
    cards = {m.id: m.stripe_payment_method_id for m in session.scalars(select(PaymentMethod))}
    events = _sync_events(session)
    posts = proxy.count("POST", "/v1/")

    again = _sync(session, gw, proxy)

    assert not again.changed
    assert "nothing changed" in again.lines()[0]
    session.expire_all()
    assert {a.id: a.stripe_customer_id for a in session.scalars(select(Account))} == ids
    assert {m.id: m.stripe_payment_method_id for m in session.scalars(select(PaymentMethod))} == (
        cards
    )
    assert _sync_events(session) == events
    assert proxy.count("POST", "/v1/") == posts  # only lookups the second time


@pytest.mark.parametrize("stale", ["customer_and_card", "customer_only", "card_only"])
def test_ids_unknown_to_a_restarted_simulator_are_recreated(
    stripe_app: Flask, session: Session, proxy: FaultProxy, stale: str
) -> None:
    """localstripe starts empty on every `make demo` while the database keeps its ids."""
    seed_demo(session, SELLER)
    gw = gateway_for(proxy.url)
    _sync(session, gw, proxy)
    ada = _ada(session)
    card = _default_card(session, ada)
    old_customer, old_card = ada.stripe_customer_id, card.stripe_payment_method_id
    if stale in ("customer_and_card", "customer_only"):
        ada.stripe_customer_id = "cus_from_an_earlier_simulator"
    if stale in ("customer_and_card", "card_only"):
        card.stripe_payment_method_id = "pm_from_an_earlier_simulator"
    session.commit()

    report = _sync(session, gw, proxy)

    assert report.changed
    session.expire_all()
    ada = _ada(session)
    card = _default_card(session, ada)
    assert ada.stripe_customer_id and gw.find_customer(ada.stripe_customer_id)
    if stale == "card_only":
        assert ada.stripe_customer_id == old_customer
    else:
        assert ada.stripe_customer_id != "cus_from_an_earlier_simulator"
    assert card.stripe_payment_method_id not in (old_card, "pm_from_an_earlier_simulator")
    in_stripe = gw.find_payment_method(card.stripe_payment_method_id)
    assert in_stripe is not None and in_stripe.customer == ada.stripe_customer_id

    _pay_als_0011_with_default_card(session, gw)


@pytest.mark.parametrize(
    ("key", "base", "allowed"),
    [
        (DEMO_STRIPE_SECRET_KEY, "https://api.stripe.com", True),
        ("sk_test_someone", "http://127.0.0.1:8420", True),
        ("sk_test_someone", "https://api.stripe.com", False),
        ("sk_test_someone", "https://API.Stripe.com/", False),
        ("sk_test_someone", "https://files.stripe.com", False),
        ("sk_test_someone", "", False),
        ("sk_live_someone", "http://127.0.0.1:8420", False),
    ],
)
def test_only_the_simulator_or_the_demo_key_is_allowed(key: str, base: str, allowed: bool) -> None:
    config = {"STRIPE_SECRET_KEY": key, "STRIPE_API_BASE": base}
    if allowed:
        ensure_simulator(config)
    else:
        with pytest.raises(RealStripeRefused):
            ensure_simulator(config)


def test_the_command_refuses_real_stripe_and_changes_nothing(
    stripe_app: Flask, session: Session, proxy: FaultProxy
) -> None:
    seed_demo(session, SELLER)
    session.commit()
    stripe_app.config.update(
        STRIPE_API_BASE="https://api.stripe.com", STRIPE_SECRET_KEY="sk_test_someone"
    )
    stripe_app.extensions.pop("portal.gateway", None)

    result = stripe_app.test_cli_runner().invoke(args=["portal", "sync-demo-stripe"])

    assert result.exit_code != 0
    assert "not the demo's Stripe simulator" in result.output
    session.expire_all()
    assert _default_card(session, _ada(session)).stripe_payment_method_id.startswith("pm_demo_")
    assert _sync_events(session) == 0


def test_the_command_reports_what_it_did(
    stripe_app: Flask, session: Session, proxy: FaultProxy
) -> None:
    seed_demo(session, SELLER)
    session.commit()
    runner = stripe_app.test_cli_runner()

    first = runner.invoke(args=["portal", "sync-demo-stripe"])
    second = runner.invoke(args=["portal", "sync-demo-stripe"])

    assert first.exit_code == 0, first.output
    assert "Ada Lovelace Studio: card pm_" in first.output and "replaced fake pm_demo_als_visa" in (
        first.output
    )
    assert second.exit_code == 0 and "nothing changed" in second.output


def test_the_command_explains_an_unreachable_simulator(
    stripe_app: Flask, session: Session, proxy: FaultProxy
) -> None:
    seed_demo(session, SELLER)
    session.commit()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once closed
    stripe_app.config.update(STRIPE_API_BASE=dead, STRIPE_TIMEOUT_SECONDS=2)
    stripe_app.extensions.pop("portal.gateway", None)

    result = stripe_app.test_cli_runner().invoke(args=["portal", "sync-demo-stripe"])

    assert result.exit_code == 1
    assert "could not reach the payment provider" in result.output
    assert dead in result.output and "Traceback" not in result.output
    session.expire_all()
    assert _default_card(session, _ada(session)).stripe_payment_method_id.startswith("pm_demo_")


# -- `portal seed-demo` makes the card real by itself whenever the settings name a simulator --


def _seed_command(app: Flask) -> Any:
    return app.test_cli_runner().invoke(args=["portal", "seed-demo"])


def _card_is_adas_in(gw: Gateway, session: Session) -> PaymentMethod:
    session.expire_all()
    ada = _ada(session)
    card = _default_card(session, ada)
    assert not card.stripe_payment_method_id.startswith("pm_demo_")
    in_stripe = gw.find_payment_method(card.stripe_payment_method_id)
    assert in_stripe is not None and in_stripe.customer == ada.stripe_customer_id
    assert ada.stripe_customer_id and gw.find_customer(ada.stripe_customer_id)
    return card


def test_seed_demo_alone_gives_ada_a_card_that_pays_in_the_simulator(
    stripe_app: Flask, session: Session, proxy: FaultProxy
) -> None:
    """The bug: with `seed-demo` alone against a fresh simulator, paying with the saved card
    failed ("This card cannot be used any more")."""
    result = _seed_command(stripe_app)

    assert result.exit_code == 0, result.output
    assert "created account Ada Lovelace Studio" in result.output
    assert "replaced fake pm_demo_als_visa" in result.output
    gw = gateway_for(proxy.url)
    _card_is_adas_in(gw, session)
    _pay_als_0011_with_default_card(session, gw)


def test_seeding_again_against_a_restarted_simulator_makes_the_card_real_again(
    stripe_app: Flask, session: Session, proxy: FaultProxy
) -> None:
    """`make demo` on a second day: the database keeps its ids, the new simulator knows none."""
    assert _seed_command(stripe_app).exit_code == 0
    session.expire_all()
    ada = _ada(session)
    ada.stripe_customer_id = "cus_from_yesterdays_simulator"
    _default_card(session, ada).stripe_payment_method_id = "pm_from_yesterdays_simulator"
    session.commit()

    again = _seed_command(stripe_app)

    assert again.exit_code == 0, again.output
    assert "Demo data is already present; nothing changed." in again.output
    assert "replaced unknown pm_from_yesterdays_simulator" in again.output
    gw = gateway_for(proxy.url)
    card = _card_is_adas_in(gw, session)
    assert card.stripe_payment_method_id != "pm_from_yesterdays_simulator"
    _pay_als_0011_with_default_card(session, gw)


def test_seed_demo_never_calls_stripe_itself(
    stripe_app: Flask, session: Session, proxy: FaultProxy
) -> None:
    """Stripe's own API with the demo key: the demo data is seeded, no Stripe call is made."""
    stripe_app.config.update(STRIPE_API_BASE="https://api.stripe.com")
    stripe_app.extensions.pop("portal.gateway", None)

    result = _seed_command(stripe_app)

    assert result.exit_code == 0, result.output
    assert "stays a placeholder until `portal sync-demo-stripe`" in result.output
    session.expire_all()
    assert _default_card(session, _ada(session)).stripe_payment_method_id.startswith("pm_demo_")
    assert _ada(session).stripe_customer_id is None
    assert _sync_events(session) == 0


def test_seed_demo_with_its_simulator_down_keeps_the_data_and_says_so(
    stripe_app: Flask, session: Session, proxy: FaultProxy
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    stripe_app.config.update(STRIPE_API_BASE=dead, STRIPE_TIMEOUT_SECONDS=2)
    stripe_app.extensions.pop("portal.gateway", None)

    result = _seed_command(stripe_app)

    assert result.exit_code == 1
    assert "could not reach the payment provider" in result.output and dead in result.output
    assert "Traceback" not in result.output
    session.expire_all()
    assert _default_card(session, _ada(session)).stripe_payment_method_id.startswith("pm_demo_")

    stripe_app.config.update(STRIPE_API_BASE=proxy.url)
    stripe_app.extensions.pop("portal.gateway", None)
    later = _seed_command(stripe_app)  # once the simulator runs, seeding again finishes the job
    assert later.exit_code == 0, later.output
    _card_is_adas_in(gateway_for(proxy.url), session)
