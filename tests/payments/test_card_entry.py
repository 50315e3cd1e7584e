"""A new card typed in on the pay page pays one PaymentIntent made for it (issue 9, item 16):
the browser confirms it with the card (what Stripe.js confirmCardPayment does), 3-D Secure is
asked once, and the card is saved from the intent when the customer asked for it. The usual
guards hold: the attempt and its key are saved first, one live attempt, one charge."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.billing.models import Invoice, InvoiceStatus
from portal.extensions import db
from portal.payments.models import Payment, PaymentAttempt, PaymentMethod
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_user
from tests.payments.conftest import (
    DECLINE,
    SUCCESS,
    THREE_DS,
    event_body,
    gateway_for,
    seed_payer,
    sign,
)
from tests.payments.fault_proxy import FaultProxy

JSON = {"Accept": "application/json"}


def _is_create(method: str, path: str) -> bool:
    return method == "POST" and path == "/v1/payment_intents"


def _creates(proxy: FaultProxy) -> list[dict[str, list[str]]]:
    """The form bodies of the PaymentIntent creates that reached the proxy (replays too)."""
    return [parse_qs(body) for body in proxy_bodies(proxy)]


def proxy_bodies(proxy: FaultProxy) -> list[str]:
    return [f.sent.decode() for f in proxy.state.forwarded if _is_create(f.method, f.path)]


def ask_for_intent(
    client: FlaskClient, number: str, *, save: bool = True
) -> tuple[int, dict[str, Any]]:
    """What the pay page's script sends when the customer pays with a new card."""
    data = {"pay_with": "new", "card_entry": "1", "save_card": ["0", "1"] if save else ["0"]}
    response = client.post(f"/invoices/{number}/pay", data=data, headers=JSON)
    return response.status_code, response.get_json() or {}


def confirm_card_payment(
    localstripe: str, client_secret: str, number: str, *, authenticate: bool = True
) -> int:
    """What Stripe.js confirmCardPayment(secret, {payment_method: {card}}) does against the
    simulator: the card goes with the intent; 3-D Secure when the card asks for it. Returns
    how many times the customer was asked to authenticate."""
    intent_id = client_secret.split("_secret_")[0]
    answer = requests.post(
        f"{localstripe}/v1/payment_intents/{intent_id}/confirm",
        json={
            "key": "pk_test_portal",
            "client_secret": client_secret,
            "payment_method_data": {
                "type": "card",
                "card": {"number": number, "exp_month": "12", "exp_year": "2031", "cvc": "123"},
            },
        },
        timeout=10,
    )
    if answer.status_code != 200 or answer.json().get("status") != "requires_action":
        return 0
    requests.post(
        f"{localstripe}/v1/payment_intents/{intent_id}/_authenticate",
        params={"success": "true" if authenticate else "false"},
        json={"key": "pk_test_portal", "client_secret": client_secret},
        timeout=10,
    ).raise_for_status()
    return 1


def _finish(client: FlaskClient, body: dict[str, Any]) -> str:
    """The page asks the server how the payment stands; returns the status page's HTML."""
    response = client.post(body["refresh_url"])
    assert response.status_code == 303
    assert urlsplit(response.headers["Location"]).path == urlsplit(body["status_url"]).path
    return client.get(response.headers["Location"]).get_data(as_text=True)


def _payer(session: Session, proxy: FaultProxy, localstripe: str, **kwargs: Any) -> Any:
    account, user, invoice, card = seed_payer(
        session, gateway_for(proxy.url), localstripe, **kwargs
    )
    session.commit()
    return account, user, invoice, card


def test_a_new_3ds_card_saved_for_later_is_authenticated_once(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, (4200,))
    session.commit()
    client = stripe_app.test_client()
    login_as(client, user)
    status, body = ask_for_intent(client, invoice.number, save=True)
    assert status == 200, body
    assert body["client_secret"].startswith("pi_") and body["refresh_url"]
    (created,) = _creates(proxy)
    assert created["setup_future_usage"] == ["off_session"]
    assert "payment_method" not in created and "confirm" not in created
    assert created["amount"] == ["4200"] and created["metadata[save_card]"] == ["1"]
    session.expire_all()
    attempt = session.scalar(select(PaymentAttempt).where(PaymentAttempt.account_id == account.id))
    assert attempt.status == "requires_action" and attempt.payment_method_id is None
    assert created["metadata[attempt]"] == [attempt.public_id]

    challenges = confirm_card_payment(localstripe, body["client_secret"], THREE_DS)
    page = _finish(client, body)
    assert challenges == 1
    assert 'data-status="succeeded"' in page
    session.expire_all()
    assert session.get(Invoice, invoice.id).status == InvoiceStatus.PAID
    card = session.scalar(select(PaymentMethod).where(PaymentMethod.account_id == account.id))
    assert card is not None and card.last4 == "3184"
    assert card.detached_at is None and card.is_default
    assert session.get(PaymentAttempt, attempt.id).payment_method_id == card.id
    payment = session.scalar(select(Payment).where(Payment.account_id == account.id))
    assert payment.method_description.endswith("ending in 3184")
    # No SetupIntent: the card was saved from the payment itself.
    assert proxy.count("POST", "/v1/setup_intents") == 0
    assert "3184" in client.get("/payment-methods").get_data(as_text=True)
    # The saved card is attached to the customer at Stripe: it can be charged next time.
    found = gateway_for(proxy.url).find_payment_method(card.stripe_payment_method_id)
    assert (
        found is not None
        and found.customer == session.get(type(account), account.id).stripe_customer_id
    )


