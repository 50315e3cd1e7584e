"""Double submits of a resolution, for real: two requests at once (threads, real commits, a
database of their own) make one credit note, or one refund with one call to Stripe."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.billing import services as billing
from portal.billing.models import CreditNote, LedgerEntry
from portal.billing.money import Money
from portal.extensions import db
from portal.payments.gateway import RefundResult
from portal.payments.models import Payment, Refund
from tests.conftest import app_with_own_database, login_as
from tests.factories import make_account, make_dispute, make_invoice, make_user

TRIES = 4


def _setup(app: Flask) -> dict[str, Any]:
    with app.app_context():
        session = db.session
        account = make_account(session)
        invoice = make_invoice(session, account, (5000, 2500))
        dispute = make_dispute(session, account, invoice, 2500, line_ids=[invoice.lines[1].id])
        payment = billing.record_payment(
            session,
            account,
            Money(7500, "USD"),
            [(invoice, Money(7500, "USD"))],
            received_at=datetime(2026, 11, 1, tzinfo=UTC),
        )
        payment.stripe_payment_intent_id = "pi_double"
        support = make_user(session, staff_role="admin")
        session.commit()
        clients = []
        for _ in range(TRIES):
            client = app.test_client()
            login_as(client, support)
            clients.append(client)
        db.session.commit()
        return {
            "dispute": dispute.public_id,
            "dispute_id": dispute.id,
            "payment": payment.public_id,
            "account_id": account.id,
            "clients": clients,
        }


def _at_once(clients: list[FlaskClient], send: Callable[[FlaskClient], Any]) -> list[int]:
    start = threading.Barrier(len(clients))
    statuses: list[int] = []
    lock = threading.Lock()

    def work(client: FlaskClient) -> None:
        start.wait()
        status = send(client).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=work, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return statuses


def test_a_double_submitted_credit_makes_one_credit_note(backend: str, tmp_path: Path) -> None:
    with app_with_own_database(backend, tmp_path, "staff_credit") as app:
        w = _setup(app)
        statuses = _at_once(
            w["clients"],
            lambda c: c.post(f"/staff/disputes/{w['dispute']}/credit", data={"amount": "25.00"}),
        )
        assert sorted(statuses) == [303] + [409] * (TRIES - 1), statuses
        with app.app_context():
            notes = db.session.scalar(
                select(func.count())
                .select_from(CreditNote)
                .where(CreditNote.dispute_id == w["dispute_id"])
            )
            assert notes == 1


class SlowGateway:
    """Answers the refund call after a pause (a wider window for a race), counting calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def create_refund(self, *, payment_intent: str, amount_minor: int, idempotency_key: str) -> Any:
        with self.lock:
            self.calls += 1
        time.sleep(0.2)
        return RefundResult(
            id=f"re_{idempotency_key[-8:]}", status="succeeded", amount=amount_minor
        )


def test_a_double_submitted_refund_makes_one_refund(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = SlowGateway()
    monkeypatch.setattr("portal.staff.routes.gateway", lambda: gw)
    with app_with_own_database(backend, tmp_path, "staff_refund") as app:
        w = _setup(app)
        statuses = _at_once(
            w["clients"],
            lambda c: c.post(
                f"/staff/disputes/{w['dispute']}/refund",
                data={"payment": w["payment"], "amount": "25.00"},
            ),
        )
        assert sorted(statuses) == [303] + [409] * (TRIES - 1), statuses
        assert gw.calls == 1
        with app.app_context():
            refunds = db.session.scalars(
                select(Refund).where(Refund.dispute_id == w["dispute_id"])
            ).all()
            assert [r.status for r in refunds] == ["succeeded"]
            entries = db.session.scalar(
                select(func.count())
                .select_from(LedgerEntry)
                .where(LedgerEntry.account_id == w["account_id"], LedgerEntry.kind == "refund")
            )
            assert entries == 1
            payment = db.session.scalar(select(Payment).where(Payment.public_id == w["payment"]))
            assert payment.amount_refunded_minor == 2500
