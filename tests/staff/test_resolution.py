"""Resolving disputes from the console: credit notes (whole or per line, on open and paid
invoices), refunds through the gateway (answer, lost answer, refusal), rejections, the support
limit and the second-person approval."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.audit.services import Actor
from portal.billing import ledger
from portal.billing import services as billing
from portal.billing.models import CreditNote, LedgerEntry
from portal.billing.money import Money
from portal.db import has_pending_changes
from portal.disputes.models import ApprovalRequest, Dispute
from portal.errors import Conflict, NotAllowed
from portal.notifications.models import OutboxEmail
from portal.payments.gateway import Charge, GatewayRejected, GatewayUnavailable, RefundResult
from portal.payments.models import Payment, Refund
from portal.payments.refunds import settle_from_charge, settle_pending_refunds
from portal.staff import resolution
from tests.conftest import login_as
from tests.factories import make_account, make_dispute, make_invoice, make_user

LIMITS = resolution.parse_limits("USD=100")  # support: up to $100.00 per resolution


def _actor(user: Any) -> Actor:
    return Actor("staff", user.id, "127.0.0.1")


def _world(session: Session, amounts: tuple[int, ...] = (5000, 2500)) -> dict[str, Any]:
    account = make_account(session, name="Ada Lovelace Studio")
    ada = make_user(session, account=account)
    invoice = make_invoice(session, account, amounts)
    dispute = make_dispute(session, account, invoice, 2500, line_ids=[invoice.lines[1].id])
    support = make_user(session, staff_role="support")
    admin = make_user(session, staff_role="admin")
    session.commit()
    return {
        "account": account,
        "ada": ada,
        "invoice": invoice,
        "dispute": dispute,
        "support": support,
        "admin": admin,
    }


def _emails(session: Session, template: str) -> list[OutboxEmail]:
    return list(session.scalars(select(OutboxEmail).where(OutboxEmail.template == template)))


def test_a_partial_credit_note_per_line_resolves_and_lowers_what_is_owed(
    session: Session,
) -> None:
    w = _world(session)
    line = w["invoice"].lines[1]
    plan = resolution.credit_plan(
        w["dispute"], w["invoice"].lines, whole_minor=None, line_minor={line.id: 1500}, memo="Sorry"
    )
    outcome = resolution.resolve_by_credit(
        session,
        w["dispute"].public_id,
        plan,
        user=w["support"],
        actor=_actor(w["support"]),
        limits=LIMITS,
    )
    assert outcome.kind == "credited"
    note = outcome.credit_note
    assert note is not None and note.dispute_id == w["dispute"].id and note.amount_minor == 1500
    assert [(cl.invoice_line_id, cl.amount_minor) for cl in note.lines] == [(line.id, 1500)]
    assert w["invoice"].amount_due_minor == 7500 - 1500
    assert ledger.balance(session, w["account"].id, "USD").minor == 6000
    session.refresh(w["dispute"])
    assert (w["dispute"].status, w["dispute"].resolution) == ("resolved", "credit_note")
    assert len(_emails(session, "dispute_resolved")) == 1
    # A second try (a double submit that came later) finds it resolved: no second credit note.
    with pytest.raises(Conflict):
        resolution.resolve_by_credit(
            session,
            w["dispute"].public_id,
            plan,
            user=w["support"],
            actor=_actor(w["support"]),
            limits=LIMITS,
        )
    count = session.scalar(
        select(func.count()).select_from(CreditNote).where(CreditNote.dispute_id == w["dispute"].id)
    )
    assert count == 1


def test_a_credit_on_a_paid_invoice_becomes_credit_on_the_balance(session: Session) -> None:
    w = _world(session)
    billing.record_payment(
        session,
        w["account"],
        Money(7500, "USD"),
        [(w["invoice"], Money(7500, "USD"))],
        received_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    session.commit()
    assert w["invoice"].status == "paid"
    plan = resolution.CreditPlan(Money(2500, "USD"))
    resolution.resolve_by_credit(
        session, w["dispute"].public_id, plan, user=w["admin"], actor=_actor(w["admin"]), limits={}
    )
    assert ledger.balance(session, w["account"].id, "USD").minor == -2500  # in credit


def test_above_the_limit_an_admin_other_than_the_requester_approves(session: Session) -> None:
    w = _world(session, (50000, 25000))
    dispute = w["dispute"]
    plan = resolution.CreditPlan(Money(20000, "USD"))  # $200 > the $100 limit
    outcome = resolution.resolve_by_credit(
        session,
        dispute.public_id,
        plan,
        user=w["support"],
        actor=_actor(w["support"]),
        limits=LIMITS,
    )
    assert outcome.kind == "approval_requested"
    request = outcome.approval
    assert request is not None and request.status == "pending"
    assert session.scalar(select(func.count()).select_from(CreditNote)) == 0
    session.refresh(dispute)
    assert dispute.status == "open"
    # Asking again while one waits is refused.
    with pytest.raises(Conflict):
        resolution.resolve_by_credit(
            session,
            dispute.public_id,
            plan,
            user=w["support"],
            actor=_actor(w["support"]),
            limits=LIMITS,
        )
    gw = StubGateway()
    # The requester cannot approve (not an admin, and not a second person); another support
    # user cannot either.
    for who in (w["support"], make_user(session, staff_role="support")):
        with pytest.raises(NotAllowed):
            resolution.approve(session, gw, request.public_id, decider=who, actor=_actor(who))
    outcome = resolution.approve(
        session, gw, request.public_id, decider=w["admin"], actor=_actor(w["admin"])
    )
    assert outcome.kind == "credited"
    session.refresh(request)
    assert (request.status, request.decided_by_user_id) == ("done", w["admin"].id)
    with pytest.raises(Conflict):
        resolution.approve(
            session, gw, request.public_id, decider=w["admin"], actor=_actor(w["admin"])
        )


def test_an_admin_cannot_approve_their_own_request(session: Session) -> None:
    w = _world(session)
    request = ApprovalRequest(
        kind="credit_note",
        dispute_id=w["dispute"].id,
        account_id=w["account"].id,
        currency="USD",
        amount_minor=2000,
        payload={"lines": [], "memo": ""},
        requested_by_user_id=w["admin"].id,
    )
    session.add(request)
    session.commit()
    with pytest.raises(NotAllowed):
        resolution.approve(
            session, StubGateway(), request.public_id, decider=w["admin"], actor=_actor(w["admin"])
        )


def test_a_rejection_needs_an_explanation_and_closes(session: Session) -> None:
    from portal.errors import ValidationFailed

    w = _world(session)
    with pytest.raises(ValidationFailed):
        resolution.reject(session, w["dispute"].public_id, "  no ", actor=_actor(w["support"]))
    resolution.reject(
        session,
        w["dispute"].public_id,
        "The seat was used on 3 November; see the usage report.",
        actor=_actor(w["support"]),
    )
    session.refresh(w["dispute"])
    assert (w["dispute"].status, w["dispute"].resolution) == ("rejected", "rejected")
    assert len(_emails(session, "dispute_resolved")) == 1


# -- refunds ------------------------------------------------------------------------------------


@dataclass
class StubGateway:
    """A gateway whose refund call answers, loses its answer, or refuses; it checks that the
    refund row and key were committed before it was called."""

    mode: str = "ok"
    calls: list[dict[str, Any]] = field(default_factory=list)
    session: Session | None = None
    refunded: int = 0

    def create_refund(
        self, *, payment_intent: str, amount_minor: int, idempotency_key: str
    ) -> RefundResult:
        if self.session is not None:
            assert not has_pending_changes(self.session), "Stripe called with changes unsaved"
            saved = self.session.scalar(
                select(Refund).where(Refund.idempotency_key == idempotency_key)
            )
            assert saved is not None and saved.status == "pending"
        self.calls.append(
            {"intent": payment_intent, "amount": amount_minor, "key": idempotency_key}
        )
        if self.mode == "lost":
            self.refunded += amount_minor  # Stripe did it; the answer never arrived
            raise GatewayUnavailable()
        if self.mode == "refused":
            raise GatewayRejected("The charge was already refunded.")
        self.refunded += amount_minor
        return RefundResult(id=f"re_{len(self.calls)}", status="succeeded", amount=amount_minor)

    def retrieve_payment_intent(self, intent_id: str) -> Any:
        raise GatewayUnavailable()

    def find_charge(self, charge_id: str) -> Charge:
        return Charge(charge_id, "pi_test", 7500, self.refunded, "USD")


def _paid(session: Session, w: dict[str, Any]) -> Payment:
    payment = billing.record_payment(
        session,
        w["account"],
        Money(7500, "USD"),
        [(w["invoice"], Money(7500, "USD"))],
        received_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    payment.stripe_payment_intent_id = f"pi_{payment.public_id}"
    payment.stripe_charge_id = f"ch_{payment.public_id}"
    session.commit()
    return payment


def _refund(session: Session, w: dict[str, Any], gw: StubGateway, minor: int = 2500) -> Any:
    payment = session.scalar(select(Payment).where(Payment.account_id == w["account"].id))
    plan = resolution.RefundPlan(payment.public_id, Money(minor, "USD"), "Refunding the seat")
    return resolution.resolve_by_refund(
        session,
        gw,
        w["dispute"].public_id,
        plan,
        user=w["support"],
        actor=_actor(w["support"]),
        limits=LIMITS,
    )


def _refund_entries(session: Session, account_id: int) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(LedgerEntry)
            .where(LedgerEntry.account_id == account_id, LedgerEntry.kind == "refund")
        )
        or 0
    )


def test_a_refund_saves_its_key_before_stripe_and_resolves(session: Session) -> None:
    w = _world(session)
    payment = _paid(session, w)
    gw = StubGateway(session=session)
    outcome = _refund(session, w, gw)
    assert outcome.kind == "refunded"
    assert len(gw.calls) == 1 and gw.calls[0]["key"].startswith("refund:")
    session.refresh(payment)
    assert payment.amount_refunded_minor == 2500
    assert _refund_entries(session, w["account"].id) == 1
    session.refresh(w["dispute"])
    assert (w["dispute"].status, w["dispute"].resolution) == ("resolved", "refund")
    # The charge.refunded webhook that follows finds nothing left to record.
    settle_from_charge(session, payment, 2500)
    assert _refund_entries(session, w["account"].id) == 1


def test_a_lost_answer_leaves_the_refund_pending_for_reconcile(session: Session) -> None:
    w = _world(session)
    payment = _paid(session, w)
    gw = StubGateway(mode="lost", session=session)
    outcome = _refund(session, w, gw)
    assert outcome.kind == "refund_pending"
    refund = session.scalar(select(Refund).where(Refund.dispute_id == w["dispute"].id))
    assert refund is not None and refund.status == "pending"
    session.refresh(w["dispute"])
    assert w["dispute"].status == "open"
    # Another submit meanwhile makes no second refund.
    with pytest.raises(Conflict):
        _refund(session, w, gw)
    assert len(gw.calls) == 1
    # billing reconcile asks Stripe for the charge and settles it, once.
    settled, unreachable = settle_pending_refunds(
        session, gw, session.commit, older_than=__import__("datetime").timedelta(0)
    )
    assert settled and not unreachable
    session.refresh(refund)
    session.refresh(payment)
    assert refund.status == "succeeded" and payment.amount_refunded_minor == 2500
    assert _refund_entries(session, w["account"].id) == 1
    session.refresh(w["dispute"])
    assert w["dispute"].status == "resolved"
    assert settle_pending_refunds(
        session, gw, session.commit, older_than=__import__("datetime").timedelta(0)
    ) == ([], [])


def test_a_refused_refund_fails_and_the_dispute_stays_open(session: Session) -> None:
    w = _world(session)
    _paid(session, w)
    outcome = _refund(session, w, StubGateway(mode="refused"))
    assert outcome.kind == "refund_failed"
    refund = session.scalar(select(Refund).where(Refund.dispute_id == w["dispute"].id))
    assert refund is not None and refund.status == "failed"
    session.refresh(w["dispute"])
    assert w["dispute"].status == "open"


def test_a_refund_above_the_limit_waits_for_an_admin(session: Session) -> None:
    w = _world(session, (50000, 25000))
    payment = billing.record_payment(
        session,
        w["account"],
        Money(75000, "USD"),
        [(w["invoice"], Money(75000, "USD"))],
        received_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    payment.stripe_payment_intent_id = "pi_big"
    session.commit()
    gw = StubGateway(session=session)
    outcome = _refund(session, w, gw, minor=20000)
    assert outcome.kind == "approval_requested" and gw.calls == []
    outcome = resolution.approve(
        session, gw, outcome.approval.public_id, decider=w["admin"], actor=_actor(w["admin"])
    )
    assert outcome.kind == "refunded" and len(gw.calls) == 1


def test_bad_refund_amounts_are_refused(session: Session) -> None:
    from portal.errors import ValidationFailed

    w = _world(session)
    _paid(session, w)
    for minor in (0, -5, 7501):
        with pytest.raises(ValidationFailed):
            _refund(session, w, StubGateway(), minor=minor)
        session.rollback()


def test_the_console_pages_and_forms(
    client: FlaskClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(client.application.config, "STAFF_CREDIT_LIMITS", "USD=100")
    w = _world(session)
    login_as(client, w["support"])
    page = client.get(f"/staff/disputes/{w['dispute'].public_id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Ada Lovelace Studio" in html and "Your limit is $100.00" in html
    assert (
        client.post(
            f"/staff/disputes/{w['dispute'].public_id}/assign", data={"assignee": "me"}
        ).status_code
        == 303
    )
    assert (
        client.post(
            f"/staff/disputes/{w['dispute'].public_id}/reply", data={"body": "Looking into it."}
        ).status_code
        == 303
    )
    assert len(_emails(session, "dispute_replied")) == 1
    assert (
        client.post(
            f"/staff/disputes/{w['dispute'].public_id}/note", data={"note-body": "Check usage."}
        ).status_code
        == 303
    )
    assert (
        client.post(
            f"/staff/disputes/{w['dispute'].public_id}/status",
            data={"status": "waiting_on_customer"},
        ).status_code
        == 303
    )
    html = client.get(f"/staff/disputes/{w['dispute'].public_id}").get_data(as_text=True)
    assert "Internal note: the customer never sees this" in html
    # Bad input: clear messages, nothing changes, never a 500.
    for data in ({"amount": "-5"}, {"amount": "abc"}, {"amount": "1e6"}, {"amount": "0.001"}, {}):
        response = client.post(f"/staff/disputes/{w['dispute'].public_id}/credit", data=data)
        assert response.status_code == 422, data
    assert (
        client.post(
            f"/staff/disputes/{w['dispute'].public_id}/credit", data={"amount": "99999999999999"}
        ).status_code
        == 422
    )
    assert (
        client.post(
            f"/staff/disputes/{w['dispute'].public_id}/reject", data={"explanation": "no"}
        ).status_code
        == 422
    )
    assert session.scalar(select(func.count()).select_from(CreditNote)) == 0
    # A credit within the limit resolves it; the queue no longer lists it as open.
    done = client.post(f"/staff/disputes/{w['dispute'].public_id}/credit", data={"amount": "25.00"})
    assert done.status_code == 303
    session.expire_all()
    assert session.get(Dispute, w["dispute"].id).status == "resolved"
    assert client.get("/staff/approvals").status_code == 200


def test_the_customer_sees_the_outcome_of_a_credit_first(
    client: FlaskClient, session: Session
) -> None:
    """Resolved by a credit note: the customer's page leads with the credit note, its amount,
    what it reduces and support's note; an internal note never shows."""
    w = _world(session)
    line = w["invoice"].lines[1]
    plan = resolution.credit_plan(
        w["dispute"],
        w["invoice"].lines,
        whole_minor=None,
        line_minor={line.id: 1500},
        memo="One seat removed on 2 December.",
    )
    note = resolution.resolve_by_credit(
        session,
        w["dispute"].public_id,
        plan,
        user=w["support"],
        actor=_actor(w["support"]),
        limits=LIMITS,
    ).credit_note
    session.commit()
    login_as(client, w["ada"])
    html = client.get(f"/disputes/{w['dispute'].public_id}").get_data(as_text=True)
    outcome = html.split('data-testid="outcome"', 1)[1].split("</section>", 1)[0]
    assert note is not None and note.number in outcome
    assert "−$15.00" in outcome
    assert "One seat removed on 2 December." in outcome
    assert "It reduces what you owe on invoice" in outcome
