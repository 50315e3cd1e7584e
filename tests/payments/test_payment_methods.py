"""Saved cards: add through a SetupIntent, make default, remove; ownership checked in our
database before any Stripe call; never the last card while a subscription auto-pays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.payments.models import PaymentMethod
from portal.subscriptions.models import Subscription
from tests.conftest import login_as
from tests.factories import make_account, make_price, make_user
from tests.payments.conftest import (
    SUCCESS,
    THREE_DS,
    confirm_setup,
    customer_with_card,
    gateway_for,
)
from tests.payments.fault_proxy import FaultProxy


def test_add_make_default_and_remove_cards(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    client = stripe_app.test_client()
    login_as(client, user)
    for number in (SUCCESS, THREE_DS):
        secret = client.post("/payment-methods/setup").json["client_secret"]
        setup_id = confirm_setup(localstripe, secret, number)
        response = client.post("/payment-methods", data={"setup_intent": setup_id})
        assert response.status_code == 303
    page = client.get("/payment-methods").get_data(as_text=True)
    assert "ending in 4242" in page and "ending in 3184" in page
    assert "Card ending in 3184 saved." in page  # the flash of the last add
    assert "Adding a card needs JavaScript" in page  # said before the button, for no-JS
    cards = session.scalars(
        select(PaymentMethod)
        .where(PaymentMethod.account_id == account.id)
        .order_by(PaymentMethod.id)
    ).all()
    assert [c.is_default for c in cards] == [True, False]
    assert client.post(f"/payment-methods/{cards[1].public_id}/default").status_code == 303
    assert "Card ending in 3184 is now your default card." in client.get(
        "/payment-methods"
    ).get_data(as_text=True)
    session.expire_all()
    assert [c.is_default for c in cards] == [False, True]
    # Removing asks first (a page that works without JavaScript) and changes nothing yet.
    asked = client.post(f"/payment-methods/{cards[1].public_id}/remove")
    assert asked.status_code == 200 and 'data-testid="confirm-remove"' in asked.get_data(
        as_text=True
    )
    session.expire_all()
    assert cards[1].detached_at is None
    removed = client.post(f"/payment-methods/{cards[1].public_id}/remove", data={"confirm": "1"})
    assert removed.status_code == 303
    assert "Card ending in 3184 removed." in client.get("/payment-methods").get_data(as_text=True)
    session.expire_all()
    assert cards[1].detached_at is not None
    assert cards[0].is_default  # the remaining card becomes the default
    at_stripe = gateway_for(proxy.url).list_payment_methods(account.stripe_customer_id)
    assert [c.id for c in at_stripe] == [cards[0].stripe_payment_method_id]


def test_another_accounts_card_never_reaches_stripe(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    victim = make_account(session)
    card = customer_with_card(session, gateway_for(proxy.url), localstripe, victim)
    attacker = make_user(session, account=make_account(session))
    client = stripe_app.test_client()
    login_as(client, attacker)
    forwarded = len(proxy.state.forwarded)
    for path in (
        f"/payment-methods/{card.public_id}/remove",
        f"/payment-methods/{card.public_id}/default",
    ):
        assert client.post(path).status_code == 404
    # Paying with the victim's card id: refused before Stripe is called.
    from tests.factories import make_invoice

    invoice = make_invoice(session, session.get(type(victim), attacker.memberships[0].account_id))
    response = client.post(
        f"/invoices/{invoice.number}/pay", data={"payment_method": card.public_id}
    )
    assert response.status_code == 404
    assert len(proxy.state.forwarded) == forwarded
    session.expire_all()
    assert card.detached_at is None and card.is_default


def test_the_last_card_stays_while_a_subscription_auto_pays(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    card = customer_with_card(session, gateway_for(proxy.url), localstripe, account)
    now = datetime.now(UTC)
    session.add(
        Subscription(
            account_id=account.id,
            price_id=make_price(session, unit_amount_minor=1000).id,
            current_period_start=now,
            current_period_end=now + timedelta(days=30),
        )
    )
    session.flush()
    client = stripe_app.test_client()
    login_as(client, user)
    asked = client.post(f"/payment-methods/{card.public_id}/remove").get_data(as_text=True)
    assert "only card" in asked and 'data-testid="confirm-remove"' not in asked
    response = client.post(f"/payment-methods/{card.public_id}/remove", data={"confirm": "1"})
    assert response.status_code == 409
    body = response.get_data(as_text=True)
    # The reason is shown inside the payment methods page, with its navigation, not a bare error.
    assert "only card" in body and 'data-testid="methods-error"' in body
    assert 'href="/payments"' in body
    session.expire_all()
    assert card.detached_at is None
