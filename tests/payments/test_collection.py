"""Collecting an invoice with the saved default card, off-session (portal/payments/collection.py),
against localstripe through the fault proxy: each outcome, disputed amounts left out, lost
answers (one charge at most), and two collectors at once (one attempt), on both databases."""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.audit.services import SYSTEM
from portal.billing.models import Invoice, InvoiceStatus
from portal.disputes.models import Dispute
from portal.extensions import db
from portal.notifications.models import OutboxEmail
from portal.payments import collection, services
from portal.payments.collection import collect_invoice
from portal.payments.gateway import Gateway
from portal.payments.models import Payment, PaymentAttempt
from portal.payments.reconcile import reconcile
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_user
from tests.payments.conftest import DECLINE, THREE_DS, gateway_for, seed_payer
from tests.payments.fault_proxy import FaultProxy, on


def _is_create(method: str, path: str) -> bool:
    return method == "POST" and path == "/v1/payment_intents"


def _created_upstream(proxy: FaultProxy) -> int:
    return sum(1 for f in proxy.state.forwarded if _is_create(f.method, f.path))


def _attempts(session: Session, account_id: int) -> list[PaymentAttempt]:
    session.expire_all()
    return list(
        session.scalars(select(PaymentAttempt).where(PaymentAttempt.account_id == account_id))
    )