def test_a_card_for_this_payment_only_is_not_kept(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    account, user, invoice, saved = _payer(session, proxy, localstripe)
    client = stripe_app.test_client()
    login_as(client, user)
    status, body = ask_for_intent(client, invoice.number, save=False)
    assert status == 200, body
    (created,) = _creates(proxy)
    assert "setup_future_usage" not in created and created["metadata[save_card]"] == ["0"]
    assert confirm_card_payment(localstripe, body["client_secret"], SUCCESS) == 0
    assert 'data-status="succeeded"' in _finish(client, body)
    session.expire_all()
    rows = session.scalars(
        select(PaymentMethod).where(PaymentMethod.account_id == account.id)
    ).all()
    one_time = [row for row in rows if row.id != saved.id]
    assert len(one_time) == 1 and one_time[0].detached_at is not None
    assert not one_time[0].is_default and session.get(PaymentMethod, saved.id).is_default
    assert session.get(Invoice, invoice.id).status == InvoiceStatus.PAID


def test_a_decline_in_the_browser_leaves_the_invoice_open_and_saves_nothing(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, (900,))
    session.commit()
    client = stripe_app.test_client()
    login_as(client, user)
    _status, body = ask_for_intent(client, invoice.number)
    confirm_card_payment(localstripe, body["client_secret"], DECLINE)
    page = _finish(client, body)
    assert 'data-status="failed"' in page and "Your card was declined" in page
    session.expire_all()
    assert session.get(Invoice, invoice.id).status == InvoiceStatus.OPEN
    assert not session.scalars(
        select(PaymentMethod).where(PaymentMethod.account_id == account.id)
    ).all()
    # The invoice is free again: the pay page offers the card form.
    assert client.get(f"/invoices/{invoice.number}/pay").status_code == 200


def test_failed_3ds_is_declined_with_its_reason(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, (900,))
    session.commit()
    client = stripe_app.test_client()
    login_as(client, user)
    _status, body = ask_for_intent(client, invoice.number)
    confirm_card_payment(localstripe, body["client_secret"], THREE_DS, authenticate=False)
    page = _finish(client, body)
    assert 'data-status="failed"' in page and "3-D Secure" in page
    session.expire_all()
    assert session.get(Invoice, invoice.id).status == InvoiceStatus.OPEN


def test_a_second_click_or_a_reload_takes_up_the_same_intent(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    account, user, invoice, _saved = _payer(session, proxy, localstripe)
    client = stripe_app.test_client()
    login_as(client, user)
    _s1, first = ask_for_intent(client, invoice.number)
    # The page was reloaded before the card was confirmed: the card form is shown again...
    page = client.get(f"/invoices/{invoice.number}/pay")
    assert page.status_code == 200 and 'data-testid="new-card-form"' in page.get_data(as_text=True)
    # ...and paying takes up the same attempt and intent.
    _s2, second = ask_for_intent(client, invoice.number)
    assert second["client_secret"] == first["client_secret"]
    assert len(proxy_bodies(proxy)) == 1
    session.expire_all()
    assert (
        session.scalar(
            select(func.count())
            .select_from(PaymentAttempt)
            .where(PaymentAttempt.account_id == account.id)
        )
        == 1
    )
    # Meanwhile the attempt's status page says what it waits for, and can start again.
    status = client.get(first["status_url"]).get_data(as_text=True)
    assert "waiting for your card details" in status and 'data-testid="start-again"' in status
    assert "data-secret" not in status


def test_a_lost_answer_is_asked_again_with_the_same_key(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    account, user, invoice, _saved = _payer(session, proxy, localstripe)
    client = stripe_app.test_client()
    login_as(client, user)
    proxy.inject("drop", _is_create, times=2)  # the answer and its retry are both lost
    status, body = ask_for_intent(client, invoice.number)
    assert status == 503 and "payment provider" in body["message"]
    session.expire_all()
    attempt = session.scalar(select(PaymentAttempt).where(PaymentAttempt.account_id == account.id))
    assert attempt.status == "created" and attempt.stripe_payment_intent_id is None
    # The customer is not locked out: the card form is there, and paying again works.
    assert client.get(f"/invoices/{invoice.number}/pay").status_code == 200
    status, body = ask_for_intent(client, invoice.number)
    assert status == 200, body
    assert confirm_card_payment(localstripe, body["client_secret"], SUCCESS) == 0
    assert 'data-status="succeeded"' in _finish(client, body)
    # One intent reached localstripe; the other creates were the same key, answered again.
    upstream = [f for f in proxy.state.forwarded if _is_create(f.method, f.path)]
    assert len(upstream) == 1 and proxy.state.replayed >= 1
    keys = {f.key for f in upstream}
    assert keys == {f"{attempt.idempotency_key}:create"}


def test_the_webhook_saves_the_card_when_the_page_never_comes_back(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    account = make_account(session)
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, (1300,))
    session.commit()
    client = stripe_app.test_client()
    login_as(client, user)
    _status, body = ask_for_intent(client, invoice.number)
    confirm_card_payment(localstripe, body["client_secret"], SUCCESS)
    intent_id = body["client_secret"].split("_secret_")[0]
    event = event_body("payment_intent.succeeded", {"id": intent_id, "object": "payment_intent"})
    answer = stripe_app.test_client().post(
        "/webhooks/stripe",
        data=event,
        headers={"Stripe-Signature": sign(event), "Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)
    session.expire_all()
    assert session.get(Invoice, invoice.id).status == InvoiceStatus.PAID
    card = session.scalar(select(PaymentMethod).where(PaymentMethod.account_id == account.id))
    assert card is not None and card.detached_at is None and card.last4 == "4242"
    payment = session.scalar(select(Payment).where(Payment.account_id == account.id))
    assert payment.method_description.endswith("ending in 4242")


def test_many_clicks_at_once_make_one_attempt_and_one_intent(
    pay_app: Flask, proxy: FaultProxy, localstripe: str
) -> None:
    with pay_app.app_context():
        account, user, invoice, _card = seed_payer(db.session, gateway_for(proxy.url), localstripe)
        db.session.commit()
        account_id, number = account.id, invoice.number
        clients = []
        for _ in range(5):
            client = pay_app.test_client()
            login_as(client, user)
            db.session.commit()
            clients.append(client)
    barrier = threading.Barrier(len(clients))
    secrets: list[str] = []
    lock = threading.Lock()

    def click(client: FlaskClient) -> None:
        barrier.wait()
        status, body = ask_for_intent(client, number)
        with lock:
            secrets.append(body.get("client_secret") or f"{status}:{body}")

    threads = [threading.Thread(target=click, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(set(secrets)) == 1 and secrets[0].startswith("pi_"), secrets
    upstream = [f for f in proxy.state.forwarded if _is_create(f.method, f.path)]
    assert len(upstream) == 1
    with pay_app.app_context():
        assert (
            db.session.scalar(
                select(func.count())
                .select_from(PaymentAttempt)
                .where(PaymentAttempt.account_id == account_id)
            )
            == 1
        )


def test_the_attempt_and_its_key_are_committed_before_the_intent_is_made(
    pay_app: Flask, proxy: FaultProxy, localstripe: str
) -> None:
    """While Stripe makes the intent, another connection already sees the attempt and the key
    the call carries."""
    from portal.payments.gateway import Gateway

    seen: list[tuple[str, str] | None] = []
    original = Gateway.create_payment_intent

    def look(self: Gateway, **kwargs: Any) -> Any:
        with db.engine.connect() as other:
            row = other.execute(
                select(PaymentAttempt.idempotency_key, PaymentAttempt.status).where(
                    PaymentAttempt.public_id == kwargs["metadata"]["attempt"]
                )
            ).first()
        seen.append(None if row is None else (row[0], row[1]))
        assert row is not None and kwargs["idempotency_key"] == f"{row[0]}:create"
        return original(self, **kwargs)

    with pay_app.app_context():
        _account, user, invoice, _card = seed_payer(db.session, gateway_for(proxy.url), localstripe)
        db.session.commit()
        number = invoice.number
        client = pay_app.test_client()
        login_as(client, user)
        db.session.commit()
    Gateway.create_payment_intent = look  # type: ignore[method-assign]
    try:
        status, body = ask_for_intent(client, number)
    finally:
        Gateway.create_payment_intent = original  # type: ignore[method-assign]
    assert status == 200, body
    assert len(seen) == 1 and seen[0] is not None and seen[0][1] == "created"
