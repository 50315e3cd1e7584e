"""POST /webhooks/stripe: signature on the raw body, inbox row with the effect, duplicates and
any order converge, handler errors answer 5xx."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.billing.models import Invoice, InvoiceStatus, LedgerEntry
from portal.extensions import db
from portal.notifications.models import OutboxEmail
from portal.payments import services
from portal.payments.gateway import Gateway, PaymentFailed
from portal.payments.models import Payment, PaymentAttempt, StripeEvent
from tests.payments.conftest import (
    DECLINE,
    WEBHOOK_SECRET,
    event_body,
    gateway_for,
    seed_payer,
    sign,
)
from tests.payments.fault_proxy import FaultProxy


def _charged_behind_our_back(
    session: Session, gw: Gateway, localstripe: str, number: str = "4242424242424242"
):  # type: ignore[no-untyped-def]
    """An attempt whose PaymentIntent Stripe confirmed, but whose answer we never recorded."""
    account, _user, invoice, card = seed_payer(session, gw, localstripe, number=number)
    started = services.start_payment(session, account, [invoice], payment_method=card)
    attempt = started.attempt
    intent = gw.create_payment_intent(
        amount_minor=attempt.amount_minor,
        currency=attempt.currency,
        customer=account.stripe_customer_id,
        payment_method=card.stripe_payment_method_id,
        metadata={"attempt": attempt.public_id},
        idempotency_key=f"{attempt.idempotency_key}:create",
    )
    attempt.stripe_payment_intent_id = intent.id
    session.flush()
    with contextlib.suppress(PaymentFailed):
        gw.confirm_payment_intent(intent.id, idempotency_key=f"{attempt.idempotency_key}:confirm")
    return account, invoice, attempt, intent.id


def _post(client, body: bytes, signature: str | None):  # type: ignore[no-untyped-def]
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return client.post("/webhooks/stripe", data=body, headers=headers)


def _counts(session: Session, account_id: int) -> tuple[int, int, int]:
    payments = session.scalar(
        select(func.count()).select_from(Payment).where(Payment.account_id == account_id)
    )
    ledger = session.scalar(
        select(func.count())
        .select_from(LedgerEntry)
        .where(LedgerEntry.account_id == account_id, LedgerEntry.kind == "payment")
    )
    receipts = session.scalar(
        select(func.count())
        .select_from(OutboxEmail)
        .where(OutboxEmail.account_id == account_id, OutboxEmail.template == "receipt")
    )
    return payments, ledger, receipts


def test_one_event_delivered_100_times_records_one_payment(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    account, invoice, attempt, intent_id = _charged_behind_our_back(
        session, gateway_for(proxy.url), localstripe
    )
    client = stripe_app.test_client()
    body = event_body("payment_intent.succeeded", {"id": intent_id, "object": "payment_intent"})
    outcomes = [_post(client, body, sign(body)) for _ in range(100)]
    assert all(r.status_code == 200 for r in outcomes)
    assert [r.json["outcome"] for r in outcomes].count("processed") == 1
    assert _counts(session, account.id) == (1, 1, 1)
    session.expire_all()
    assert invoice.status == InvoiceStatus.PAID
    assert session.get(PaymentAttempt, attempt.id).status == "succeeded"
    assert session.scalar(select(func.count()).select_from(StripeEvent)) >= 1


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["processing", "payment_failed", "succeeded"]))
)
def test_every_order_of_events_converges(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str, order: tuple
) -> None:
    account, invoice, attempt, intent_id = _charged_behind_our_back(
        session, gateway_for(proxy.url), localstripe
    )
    client = stripe_app.test_client()
    for kind in order:
        body = event_body(f"payment_intent.{kind}", {"id": intent_id, "object": "payment_intent"})
        assert _post(client, body, sign(body)).status_code == 200
    assert _counts(session, account.id) == (1, 1, 1)
    session.expire_all()
    assert session.get(PaymentAttempt, attempt.id).status == "succeeded"
    assert invoice.status == InvoiceStatus.PAID


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["processing", "payment_failed", "succeeded"]))
)
def test_every_order_converges_for_a_declined_payment(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str, order: tuple
) -> None:
    account, invoice, attempt, intent_id = _charged_behind_our_back(
        session, gateway_for(proxy.url), localstripe, number=DECLINE
    )
    client = stripe_app.test_client()
    for kind in order:
        body = event_body(f"payment_intent.{kind}", {"id": intent_id, "object": "payment_intent"})
        assert _post(client, body, sign(body)).status_code == 200
    assert _counts(session, account.id) == (0, 0, 0)
    session.expire_all()
    assert session.get(PaymentAttempt, attempt.id).status == "failed"
    assert invoice.status == InvoiceStatus.OPEN


@pytest.mark.parametrize("case", ["missing", "wrong", "stale", "altered", "other-secret"])
def test_bad_signatures_are_refused_and_write_nothing(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str, case: str
) -> None:
    account, _invoice, _attempt, intent_id = _charged_behind_our_back(
        session, gateway_for(proxy.url), localstripe
    )
    client = stripe_app.test_client()
    body = event_body("payment_intent.succeeded", {"id": intent_id, "object": "payment_intent"})
    signature = {
        "missing": None,
        "wrong": "t=123,v1=" + "0" * 64,
        "stale": sign(body, timestamp=int(time.time()) - 301),
        "altered": sign(body),
        "other-secret": sign(body, secret="whsec_somebody_else"),
    }[case]
    if case == "altered":
        body = body.replace(b'"payment_intent.succeeded"', b'"payment_intent.canceled"')
    before = session.scalar(select(func.count()).select_from(StripeEvent))
    response = _post(client, body, signature)
    assert response.status_code == 400
    assert session.scalar(select(func.count()).select_from(StripeEvent)) == before
    assert _counts(session, account.id) == (0, 0, 0)


def test_an_object_stripe_knows_but_we_cannot_place_answers_500_so_stripe_retries(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    gw = gateway_for(proxy.url)
    _account, _invoice, _attempt, _intent_id = _charged_behind_our_back(session, gw, localstripe)
    # A real charge at Stripe that is none of our payments.
    stranger, _user, _inv, card = seed_payer(session, gw, localstripe)
    intent = gw.create_payment_intent(
        amount_minor=900,
        currency="USD",
        customer=stranger.stripe_customer_id,
        payment_method=card.stripe_payment_method_id,
        metadata={},
        idempotency_key="stranger:create",
    )
    charged = gw.confirm_payment_intent(intent.id, idempotency_key="stranger:confirm")
    client = stripe_app.test_client()
    body = event_body("charge.refunded", {"id": charged.latest_charge, "amount_refunded": 100})
    before = session.scalar(select(func.count()).select_from(StripeEvent))
    assert _post(client, body, sign(body)).status_code == 500
    # The inbox row went with the failed effect: the retry will be processed.
    assert session.scalar(select(func.count()).select_from(StripeEvent)) == before


def test_an_object_stripe_does_not_know_is_not_applied_but_kept_and_audited(
    stripe_app: Flask, session: Session, proxy: FaultProxy
) -> None:
    client = stripe_app.test_client()
    body = event_body(
        "charge.refunded",
        {"id": "ch_nobody", "payment_intent": "pi_nobody", "amount_refunded": 100},
    )
    response = _post(client, body, sign(body))
    assert response.status_code == 200 and response.json["outcome"] == "not_at_stripe"
    event_id = json.loads(body)["id"]
    stored = session.scalar(select(StripeEvent).where(StripeEvent.stripe_event_id == event_id))
    assert stored is not None and stored.status == "failed"
    audited = session.scalar(
        select(AuditEvent).where(
            AuditEvent.action == "stripe.event_not_applied", AuditEvent.target_id == event_id
        )
    )
    assert audited is not None and "ch_nobody" in json.dumps(audited.after)


def test_a_forged_refund_signed_with_our_secret_changes_nothing(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    """Finding 2: a signed charge.refunded for 75.00 that Stripe never refunded."""
    account, _invoice, _attempt, intent_id = _charged_behind_our_back(
        session, gateway_for(proxy.url), localstripe
    )
    client = stripe_app.test_client()
    body = event_body("payment_intent.succeeded", {"id": intent_id, "object": "payment_intent"})
    _post(client, body, sign(body))
    payment = session.scalar(select(Payment).where(Payment.account_id == account.id))
    forged = event_body(
        "charge.refunded",
        {
            "id": payment.stripe_charge_id,
            "payment_intent": intent_id,
            "amount_refunded": 7500,
            "refunded": True,
        },
    )
    assert _post(client, forged, sign(forged)).status_code == 200
    session.expire_all()
    assert session.get(Payment, payment.id).amount_refunded_minor == 0
    assert not session.scalar(
        select(func.count())
        .select_from(LedgerEntry)
        .where(LedgerEntry.account_id == account.id, LedgerEntry.kind == "refund")
    )


def test_a_forged_detach_of_an_attached_card_changes_nothing(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    """Finding 2: a signed payment_method.detached removed a card Stripe still holds."""
    _account, _user, _invoice, card = seed_payer(session, gateway_for(proxy.url), localstripe)
    client = stripe_app.test_client()
    forged = event_body(
        "payment_method.detached",
        {"id": card.stripe_payment_method_id, "object": "payment_method", "customer": None},
    )
    response = _post(client, forged, sign(forged))
    assert response.status_code == 200
    session.expire_all()
    assert card.detached_at is None and card.is_default
    assert session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.action == "stripe.event_not_applied")
    )


def test_a_real_detach_at_stripe_is_applied(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    gw = gateway_for(proxy.url)
    _account, _user, _invoice, card = seed_payer(session, gw, localstripe)
    gw.detach_payment_method(card.stripe_payment_method_id)
    body = event_body(
        "payment_method.detached", {"id": card.stripe_payment_method_id, "customer": None}
    )
    assert _post(stripe_app.test_client(), body, sign(body)).status_code == 200
    session.expire_all()
    assert card.detached_at is not None and not card.is_default


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'[{"id": "evt_1"}]',
        b"null",
        b'"text"',
        b"{}",
        b'{"id": 5, "type": "charge.refunded", "data": {"object": {"id": "ch_1"}}}',
        b'{"id": "evt_1", "type": "charge.refunded", "data": []}',
        b'{"id": "evt_1", "type": "charge.refunded", "data": {"object": {"id": 7}}}',
        b"\xff\xfe not json",
    ],
)
def test_a_signed_but_malformed_body_answers_400_with_words(
    stripe_app: Flask, session: Session, proxy: FaultProxy, body: bytes
) -> None:
    before = session.scalar(select(func.count()).select_from(StripeEvent))
    response = _post(stripe_app.test_client(), body, sign(body))
    assert response.status_code == 400
    assert response.json["message"]
    assert session.scalar(select(func.count()).select_from(StripeEvent)) == before


def test_unhandled_event_types_are_kept_as_ignored(
    stripe_app: Flask, session: Session, proxy: FaultProxy
) -> None:
    client = stripe_app.test_client()
    body = event_body("customer.created", {"id": "cus_x", "object": "customer"})
    response = _post(client, body, sign(body))
    assert response.status_code == 200 and response.json["outcome"] == "ignored"


def test_charge_refunded_is_applied_once_whatever_the_order(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    gw = gateway_for(proxy.url)
    account, _invoice, _attempt, intent_id = _charged_behind_our_back(session, gw, localstripe)
    client = stripe_app.test_client()
    body = event_body("payment_intent.succeeded", {"id": intent_id, "object": "payment_intent"})
    _post(client, body, sign(body))
    payment = session.scalar(select(Payment).where(Payment.account_id == account.id))
    gw.create_refund(payment_intent=intent_id, amount_minor=1000, idempotency_key="refund-1")
    gw.create_refund(payment_intent=intent_id, amount_minor=2000, idempotency_key="refund-2")
    charge = {"id": payment.stripe_charge_id, "payment_intent": intent_id}
    # The events' own figures are ignored: Stripe's charge says 3000 was refunded.
    later = event_body("charge.refunded", {**charge, "amount_refunded": 3000})
    earlier = event_body("charge.refunded", {**charge, "amount_refunded": 1000})
    for event in (later, earlier, later):
        assert _post(client, event, sign(event)).status_code == 200
    session.expire_all()
    assert session.get(Payment, payment.id).amount_refunded_minor == 3000
    refunds = session.scalar(
        select(func.sum(LedgerEntry.amount_minor)).where(
            LedgerEntry.account_id == account.id, LedgerEntry.kind == "refund"
        )
    )
    assert refunds == 3000
    assert (
        session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.action == "refund.recorded", AuditEvent.target_id == payment.public_id
            )
        )
        == 1
    )


def test_one_event_delivered_20_times_at_once_records_one_payment(
    pay_app: Flask, proxy: FaultProxy, localstripe: str
) -> None:
    with pay_app.app_context():
        account, invoice, _attempt, intent_id = _charged_behind_our_back(
            db.session, gateway_for(proxy.url), localstripe
        )
        db.session.commit()
        account_id, invoice_id = account.id, invoice.id
    body = event_body("payment_intent.succeeded", {"id": intent_id, "object": "payment_intent"})
    signature = sign(body)
    barrier = threading.Barrier(20)
    statuses: list[int] = []

    def deliver() -> None:
        client = pay_app.test_client()
        barrier.wait()
        statuses.append(_post(client, body, signature).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 20
    with pay_app.app_context():
        assert _counts(db.session, account_id) == (1, 1, 1)
        assert db.session.get(Invoice, invoice_id).status == InvoiceStatus.PAID
        stored = db.session.scalars(select(StripeEvent)).all()
        assert len(stored) == 1
        assert "client_secret" not in json.dumps(stored[0].payload)
    _ = WEBHOOK_SECRET
