"""Card chargebacks from Stripe's webhooks: a dispute against the payment (and its invoice),
the evidence deadline, the ledger's withdrawal, fee and reinstatement; duplicates and any
order converge; an object Stripe does not know changes nothing.

localstripe has no disputes, so Stripe's copy of each dispute (what the handler fetches before
it acts) is served by replacing Gateway.find_dispute; the events are signed like Stripe's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.billing import ledger
from portal.billing import services as billing
from portal.billing.models import LedgerEntry
from portal.billing.money import Money
from portal.disputes.models import Dispute
from portal.disputes.queries import dispute_events
from portal.payments.gateway import Dispute as StripeDispute
from portal.payments.gateway import DisputeFunds, Gateway
from portal.payments.models import StripeEvent
from tests.factories import make_account, make_invoice
from tests.payments.conftest import WEBHOOK_SECRET, event_body, sign

DUE = datetime(2026, 12, 10, 23, 59, tzinfo=UTC)
WITHDRAWN = DisputeFunds("txn_withdrawn", -4200, 1500, "USD")
REINSTATED = DisputeFunds("txn_reinstated", 4200, 0, "USD")


@pytest.fixture()
def stripe_copies(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """What Stripe answers for each dispute id (absent: Stripe does not know it)."""
    copies: dict[str, StripeDispute] = {}
    monkeypatch.setitem(app.config, "STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    app.extensions.pop("portal.gateway", None)
    monkeypatch.setattr(Gateway, "find_dispute", lambda self, dispute_id: copies.get(dispute_id))
    yield copies
    app.extensions.pop("portal.gateway", None)


def paid_invoice(session: Session, charge: str) -> tuple[Any, Any, Any]:
    account = make_account(session)
    invoice = make_invoice(session, account, [4200])
    payment = billing.record_payment(
        session,
        account,
        Money(4200, "USD"),
        [(invoice, Money(4200, "USD"))],
        received_at=datetime(2026, 11, 2, tzinfo=UTC),
        stripe_charge_id=charge,
        stripe_payment_intent_id=f"pi_{charge}",
    )
    session.commit()
    return account, invoice, payment


def copy(dispute_id: str, charge: str, status: str, *funds: DisputeFunds) -> StripeDispute:
    return StripeDispute(
        id=dispute_id,
        charge=charge,
        payment_intent=f"pi_{charge}",
        amount=4200,
        currency="USD",
        reason="product_not_received",
        status=status,
        evidence_due_by=DUE,
        balance_transactions=funds,
    )


def deliver(app: Flask, event_type: str, dispute_id: str, event_id: str | None = None) -> Any:
    body = event_body(
        event_type, {"id": dispute_id, "object": "dispute", "amount": 1}, event_id=event_id
    )
    return app.test_client().post(
        "/webhooks/stripe",
        data=body,
        headers={"Stripe-Signature": sign(body), "Content-Type": "application/json"},
    )


def entries(session: Session, account_id: int) -> dict[str, int]:
    session.expire_all()
    rows = session.execute(
        select(LedgerEntry.kind, func.sum(LedgerEntry.amount_minor))
        .where(LedgerEntry.account_id == account_id)
        .group_by(LedgerEntry.kind)
    )
    return dict(rows.all())


def test_a_chargeback_opens_a_dispute_and_the_ledger_shows_withdrawal_fee_and_reinstatement(
    app: Flask, session: Session, stripe_copies: dict[str, Any]
) -> None:
    account, invoice, payment = paid_invoice(session, "ch_cb1")
    stripe_copies["dp_1"] = copy("dp_1", "ch_cb1", "needs_response")
    assert deliver(app, "charge.dispute.created", "dp_1").json["outcome"] == "processed"
    session.expire_all()
    dispute = session.scalar(select(Dispute).where(Dispute.stripe_dispute_id == "dp_1"))
    assert dispute is not None
    assert (dispute.source, dispute.payment_id, dispute.invoice_id) == (
        "chargeback",
        payment.id,
        invoice.id,
    )
    assert (dispute.status, dispute.reason, dispute.stripe_reason) == (
        "open",
        "service_not_received",
        "product_not_received",
    )
    assert dispute.evidence_due_by == DUE and dispute.response_due_at == DUE
    assert entries(session, account.id) == {"invoice": 4200, "payment": -4200}

    stripe_copies["dp_1"] = copy("dp_1", "ch_cb1", "needs_response", WITHDRAWN)
    deliver(app, "charge.dispute.funds_withdrawn", "dp_1")
    assert entries(session, account.id) == {
        "invoice": 4200,
        "payment": -4200,
        "chargeback": 4200,
        "chargeback_fee": 1500,
    }
    assert ledger.balance(session, account.id, "USD") == Money(5700, "USD")

    stripe_copies["dp_1"] = copy("dp_1", "ch_cb1", "under_review", WITHDRAWN)
    deliver(app, "charge.dispute.updated", "dp_1")
    stripe_copies["dp_1"] = copy("dp_1", "ch_cb1", "won", WITHDRAWN, REINSTATED)
    deliver(app, "charge.dispute.funds_reinstated", "dp_1")
    deliver(app, "charge.dispute.closed", "dp_1")
    session.expire_all()
    dispute = session.get(Dispute, dispute.id)
    assert (dispute.status, dispute.stripe_status, dispute.fee_minor) == ("resolved", "won", 1500)
    assert [e.status for e in dispute_events(session, dispute.id)] == [
        "open",
        "in_review",
        "resolved",
    ]
    assert entries(session, account.id)["chargeback_reversal"] == -4200
    # invariant 2: the balance row is the ledger's sum (the fee stays: Stripe kept it)
    total = session.scalar(
        select(func.sum(LedgerEntry.amount_minor)).where(LedgerEntry.account_id == account.id)
    )
    assert (
        ledger.balance(session, account.id, "USD") == Money(int(total), "USD") == Money(1500, "USD")
    )
    actions = set(
        session.scalars(select(AuditEvent.action).where(AuditEvent.account_id == account.id))
    )
    assert {"dispute.chargeback_opened", "dispute.in_review", "dispute.resolved"} <= actions
    assert {"ledger.chargeback", "ledger.chargeback_fee", "ledger.chargeback_reversal"} <= actions


@pytest.mark.parametrize(
    "order",
    list(
        itertools.permutations(
            ["charge.dispute.created", "charge.dispute.funds_withdrawn", "charge.dispute.closed"]
        )
    ),
)
def test_duplicates_and_any_order_converge(
    app: Flask, session: Session, stripe_copies: dict[str, Any], order: tuple[str, ...]
) -> None:
    charge = f"ch_order_{abs(hash(order))}"
    account, _invoice, _payment = paid_invoice(session, charge)
    dispute_id = f"dp_{charge}"
    # Stripe's copy is its current state whichever event arrives first.
    stripe_copies[dispute_id] = copy(dispute_id, charge, "lost", WITHDRAWN)
    for event_type in (*order, order[0]):
        assert deliver(app, event_type, dispute_id).status_code == 200
    assert deliver(app, order[1], dispute_id, event_id="evt_same").status_code == 200
    assert deliver(app, order[1], dispute_id, event_id="evt_same").json["outcome"] == "duplicate"
    assert entries(session, account.id) == {
        "invoice": 4200,
        "payment": -4200,
        "chargeback": 4200,
        "chargeback_fee": 1500,
    }
    disputes = session.scalars(select(Dispute).where(Dispute.stripe_dispute_id == dispute_id))
    [dispute] = disputes.all()
    assert (dispute.status, dispute.stripe_status) == ("resolved", "lost")


def test_a_chargeback_stripe_does_not_know_changes_nothing(
    app: Flask, session: Session, stripe_copies: dict[str, Any]
) -> None:
    account, _invoice, _payment = paid_invoice(session, "ch_forged")
    response = deliver(app, "charge.dispute.funds_withdrawn", "dp_forged")
    assert response.status_code == 200 and response.json["outcome"] == "not_at_stripe"
    session.expire_all()
    assert session.scalar(select(Dispute).where(Dispute.stripe_dispute_id == "dp_forged")) is None
    assert entries(session, account.id) == {"invoice": 4200, "payment": -4200}
    row = session.scalar(select(StripeEvent).where(StripeEvent.object_id == "dp_forged"))
    assert row is not None and row.status == "failed"


def test_a_chargeback_on_a_payment_we_do_not_have_is_retried(
    app: Flask, session: Session, stripe_copies: dict[str, Any]
) -> None:
    stripe_copies["dp_lost"] = copy("dp_lost", "ch_nowhere", "needs_response")
    assert deliver(app, "charge.dispute.created", "dp_lost").status_code == 500
    session.expire_all()
    assert session.scalar(select(Dispute).where(Dispute.stripe_dispute_id == "dp_lost")) is None


def test_stripe_s_dispute_object_is_read_with_its_deadline_and_money() -> None:
    from portal.payments.gateway import _dispute

    parsed = _dispute(
        type(
            "Obj",
            (),
            {
                "id": "dp_x",
                "charge": "ch_x",
                "payment_intent": None,
                "amount": 4200,
                "currency": "usd",
                "reason": "fraudulent",
                "status": "needs_response",
                "evidence_details": {"due_by": int(DUE.timestamp()), "has_evidence": False},
                "balance_transactions": [
                    {"id": "txn_1", "amount": -4200, "fee": 1500, "currency": "usd"},
                    "txn_not_expanded",
                ],
            },
        )()
    )
    assert parsed.evidence_due_by == DUE.replace(second=0)
    assert parsed.balance_transactions == (DisputeFunds("txn_1", -4200, 1500, "USD"),)


def test_the_customer_sees_the_chargeback_but_cannot_withdraw_it_here(
    app: Flask, session: Session, stripe_copies: dict[str, Any]
) -> None:
    from tests.conftest import login_as
    from tests.factories import make_user

    account, _invoice, _payment = paid_invoice(session, "ch_seen")
    user = make_user(session, account=account)
    session.commit()
    stripe_copies["dp_seen"] = copy("dp_seen", "ch_seen", "needs_response")
    deliver(app, "charge.dispute.created", "dp_seen")
    session.expire_all()
    dispute = session.scalar(select(Dispute).where(Dispute.stripe_dispute_id == "dp_seen"))
    client = app.test_client()
    login_as(client, user)
    page = client.get(f"/disputes/{dispute.public_id}").get_data(as_text=True)
    assert "disputed with your bank" in page and "Withdraw my question" not in page
    assert client.post(f"/disputes/{dispute.public_id}/withdraw").status_code == 303
    session.expire_all()
    assert session.get(Dispute, dispute.id).status == "open"
