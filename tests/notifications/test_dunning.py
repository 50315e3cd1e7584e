"""Dunning: the reminder schedule, what it skips, never the same reminder twice (also from two
workers at once), cancelling a queued reminder of a paid invoice."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.billing.models import Invoice
from portal.disputes.models import Dispute
from portal.extensions import db
from portal.notifications import dunning
from portal.notifications.dunning import Step, schedule, send_reminders, step_due
from portal.notifications.models import EmailPreference, OutboxEmail, ReminderSent
from portal.payments.gateway import Intent
from portal.payments.models import PaymentAttempt, PaymentAttemptItem
from portal.payments.services import fulfil_payment
from tests.conftest import app_with_own_database
from tests.factories import make_account, make_invoice, make_user

DUE = date(2026, 12, 1)


def _open_invoice(session: Session, amount: int = 5000, due: date = DUE, **account: Any) -> Invoice:
    acct = make_account(session, **account)
    make_user(session, email=acct.billing_email, account=acct)
    invoice = make_invoice(session, acct, (amount,))
    invoice.due_date = due
    session.flush()
    return invoice


def _emails(session: Session) -> list[tuple[str, str]]:
    return [
        (row.template, row.to_address)
        for row in session.scalars(select(OutboxEmail).order_by(OutboxEmail.id))
    ]


def test_the_default_schedule() -> None:
    steps = schedule({})
    assert [s.name for s in steps] == ["before_3", "after_1", "after_7", "after_14"]
    assert schedule({"DUNNING_BEFORE_DAYS": "7,2", "DUNNING_AFTER_DAYS": "30"}) == [
        Step("before_7", -7),
        Step("before_2", -2),
        Step("after_30", 30),
    ]


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        (date(2026, 11, 27), None),
        (date(2026, 11, 28), "before_3"),
        (date(2026, 11, 30), "before_3"),
        (date(2026, 12, 1), None),  # due today: no "before" any more, not overdue yet
        (date(2026, 12, 2), "after_1"),
        (date(2026, 12, 7), "after_1"),
        (date(2026, 12, 8), "after_7"),
        (date(2026, 12, 20), "after_14"),
    ],
)
def test_the_latest_step_that_has_come_due(as_of: date, expected: str | None) -> None:
    step = step_due(schedule({}), DUE, as_of)
    assert (step.name if step else None) == expected


def test_a_reminder_goes_once_per_step_and_is_audited(
    app: Flask, session: Session, clock: Any
) -> None:
    invoice = _open_invoice(session)
    session.commit()
    assert send_reminders(session, date(2026, 11, 28)) == 1
    assert send_reminders(session, date(2026, 11, 28)) == 0
    assert send_reminders(session, date(2026, 11, 29)) == 0
    rows = list(session.scalars(select(OutboxEmail)))
    assert [(r.template, r.cancel_key, r.is_essential) for r in rows] == [
        ("reminder_before_due", f"invoice:{invoice.id}", False)
    ]
    assert rows[0].subject == f"Invoice {invoice.number} is due on Dec 1, 2026"
    events = list(
        session.scalars(select(AuditEvent).where(AuditEvent.action == "invoice.reminder_sent"))
    )
    assert [(e.target_id, e.after["step"]) for e in events] == [(invoice.number, "before_3")]
    assert send_reminders(session, date(2026, 12, 2)) == 1
    assert [r.step for r in session.scalars(select(ReminderSent))] == ["before_3", "after_1"]


def test_paid_disputed_and_processing_invoices_are_skipped(
    app: Flask, session: Session, clock: Any
) -> None:
    paid = _open_invoice(session)
    paid.amount_paid_minor = paid.total_minor
    paid.status = "paid"
    disputed = _open_invoice(session, amount=5000)
    session.add(
        Dispute(
            account_id=disputed.account_id,
            invoice_id=disputed.id,
            currency="USD",
            amount_minor=5000,
            reason="wrong_amount",
            status="open",
        )
    )
    partly = _open_invoice(session, amount=5000)
    session.add(
        Dispute(
            account_id=partly.account_id,
            invoice_id=partly.id,
            currency="USD",
            amount_minor=1500,
            reason="wrong_amount",
            status="in_review",
        )
    )
    processing = _open_invoice(session)
    attempt = PaymentAttempt(
        account_id=processing.account_id,
        currency="USD",
        amount_minor=5000,
        status="processing",
        idempotency_key="pay_test_processing",
    )
    session.add(attempt)
    session.flush()
    session.add(
        PaymentAttemptItem(attempt_id=attempt.id, invoice_id=processing.id, amount_minor=5000)
    )
    session.commit()
    assert send_reminders(session, date(2026, 12, 2)) == 1
    (row,) = session.scalars(select(OutboxEmail))
    assert row.account_id == partly.account_id
    assert "$35.00" in row.text_body and "$50.00" in row.text_body  # asks only what is not held


def test_an_opted_out_account_gets_no_reminder_before_due_but_after(
    app: Flask, session: Session, clock: Any
) -> None:
    invoice = _open_invoice(session)
    session.add(
        EmailPreference(
            account_id=invoice.account_id,
            extra_recipients="",
            opt_out_reminders=True,
            opt_out_card_expiry=False,
        )
    )
    session.commit()
    assert send_reminders(session, date(2026, 11, 28)) == 0
    assert _emails(session) == []
    assert send_reminders(session, date(2026, 12, 2)) == 1
    assert [t for t, _ in _emails(session)] == ["reminder_after_due"]


def test_a_queued_reminder_of_an_invoice_paid_meanwhile_is_canceled(
    app: Flask, session: Session, clock: Any
) -> None:
    invoice = _open_invoice(session)
    session.commit()
    send_reminders(session, date(2026, 12, 2))
    (reminder,) = session.scalars(select(OutboxEmail))
    attempt = PaymentAttempt(
        account_id=invoice.account_id,
        currency="USD",
        amount_minor=invoice.total_minor,
        status="processing",
        idempotency_key="pay_test_paid",
    )
    session.add(attempt)
    session.flush()
    session.add(
        PaymentAttemptItem(
            attempt_id=attempt.id, invoice_id=invoice.id, amount_minor=invoice.total_minor
        )
    )
    session.flush()
    intent = Intent(
        id="pi_paid_meanwhile",
        status="succeeded",
        amount=invoice.total_minor,
        currency="usd",
        customer=None,
        payment_method=None,
        client_secret="",
    )
    fulfil_payment(session, attempt, intent)
    session.flush()
    session.refresh(reminder)
    assert reminder.status == "canceled"
    templates = {row.template: row.status for row in session.scalars(select(OutboxEmail))}
    assert templates == {"reminder_after_due": "canceled", "receipt": "pending"}


def test_two_workers_at_once_send_each_reminder_once(
    backend: str, tmp_path: Path, clock: Any
) -> None:
    """Many invoices due, two workers running `billing remind` at the same moment: each invoice
    gets its reminder exactly once (unique invoice + step)."""
    with app_with_own_database(backend, tmp_path, "remind") as app:
        with app.app_context():
            for _ in range(12):
                _open_invoice(db.session, due=date(2026, 12, 1))
            db.session.commit()
        start = threading.Barrier(2)
        counts: list[int] = []
        errors: list[BaseException] = []

        def work() -> None:
            try:
                with app.app_context():
                    start.wait()
                    counts.append(send_reminders(db.session, date(2026, 12, 2)))
                    db.session.remove()
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=work) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        with app.app_context():
            outbox = db.session.scalar(select(func.count()).select_from(OutboxEmail))
            marks = db.session.scalar(select(func.count()).select_from(ReminderSent))
            db.session.remove()
        assert sum(counts) == 12
        assert (outbox, marks) == (12, 12)


def test_the_command_reminds_as_of_a_day(app: Flask, session: Session, clock: Any) -> None:
    _open_invoice(session)
    session.commit()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["billing", "remind", "--as-of", "2026-11-28"])
    assert result.exit_code == 0, result.output
    assert "1 reminders sent." in result.output
    result = runner.invoke(args=["billing", "remind", "--as-of", "2026-11-28"])
    assert "0 reminders sent." in result.output
    result = runner.invoke(args=["billing", "remind", "--as-of", "28.11.2026"])
    assert result.exit_code != 0 and "YYYY-MM-DD" in result.output


def _unused(*_args: object) -> None:
    """Keep imports the simulated month below uses."""
    _ = (datetime, UTC, timedelta, dunning)
