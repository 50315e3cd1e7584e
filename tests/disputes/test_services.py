"""Opening, following and closing disputes: the amount limits, one open dispute per line,
the state machine, the thread and its files."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.audit.services import Actor
from portal.billing import services as billing
from portal.billing.models import Invoice
from portal.billing.money import Money
from portal.disputes import services
from portal.disputes.evidence import EvidenceRefused, EvidenceStore
from portal.disputes.models import Attachment, Dispute, DisputeLine, DisputeStatus
from portal.disputes.queries import (
    customer_attachments,
    customer_messages,
    dispute_events,
    held_by_invoice,
)
from portal.errors import Conflict, NotAllowed, ValidationFailed
from portal.notifications.models import OutboxEmail
from tests.factories import (
    make_account,
    make_dispute,
    make_invoice,
    make_user,
    pdf_bytes,
    png_bytes,
)

S = DisputeStatus
STAFF = Actor("staff", None)


def staff_actor(session: Session) -> Actor:
    return Actor("staff", make_user(session, staff_role="support").id)


def setup(session: Session, amounts: tuple[int, ...] = (1500, 500)) -> tuple[object, Invoice]:
    account = make_account(session)
    return account, make_invoice(session, account, list(amounts))


def audit_actions(session: Session, dispute: Dispute) -> list[str]:
    return list(
        session.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.target_type == "dispute", AuditEvent.target_id == dispute.public_id)
            .order_by(AuditEvent.id)
        )
    )


# -- opening ---------------------------------------------------------------------------------


def test_a_whole_invoice_dispute_holds_its_amount_and_emails_the_customer(
    session: Session, clock: object
) -> None:
    account, invoice = setup(session)
    dispute = make_dispute(session, account, invoice, 1200, description="<b>Too much</b>")
    assert (dispute.status, dispute.amount_minor, dispute.lines) == ("open", 1200, [])
    assert held_by_invoice(session, [invoice.id]) == {invoice.id: 1200}
    # opened Saturday 21 November 2026 at noon UTC: due two business days later
    assert dispute.response_due_at.isoformat() == "2026-11-24T17:00:00+00:00"
    assert [e.status for e in dispute_events(session, dispute.id)] == ["open"]
    [event] = session.scalars(select(AuditEvent).where(AuditEvent.action == "dispute.opened"))
    assert event.after["amount_minor"] == 1200 and event.before is None
    [email] = session.scalars(select(OutboxEmail).where(OutboxEmail.account_id == account.id))
    assert email.template == "dispute_received" and email.to_address == account.billing_email
    assert dispute.public_id in email.text_body


def test_chosen_lines_share_the_amount_in_proportion(session: Session) -> None:
    account, invoice = setup(session, (1500, 500, 1000))
    first, _second, third = invoice.lines
    dispute = make_dispute(session, account, invoice, 1001, line_ids=[first.id, third.id])
    shares = {line.invoice_line_id: line.amount_minor for line in dispute.lines}
    assert shares == {first.id: 601, third.id: 400}
    assert all(line.is_open for line in dispute.lines)


@pytest.mark.parametrize(
    ("amount", "error"),
    [
        (2001, ValidationFailed),  # above the invoice's total
        (0, ValidationFailed),
        (-500, ValidationFailed),
        (10**20, ValidationFailed),  # absurd
    ],
)
def test_amounts_outside_what_was_charged_are_refused(
    session: Session, amount: int, error: type[Exception]
) -> None:
    account, invoice = setup(session)
    with pytest.raises(error):
        services.open_dispute(
            session,
            account=account,
            invoice=invoice,
            amount=Money(amount, "USD"),
            reason="wrong_amount",
            description="x",
            actor=Actor("customer", None),
            target=services.ResponseTarget(),
        )
    assert session.scalars(select(Dispute).where(Dispute.invoice_id == invoice.id)).all() == []


def test_a_line_cannot_be_disputed_for_more_than_it_charged(session: Session) -> None:
    account, invoice = setup(session)
    _first, second = invoice.lines
    with pytest.raises(ValidationFailed, match="at most"):
        make_dispute(session, account, invoice, 501, line_ids=[second.id])
    assert make_dispute(session, account, invoice, 500, line_ids=[second.id]).amount_minor == 500


def test_credits_on_a_line_reduce_what_can_be_disputed(session: Session) -> None:
    account, invoice = setup(session)
    first, _second = invoice.lines
    billing.issue_credit_note(
        session,
        invoice,
        Money(1000, "USD"),
        reason="goodwill",
        lines=[(first, "Goodwill", Money(1000, "USD"))],
    )
    with pytest.raises(ValidationFailed, match="at most"):
        make_dispute(session, account, invoice, 501, line_ids=[first.id])
    with pytest.raises(ValidationFailed, match="at most"):
        make_dispute(session, account, invoice, 1001)


def test_wrong_currency_unknown_reason_and_empty_description_are_refused(
    session: Session,
) -> None:
    account, invoice = setup(session)
    actor = Actor("customer", None)
    target = services.ResponseTarget()
    for changes in (
        {"amount": Money(100, "EUR")},
        {"reason": "because"},
        {"description": "   "},
        {"description": "x" * 4001},
    ):
        values = {"amount": Money(100, "USD"), "reason": "other", "description": "Why"}
        values.update(changes)
        with pytest.raises(ValidationFailed):
            services.open_dispute(
                session, account=account, invoice=invoice, actor=actor, target=target, **values
            )


def test_another_accounts_invoice_cannot_be_disputed(session: Session) -> None:
    _account, invoice = setup(session)
    from portal.errors import NotFound

    with pytest.raises(NotFound):
        make_dispute(session, make_account(session), invoice, 100)


def test_a_line_cannot_be_in_two_open_disputes(session: Session) -> None:
    account, invoice = setup(session)
    first, second = invoice.lines
    dispute = make_dispute(session, account, invoice, 300, line_ids=[first.id])
    with pytest.raises(Conflict, match="already being looked at"):
        make_dispute(session, account, invoice, 300, line_ids=[first.id, second.id])
    with pytest.raises(Conflict, match="already being looked at"):
        make_dispute(session, account, invoice, 300)  # the whole invoice overlaps it
    other = make_dispute(session, account, invoice, 300, line_ids=[second.id])
    services.withdraw(session, dispute, actor=Actor("customer", None))
    assert held_by_invoice(session, [invoice.id]) == {invoice.id: 300}
    # once withdrawn, its line is free again
    again = make_dispute(session, account, invoice, 300, line_ids=[first.id])
    assert {d.status for d in (dispute, other, again)} == {"withdrawn", "open"}


def test_lines_cannot_be_disputed_while_the_whole_invoice_is(session: Session) -> None:
    account, invoice = setup(session)
    make_dispute(session, account, invoice, 100)
    with pytest.raises(Conflict, match="whole invoice"):
        make_dispute(session, account, invoice, 100, line_ids=[invoice.lines[0].id])


def test_the_database_refuses_a_second_open_row_for_one_line(session: Session) -> None:
    account, invoice = setup(session)
    line = invoice.lines[0]
    first = make_dispute(session, account, invoice, 100, line_ids=[line.id])
    second = Dispute(
        account_id=account.id,
        invoice_id=invoice.id,
        currency="USD",
        amount_minor=100,
        reason="other",
        description="raw",
        status="open",
    )
    session.add(second)
    session.flush()
    with pytest.raises(IntegrityError), session.begin_nested():
        session.execute(
            insert(DisputeLine).values(
                dispute_id=second.id, invoice_line_id=line.id, amount_minor=100, is_open=True
            )
        )
    # a closed row for the same line is fine (history)
    session.execute(
        insert(DisputeLine).values(
            dispute_id=second.id, invoice_line_id=line.id, amount_minor=100, is_open=False
        )
    )
    assert first.lines[0].is_open


def test_a_void_invoice_cannot_be_disputed_but_a_paid_one_can(session: Session) -> None:
    account = make_account(session)
    void = make_invoice(session, account, [1000])
    billing.void_invoice(session, void)
    with pytest.raises(Conflict):
        make_dispute(session, account, void, 100)
    paid = make_invoice(session, account, [1000])
    billing.record_payment(
        session,
        account,
        Money(1000, "USD"),
        [(paid, Money(1000, "USD"))],
        received_at=paid.finalized_at,
    )
    assert make_dispute(session, account, paid, 1000).status == "open"


# -- the state machine ------------------------------------------------------------------------


def test_transitions_follow_the_table_and_are_audited_with_before_and_after(
    session: Session,
) -> None:
    account, invoice = setup(session)
    dispute = make_dispute(session, account, invoice, 500)
    staff = staff_actor(session)
    services.transition(session, dispute, S.IN_REVIEW, staff)
    services.transition(session, dispute, S.WAITING_ON_CUSTOMER, staff)
    with pytest.raises(Conflict):
        services.transition(session, dispute, S.OPEN, staff)
    services.transition(session, dispute, S.REJECTED, staff, note="The price was agreed.")
    assert dispute.resolution == "rejected" and dispute.resolved_at is not None
    for target in S:
        with pytest.raises(Conflict):
            services.transition(session, dispute, target, staff)
    assert [e.status for e in dispute_events(session, dispute.id)] == [
        "open",
        "in_review",
        "waiting_on_customer",
        "rejected",
    ]
    [event] = session.scalars(select(AuditEvent).where(AuditEvent.action == "dispute.rejected"))
    assert event.before == {"status": "waiting_on_customer", "resolution": None}
    assert event.after == {"status": "rejected", "resolution": "rejected"}
    assert held_by_invoice(session, [invoice.id]) == {}
    templates = session.scalars(
        select(OutboxEmail.template).where(OutboxEmail.account_id == account.id)
    ).all()
    assert sorted(templates) == ["dispute_received", "dispute_resolved"]


def test_every_status_has_a_row_and_final_ones_lead_nowhere() -> None:
    assert set(services.ALLOWED_TRANSITIONS) == set(S)
    for final in services.FINAL_STATUSES:
        assert services.ALLOWED_TRANSITIONS[final] == frozenset()


def test_a_rejection_needs_a_reason(session: Session) -> None:
    account, invoice = setup(session)
    dispute = make_dispute(session, account, invoice, 500)
    with pytest.raises(ValidationFailed):
        services.transition(session, dispute, S.REJECTED, staff_actor(session), note=" ")


def test_a_customer_may_only_withdraw_or_answer(session: Session) -> None:
    account, invoice = setup(session)
    dispute = make_dispute(session, account, invoice, 500)
    customer = Actor("customer", None)
    for target in (S.RESOLVED, S.REJECTED, S.WAITING_ON_CUSTOMER, S.IN_REVIEW):
        with pytest.raises(NotAllowed):
            services.transition(session, dispute, target, customer, note="no")
    services.withdraw(session, dispute, actor=customer)
    assert dispute.status == "withdrawn"
    assert audit_actions(session, dispute) == ["dispute.opened", "dispute.withdrawn"]


# -- the thread and its files ------------------------------------------------------------------


def test_staff_replies_email_the_customer_and_internal_notes_stay_internal(
    session: Session,
) -> None:
    account, invoice = setup(session)
    dispute = make_dispute(session, account, invoice, 500)
    staff = staff_actor(session)
    note = services.add_message(
        session, dispute, body="Looks like a typo", actor=staff, is_internal=True
    )
    assert dispute.first_response_at is None
    services.transition(session, dispute, S.WAITING_ON_CUSTOMER, staff)
    reply = services.add_message(session, dispute, body="Can you send the contract?", actor=staff)
    assert dispute.first_response_at is not None
    assert customer_messages(session, dispute.id) == [reply]
    assert note.is_internal
    emails = session.scalars(
        select(OutboxEmail).where(OutboxEmail.account_id == account.id).order_by(OutboxEmail.id)
    ).all()
    assert [e.template for e in emails] == ["dispute_received", "dispute_replied"]
    assert "contract" in emails[1].text_body and "typo" not in emails[1].text_body
    with pytest.raises(NotAllowed):
        services.add_message(
            session, dispute, body="x", actor=Actor("customer", None), is_internal=True
        )
    # the customer's answer hands the dispute back to support
    services.add_message(session, dispute, body="Here it is", actor=Actor("customer", None))
    assert dispute.status == "in_review"


def test_a_first_staff_reply_puts_a_submitted_dispute_in_review(session: Session) -> None:
    account, invoice = setup(session)
    dispute = make_dispute(session, account, invoice, 500)
    staff = staff_actor(session)
    services.add_message(session, dispute, body="Checking", actor=staff, is_internal=True)
    assert dispute.status == "open"  # an internal note is not an answer
    services.add_message(session, dispute, body="We are looking into it.", actor=staff)
    assert dispute.status == "in_review"
    assert [e.status for e in dispute_events(session, dispute.id)] == ["open", "in_review"]
    services.transition(session, dispute, S.WAITING_ON_CUSTOMER, staff)
    services.add_message(session, dispute, body="Anything else?", actor=staff)
    assert dispute.status == "waiting_on_customer"  # a later reply leaves the status alone


def test_files_keep_their_visibility_when_their_message_is_deleted(
    session: Session, tmp_path: Path
) -> None:
    account, invoice = setup(session)
    dispute = make_dispute(session, account, invoice, 500)
    store = EvidenceStore(tmp_path)
    staff = staff_actor(session)
    customer_user = make_user(session, account=account)
    customer = Actor("customer", customer_user.id)
    note = services.add_message(session, dispute, body="Internal", actor=staff, is_internal=True)
    hidden = services.add_attachment(
        session,
        dispute,
        data=pdf_bytes(),
        filename="bank.pdf",
        actor=staff,
        store=store,
        max_bytes=10**6,
        message=note,
    )
    message = services.add_message(session, dispute, body="Photo attached", actor=customer)
    photo = services.add_attachment(
        session,
        dispute,
        data=png_bytes(),
        filename="../../photo.png",
        actor=customer,
        store=store,
        max_bytes=10**6,
        message=message,
    )
    loose = services.add_attachment(
        session,
        dispute,
        data=png_bytes(),
        filename="",
        actor=customer,
        store=store,
        max_bytes=10**6,
    )
    assert hidden.visibility == "internal" and photo.visibility == "customer"
    assert photo.filename == "photo.png" and loose.filename == "evidence.png"
    assert (tmp_path / photo.storage_key).read_bytes() == png_bytes()
    assert customer_attachments(session, dispute.id) == [photo, loose]
    services.delete_message(session, dispute, note, actor=staff)
    services.delete_message(session, dispute, message, actor=customer)
    assert customer_attachments(session, dispute.id) == [loose]
    assert customer_messages(session, dispute.id) == []
    assert session.get(Attachment, hidden.id).visibility == "internal"
    # a customer cannot delete staff's messages, nor attach internal files
    reply = services.add_message(session, dispute, body="Reply", actor=staff)
    with pytest.raises(NotAllowed):
        services.delete_message(session, dispute, reply, actor=customer)
    with pytest.raises(NotAllowed):
        services.add_attachment(
            session,
            dispute,
            data=png_bytes(),
            filename="x.png",
            actor=customer,
            store=store,
            max_bytes=10**6,
            internal=True,
        )


def test_a_refused_file_leaves_nothing_behind(session: Session, tmp_path: Path) -> None:
    account, invoice = setup(session)
    dispute = make_dispute(session, account, invoice, 500)
    with pytest.raises(EvidenceRefused):
        services.add_attachment(
            session,
            dispute,
            data=b"#!/bin/sh\n",
            filename="photo.png",
            actor=Actor("customer", None),
            store=EvidenceStore(tmp_path),
            max_bytes=10**6,
        )
    assert list(tmp_path.iterdir()) == []
    assert (
        session.scalars(select(Attachment).where(Attachment.dispute_id == dispute.id)).all() == []
    )