def _count(session: Session, model: Any, *where: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_collect_pays_off_session_with_the_default_card(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    gw = gateway_for(proxy.url)
    account, _user, invoice, card = seed_payer(session, gw, localstripe)
    session.commit()
    sent: list[dict[str, Any]] = []
    original = Gateway.create_payment_intent

    def spy(self: Gateway, **kwargs: Any) -> Any:
        sent.append(kwargs)
        return original(self, **kwargs)

    Gateway.create_payment_intent = spy  # type: ignore[method-assign]
    try:
        outcome = collect_invoice(session, invoice.id, gw, actor=SYSTEM, reason="billing_run")
    finally:
        Gateway.create_payment_intent = original  # type: ignore[method-assign]
    session.commit()
    assert outcome.status == "paid", outcome
    assert outcome.attempt_id is not None and outcome.message
    assert [k["off_session"] for k in sent] == [True]
    assert sent[0]["payment_method"] == card.stripe_payment_method_id
    assert sent[0]["amount_minor"] == 5000
    # One create that confirms; no separate confirm call.
    assert _created_upstream(proxy) == 1 and proxy.count("POST", "/confirm") == 0
    session.expire_all()
    assert session.get(Invoice, invoice.id).status == InvoiceStatus.PAID
    payments = session.scalars(select(Payment).where(Payment.account_id == account.id)).all()
    assert len(payments) == 1 and payments[0].amount_minor == 5000
    assert payments[0].attempt_id == outcome.attempt_id
    attempt = session.get(PaymentAttempt, outcome.attempt_id)
    assert attempt.idempotency_key.startswith("collect_")
    actions = set(
        session.scalars(
            select(AuditEvent.action).where(
                AuditEvent.target_type == "payment_attempt",
                AuditEvent.target_id == attempt.public_id,
            )
        )
    )
    assert {"payment.collection_started", "payment_attempt.status_changed"} <= actions
    started = session.scalar(
        select(AuditEvent).where(AuditEvent.action == "payment.collection_started")
    )
    assert started.after["reason"] == "billing_run" and started.after["off_session"] is True


def test_a_decline_returns_stripes_reason_and_leaves_the_invoice_open(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    gw = gateway_for(proxy.url)
    account, _user, invoice, _card = seed_payer(session, gw, localstripe, number=DECLINE)
    session.commit()
    outcome = collect_invoice(session, invoice.id, gw, actor=SYSTEM, reason="retry")
    session.commit()
    assert outcome.status == "failed", outcome
    assert "Your card was declined" in outcome.message
    session.expire_all()
    assert session.get(Invoice, invoice.id).status == InvoiceStatus.OPEN
    assert _count(session, Payment, Payment.account_id == account.id) == 0
    (attempt,) = _attempts(session, account.id)
    assert attempt.status == "failed" and attempt.failure_code
    assert services.live_attempt_for(session, [invoice.id]) is None
    # The caller (which knows the next retry date) queues payment_failed, not this service.
    assert _count(session, OutboxEmail, OutboxEmail.account_id == account.id) == 0
    # The invoice is free for the next try.
    again = collect_invoice(session, invoice.id, gw, actor=SYSTEM, reason="retry")
    session.commit()
    assert again.status == "failed" and again.attempt_id != outcome.attempt_id


def test_3ds_needed_off_session_waits_for_the_customer_and_emails_them(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    gw = gateway_for(proxy.url)
    account, user, invoice, _card = seed_payer(session, gw, localstripe, number=THREE_DS)
    session.commit()
    outcome = collect_invoice(session, invoice.id, gw, actor=SYSTEM, reason="upgrade")
    session.commit()
    assert outcome.status == "requires_action", outcome
    session.expire_all()
    attempt = session.get(PaymentAttempt, outcome.attempt_id)
    assert attempt.status == "requires_action"
    assert services.live_attempt_for(session, [invoice.id]).id == attempt.id
    email = session.scalar(
        select(OutboxEmail).where(
            OutboxEmail.account_id == account.id, OutboxEmail.template == "action_required"
        )
    )
    assert email is not None and invoice.number in email.subject
    assert f"/invoices/{invoice.number}/pay" in email.text_body
    assert f"/invoices/{invoice.number}/pay" in email.html_body
    # A second collector finds the attempt waiting: busy, no second charge, no second email.
    busy = collect_invoice(session, invoice.id, gw, actor=SYSTEM, reason="retry")
    session.commit()
    assert busy.status == "busy" and busy.attempt_id == attempt.id
    assert _created_upstream(proxy) == 1
    # The customer follows the link: the pay page sends them to the attempt to confirm it.
    client = stripe_app.test_client()
    login_as(client, user)
    page = client.get(f"/invoices/{invoice.number}/pay")
    assert page.status_code == 303 and attempt.public_id in page.headers["Location"]
    status = client.get(page.headers["Location"]).get_data(as_text=True)
    assert 'data-status="requires_action"' in status and "data-secret=" in status
    # They pass 3-D Secure (what Stripe.js does), and the page asks Stripe: paid.
    secret = gw.retrieve_payment_intent(attempt.stripe_payment_intent_id).client_secret
    requests.post(
        f"{localstripe}/v1/payment_intents/{attempt.stripe_payment_intent_id}/_authenticate",
        data={"client_secret": secret, "success": "true", "key": "pk_test_portal"},
        timeout=10,
    ).raise_for_status()
    assert client.post(f"/pay/attempts/{attempt.public_id}/refresh").status_code == 303
    session.expire_all()
    assert session.get(Invoice, invoice.id).status == InvoiceStatus.PAID


def test_no_card_and_nothing_due(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    gw = gateway_for(proxy.url)
    account = make_account(session)
    make_user(session, account=account)
    invoice = make_invoice(session, account, (1200,))
    draft = make_invoice(session, account, (700,), finalize=False)
    session.commit()
    assert collect_invoice(session, invoice.id, gw, actor=SYSTEM, reason="retry").status == (
        "no_card"
    )
    session.commit()
    assert collect_invoice(session, draft.id, gw, actor=SYSTEM, reason="retry").status == (
        "nothing_due"
    )
    session.commit()
    _a, _u, paid, _card = seed_payer(session, gw, localstripe)
    session.commit()
    assert collect_invoice(session, paid.id, gw, actor=SYSTEM, reason="retry").status == "paid"
    session.commit()
    again = collect_invoice(session, paid.id, gw, actor=SYSTEM, reason="retry")
    session.commit()
    assert again.status == "nothing_due" and again.message
    assert _created_upstream(proxy) == 1
    assert _count(session, PaymentAttempt, PaymentAttempt.account_id == account.id) == 0


def _dispute(session: Session, invoice: Invoice, amount_minor: int, status: str = "open") -> None:
    session.add(
        Dispute(
            account_id=invoice.account_id,
            invoice_id=invoice.id,
            currency=invoice.currency,
            amount_minor=amount_minor,
            reason="wrong_amount",
            status=status,
        )
    )
    session.flush()


def test_what_open_disputes_hold_is_not_collected(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    gw = gateway_for(proxy.url)
    account, _user, invoice, _card = seed_payer(session, gw, localstripe, amounts=(3000, 2000))
    _dispute(session, invoice, 2000)
    _dispute(session, invoice, 500, status="rejected")  # closed: holds nothing
    session.commit()
    outcome = collect_invoice(session, invoice.id, gw, actor=SYSTEM, reason="billing_run")
    session.commit()
    assert outcome.status == "paid", outcome
    session.expire_all()
    attempt = session.get(PaymentAttempt, outcome.attempt_id)
    assert attempt.amount_minor == 3000 and attempt.items[0].amount_minor == 3000
    payment = session.scalar(select(Payment).where(Payment.account_id == account.id))
    assert payment.amount_minor == 3000
    refreshed = session.get(Invoice, invoice.id)
    assert refreshed.amount_due_minor == 2000 and refreshed.status != InvoiceStatus.PAID
    # The rest is all disputed: nothing more to collect.
    again = collect_invoice(session, invoice.id, gw, actor=SYSTEM, reason="retry")
    assert again.status == "nothing_due"


def test_pending_changes_of_the_caller_are_committed_with_the_attempt(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    """An upgrade makes its proration invoice and collects it in one unit of work."""
    gw = gateway_for(proxy.url)
    account, _user, _first, _card = seed_payer(session, gw, localstripe)
    session.commit()
    invoice = make_invoice(session, account, (1500,))  # flushed, not committed
    outcome = collect_invoice(session, invoice.id, gw, actor=SYSTEM, reason="upgrade")
    session.commit()
    assert outcome.status == "paid"
    session.expire_all()
    assert session.get(Invoice, invoice.id).status == InvoiceStatus.PAID


def test_a_lost_answer_is_retried_with_the_same_key_and_charges_once(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    gw = gateway_for(proxy.url)
    account, _user, invoice, _card = seed_payer(session, gw, localstripe)
    session.commit()
    proxy.inject("drop", _is_create, times=1)
    outcome = collect_invoice(session, invoice.id, gw, actor=SYSTEM, reason="retry")
    session.commit()
    assert outcome.status == "paid", outcome
    assert _created_upstream(proxy) == 1 and proxy.state.replayed == 1
    assert _count(session, Payment, Payment.account_id == account.id) == 1


def test_an_answer_lost_twice_is_processing_and_reconcile_settles_it_with_one_charge(
    stripe_app: Flask, session: Session, proxy: FaultProxy, localstripe: str
) -> None:
    gw = gateway_for(proxy.url)
    account, _user, invoice, _card = seed_payer(session, gw, localstripe)
    session.commit()
    proxy.inject("drop", _is_create, times=2)
    outcome = collect_invoice(session, invoice.id, gw, actor=SYSTEM, reason="retry")
    session.commit()
    assert outcome.status == "processing", outcome
    (attempt,) = _attempts(session, account.id)
    assert attempt.status == "unknown" and attempt.idempotency_key
    assert _count(session, Payment, Payment.account_id == account.id) == 0
    # Until it is settled, another collector finds it live.
    busy = collect_invoice(session, invoice.id, gw, actor=SYSTEM, reason="retry")
    session.commit()
    assert busy.status == "busy"
    report = reconcile(session, gw, commit=session.commit, min_age=timedelta(0))
    assert report.recorded, report.lines()
    session.expire_all()
    assert session.get(Invoice, invoice.id).status == InvoiceStatus.PAID
    assert _count(session, Payment, Payment.account_id == account.id) == 1
    # The charge reached localstripe once; reconcile's repeat of the create was a replay.
    assert _created_upstream(proxy) == 1
    charged = [
        json.loads(f.body)
        for f in proxy.state.forwarded
        if _is_create(f.method, f.path) and f.status == 200
    ]
    assert [c["status"] for c in charged] == ["succeeded"]


def test_the_attempt_and_its_key_are_committed_before_stripe_is_called(
    pay_app: Flask, proxy: FaultProxy, localstripe: str
) -> None:
    """While Stripe is being called, another connection already sees the attempt and the key
    the call carries."""
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
        _account, _user, invoice, _card = seed_payer(
            db.session, gateway_for(proxy.url), localstripe
        )
        db.session.commit()
        Gateway.create_payment_intent = look  # type: ignore[method-assign]
        try:
            outcome = collect_invoice(
                db.session, invoice.id, gateway_for(proxy.url), actor=SYSTEM, reason="retry"
            )
            db.session.commit()
        finally:
            Gateway.create_payment_intent = original  # type: ignore[method-assign]
    assert outcome.status == "paid"
    assert len(seen) == 1 and seen[0] is not None and seen[0][1] == "created"


@dataclass
class Together:
    statuses: list[str]
    errors: list[BaseException]
    attempts: int
    payments: int
    created: int
    paid: bool


def _collect_concurrently(app: Flask, proxy: FaultProxy, localstripe: str) -> Together:
    with app.app_context():
        account, _user, invoice, _card = seed_payer(db.session, gateway_for(proxy.url), localstripe)
        db.session.commit()
        account_id, invoice_id = account.id, invoice.id
    # NOTE: a slow Stripe keeps the first attempt live while the second collector looks.
    proxy.inject("delay", on("POST", "/v1/payment_intents"), times=1, delay=1.0)
    barrier = threading.Barrier(2)
    statuses: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def collect() -> None:
        try:
            with app.app_context():
                barrier.wait()
                outcome = collect_invoice(
                    db.session, invoice_id, gateway_for(proxy.url), actor=SYSTEM, reason="retry"
                )
                db.session.commit()
                with lock:
                    statuses.append(outcome.status)
        except Exception as error:  # noqa: BLE001 - reported to the test
            with lock:
                errors.append(error)

    threads = [threading.Thread(target=collect, name=name) for name in ("c1", "c2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    with app.app_context():
        return Together(
            statuses=sorted(statuses),
            errors=errors,
            attempts=_count(db.session, PaymentAttempt, PaymentAttempt.account_id == account_id),
            payments=_count(db.session, Payment, Payment.account_id == account_id),
            created=_created_upstream(proxy),
            paid=db.session.get(Invoice, invoice_id).status == InvoiceStatus.PAID,
        )


def test_two_collectors_at_once_make_one_attempt_and_one_charge(
    pay_app: Flask, proxy: FaultProxy, localstripe: str
) -> None:
    together = _collect_concurrently(pay_app, proxy, localstripe)
    assert not together.errors, together
    assert together.statuses == ["busy", "paid"], together
    assert (together.attempts, together.payments, together.created) == (1, 1, 1)
    assert together.paid


def test_without_the_lock_and_the_unique_index_two_collectors_charge_twice(
    pay_app: Flask, proxy: FaultProxy, localstripe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proof that the test above can fail: with no row lock, no BEGIN IMMEDIATE and no partial
    unique index, both collectors read "no live attempt": both charge (PostgreSQL), or SQLite
    refuses the stale writer with an error."""
    both_read = threading.Barrier(2, timeout=20)
    original = services.live_attempt_for

    def pausing(session: Session, ids: Any) -> Any:
        found = original(session, ids)
        if threading.current_thread().name in ("c1", "c2"):
            with contextlib.suppress(threading.BrokenBarrierError):
                both_read.wait()
        return found

    monkeypatch.setattr(services, "live_attempt_for", pausing)
    monkeypatch.setattr(services, "begin_locked_write", lambda session: None)
    monkeypatch.setattr(
        collection, "_lock_invoice", lambda session, invoice_id: session.get(Invoice, invoice_id)
    )
    with pay_app.app_context():
        db.session.execute(sa.text("DROP INDEX uq_payment_attempt_items_live_invoice"))
        db.session.commit()
    together = _collect_concurrently(pay_app, proxy, localstripe)
    print(f"guards removed: {together}")
    assert together.created == 2 or together.errors, together
