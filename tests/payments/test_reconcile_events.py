"""Reconcile from Stripe's event list: from the saved cursor, 100 events per call, through the
webhook handlers, asking about single objects only for attempts the events left unsettled."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from portal.extensions import db
from portal.notifications.models import SyncCursor
from portal.payments.gateway import Gateway
from portal.payments.models import Payment, PaymentAttempt, PaymentAttemptItem
from portal.payments.reconcile import EVENTS_CURSOR, reconcile
from tests.conftest import app_with_own_database
from tests.factories import make_account, make_invoice
from tests.payments.fake_events import FakeStripe


@pytest.fixture()
def fake() -> Iterator[FakeStripe]:
    server = FakeStripe().start()
    yield server
    server.stop()


@pytest.fixture()
def events_app(backend: str, tmp_path: Path, fake: FakeStripe) -> Iterator[Flask]:
    with app_with_own_database(backend, tmp_path, "events", STRIPE_API_BASE=fake.url) as app:
        yield app


def _gateway(fake: FakeStripe) -> Gateway:
    return Gateway(api_key="sk_test_portal", api_base=fake.url, webhook_secret="whsec_test")


def _intent(intent_id: str, amount: int, attempt: str, status: str = "succeeded") -> dict[str, Any]:
    return {
        "object": "payment_intent",
        "id": intent_id,
        "status": status,
        "amount": amount,
        "currency": "usd",
        "customer": None,
        "payment_method": None,
        "client_secret": f"{intent_id}_secret_x",
        "latest_charge": f"ch_{intent_id}",
        "metadata": {"attempt": attempt},
    }


def _attempt(status: str, intent_id: str, amount: int = 1200) -> tuple[int, str]:
    """An invoice and a live payment attempt for it (as the pay path leaves one)."""
    session = db.session
    account = make_account(session)
    invoice = make_invoice(session, account, (amount,))
    attempt = PaymentAttempt(
        account_id=account.id,
        currency="USD",
        amount_minor=amount,
        status=status,
        idempotency_key=secrets.token_hex(16),
        stripe_payment_intent_id=intent_id,
        items=[PaymentAttemptItem(invoice_id=invoice.id, amount_minor=amount)],
    )
    session.add(attempt)
    session.commit()
    return attempt.id, attempt.public_id


def _cursor() -> str:
    return str(db.session.scalar(select(SyncCursor.value).where(SyncCursor.name == EVENTS_CURSOR)))


def _set_cursor(value: str) -> None:
    db.session.add(SyncCursor(name=EVENTS_CURSOR, value=value))
    db.session.commit()


def _status(attempt_id: int) -> str:
    db.session.rollback()
    return str(
        db.session.scalar(select(PaymentAttempt.status).where(PaymentAttempt.id == attempt_id))
    )


def _payments() -> int:
    db.session.rollback()
    return int(db.session.scalar(select(func.count()).select_from(Payment)) or 0)


def test_events_from_the_cursor_settle_attempts_100_per_call(
    events_app: Flask, fake: FakeStripe
) -> None:
    with events_app.app_context():
        paid_id, paid_public = _attempt("processing", "pi_paid")
        quiet_id, quiet_public = _attempt("unknown", "pi_quiet", amount=900)
        fake.add_event("customer.created", {"object": "customer", "id": "cus_0"})
        _set_cursor("evt_00000")  # where an earlier run stopped
        for n in range(1, 250):
            if n == 137:  # the webhook for this payment was lost
                fake.add_event("payment_intent.succeeded", _intent("pi_paid", 1200, paid_public))
            else:
                fake.add_event("customer.updated", {"object": "customer", "id": f"cus_{n}"})
        # No event for pi_quiet: only this one is asked about by itself.
        fake.intents["pi_quiet"] = _intent("pi_quiet", 900, quiet_public)

        report = reconcile(db.session, _gateway(fake), min_age=timedelta(0))

        assert fake.calls["/v1/events"] == 3  # 100 + 100 + 49 events
        assert report.events_read == 249 and report.event_calls == 3
        assert fake.calls["/v1/payment_intents/pi_paid"] == 0  # settled from its event
        assert fake.calls["/v1/payment_intents/pi_quiet"] >= 1
        assert _status(paid_id) == "succeeded" and _status(quiet_id) == "succeeded"
        assert f"{paid_public}: processing -> succeeded" in report.settled
        assert _payments() == 2
        assert _cursor() == "evt_00249"
        assert not report.mismatches and not report.unreachable, report.lines()

        fake.calls.clear()
        again = reconcile(db.session, _gateway(fake), min_age=timedelta(0))
        assert fake.calls["/v1/events"] == 1  # one look: nothing new
        assert sum(fake.calls.values()) == 1
        assert not again.changed and "nothing to do" in again.lines()
        assert _payments() == 2


def test_a_page_read_again_changes_nothing(events_app: Flask, fake: FakeStripe) -> None:
    with events_app.app_context():
        attempt_id, public = _attempt("processing", "pi_twice")
        fake.add_event("customer.created", {"object": "customer", "id": "cus_0"})
        _set_cursor("evt_00000")
        fake.add_event("payment_intent.succeeded", _intent("pi_twice", 1200, public))
        reconcile(db.session, _gateway(fake), min_age=timedelta(hours=1))
        assert _status(attempt_id) == "succeeded" and _payments() == 1
        # The run died before saving its cursor: the next one reads the same events again.
        db.session.rollback()
        db.session.scalar(
            select(SyncCursor).where(SyncCursor.name == EVENTS_CURSOR)
        ).value = "evt_00000"
        db.session.commit()
        again = reconcile(db.session, _gateway(fake), min_age=timedelta(hours=1))
        assert not again.changed and _payments() == 1


def test_the_first_run_notes_where_the_list_stands(events_app: Flask, fake: FakeStripe) -> None:
    with events_app.app_context():
        for n in range(5):
            fake.add_event("customer.updated", {"object": "customer", "id": f"cus_{n}"})
        report = reconcile(db.session, _gateway(fake), min_age=timedelta(0))
        assert fake.calls["/v1/events"] == 1
        assert _cursor() == "evt_00004"
        assert "nothing to do" in report.lines()


def test_a_mismatch_in_an_event_is_reported_not_fixed(events_app: Flask, fake: FakeStripe) -> None:
    with events_app.app_context():
        _attempt_id, public = _attempt("processing", "pi_odd")
        fake.add_event("customer.created", {"object": "customer", "id": "cus_0"})
        _set_cursor("evt_00000")
        fake.add_event("payment_intent.succeeded", _intent("pi_odd", 1200, public))
        reconcile(db.session, _gateway(fake), min_age=timedelta(hours=1))
        # Later Stripe tells of the same intent with another amount (never ours to fix).
        fake.add_event("payment_intent.succeeded", _intent("pi_odd", 1300, public))
        report = reconcile(db.session, _gateway(fake), min_age=timedelta(hours=1))
        assert any("ledger 1200 USD, Stripe 1300 USD" in line for line in report.mismatches)
        assert _payments() == 1


def test_against_localstripe_unknown_attempts_are_still_settled_one_by_one(
    pay_app: Flask, proxy: Any, localstripe: str
) -> None:
    """localstripe lists events but refuses `ending_before`: the event walk says so and steps
    aside, and the attempt whose answer was lost is settled by asking about it."""
    from tests.conftest import login_as
    from tests.payments.conftest import gateway_for, seed_payer
    from tests.payments.test_lost_responses import _is_confirm

    with pay_app.app_context():
        _account, user, invoice, card = seed_payer(db.session, gateway_for(proxy.url), localstripe)
        db.session.commit()
        number, card_id = invoice.number, card.public_id
        client = pay_app.test_client()
        login_as(client, user)
        db.session.commit()
    with pay_app.app_context():
        first = reconcile(db.session, gateway_for(proxy.url), min_age=timedelta(0))
        assert first.event_calls == 1 and _cursor()  # the first run notes where the list is
    proxy.inject("drop", _is_confirm, times=2)
    client.post(f"/invoices/{number}/pay", data={"payment_method": card_id})
    with pay_app.app_context():
        report = reconcile(db.session, gateway_for(proxy.url), min_age=timedelta(0))
    assert "event list is not available" in report.events_note
    assert any("unknown -> succeeded" in line for line in report.settled), report.lines()
    assert not report.unreachable and not report.mismatches
