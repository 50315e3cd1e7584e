"""Dunning: payment reminders before and after the due date, and automatic retries of failed
card payments. Job-level functions (like CLI commands): each invoice is its own short unit of
work, committed here, so two workers can run them at once and a crash loses nothing.

Reminders (DUNNING_BEFORE_DAYS, DUNNING_AFTER_DAYS; default 3 days before the due date, then 1, 7
and 14 days after): an invoice gets the latest step that has come due and it has not had yet
(a missed run catches up with one email, not several). Skipped: paid invoices, what open
disputes hold (the reminder asks only for the rest, and nothing when nothing is left), invoices
with a payment in flight or card retries still planned. A step is recorded in
payment_reminders (unique invoice + step) in the same transaction as its email: never the same
reminder twice, even from two workers.

Retries (CARD_RETRY_DAYS, default 1, 3, 5 and 7 days after the failure): a failed off-session
charge of an open invoice gets its retries scheduled (payment_retries) and the customer is told
(payment_failed, with the next retry date); each retry charges through
portal.payments.collection.collect_invoice (one live attempt, the key saved first) and tells the
customer again when it fails. After the last one the subscription becomes past_due
(CARD_RETRY_PAST_DUE).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, scoped_session

from portal import clock
from portal.accounts.models import Account
from portal.audit.services import SYSTEM
from portal.billing.models import OPEN_STATUSES, Invoice
from portal.db import begin_write, commit
from portal.disputes.queries import held_by_invoice
from portal.mail import queue_email
from portal.notifications.delivery import cancel_queued
from portal.notifications.models import OutboxEmail, PaymentRetry, ReminderSent, RetryStatus
from portal.notifications.queries import planned_retry_days
from portal.payments.models import LIVE_ATTEMPT_STATUSES, PaymentAttempt, PaymentAttemptItem

log = logging.getLogger(__name__)

DEFAULT_BEFORE_DAYS = (3,)
DEFAULT_AFTER_DAYS = (1, 7, 14)
DEFAULT_RETRY_DAYS = (1, 3, 5, 7)
# An invoice this many days past its last reminder step is no longer looked at.
CATCH_UP_DAYS = 7


@dataclass(frozen=True)
class Step:
    name: str  # "before_3", "after_7": the key stored in payment_reminders
    offset: int  # days from the due date (negative: before it)

    @property
    def template(self) -> str:
        return "reminder_before_due" if self.offset < 0 else "reminder_after_due"


def days_setting(value: Any, default: Sequence[int]) -> tuple[int, ...]:
    """A schedule from configuration: "1,7,14" or a list of ints; sorted, positive, unique."""
    if value is None or value == "":
        return tuple(default)
    parts = value.split(",") if isinstance(value, str) else list(value)
    days = sorted({int(str(part).strip()) for part in parts if str(part).strip()})
    if any(day <= 0 for day in days):
        raise ValueError(f"a schedule counts whole days after (or before) a date: {value!r}")
    return tuple(days)


def schedule(config: Any) -> list[Step]:
    """The reminder steps in the order they come, e.g. before_3, after_1, after_7, after_14."""
    before = days_setting(config.get("DUNNING_BEFORE_DAYS"), DEFAULT_BEFORE_DAYS)
    after = days_setting(config.get("DUNNING_AFTER_DAYS"), DEFAULT_AFTER_DAYS)
    steps = [Step(f"before_{d}", -d) for d in sorted(before, reverse=True)]
    return steps + [Step(f"after_{d}", d) for d in after]


def step_due(steps: Sequence[Step], due_date: date, as_of: date) -> Step | None:
    """The latest step that has come due on `as_of` (None before the first one). A before-due
    step is only sent while the invoice is not yet due."""
    current = None
    for step in steps:
        if due_date + timedelta(days=step.offset) <= as_of:
            current = step
    if current is not None and current.offset < 0 and as_of >= due_date:
        return None
    return current


def _plain(session: Session) -> Session:
    return session() if isinstance(session, scoped_session) else session


def _in_flight(session: Session, invoice_ids: Sequence[int]) -> set[int]:
    """Invoices with a payment attempt still live (being processed, waiting for 3-D Secure)."""
    if not invoice_ids:
        return set()
    return set(
        session.scalars(
            select(PaymentAttemptItem.invoice_id)
            .join(PaymentAttempt, PaymentAttempt.id == PaymentAttemptItem.attempt_id)
            .where(
                PaymentAttemptItem.invoice_id.in_(list(invoice_ids)),
                PaymentAttemptItem.is_live,
                PaymentAttempt.status.in_(LIVE_ATTEMPT_STATUSES),
            )
        )
    )


def reminder_candidates(session: Session, as_of: date, steps: Sequence[Step]) -> list[int]:
    """Ids of open invoices whose due date puts them inside the schedule on `as_of`."""
    first = min(step.offset for step in steps)
    last = max(step.offset for step in steps)
    return list(
        session.scalars(
            select(Invoice.id)
            .where(
                Invoice.status.in_(OPEN_STATUSES),
                Invoice.is_payable,
                Invoice.due_date.is_not(None),
                Invoice.due_date <= as_of - timedelta(days=first),
                Invoice.due_date >= as_of - timedelta(days=last + CATCH_UP_DAYS),
            )
            .order_by(Invoice.due_date, Invoice.id)
        )
    )


def send_reminders(session: Session, as_of: date) -> int:
    """Send every reminder due on `as_of`; returns how many were sent. Commits per invoice."""
    session = _plain(session)
    steps = schedule(current_app.config)
    if not steps:
        return 0
    if session.in_transaction():
        commit(session)
    sent = 0
    for invoice_id in reminder_candidates(session, as_of, steps):
        if _remind(session, invoice_id, as_of, steps):
            sent += 1
    return sent


def _remind(session: Session, invoice_id: int, as_of: date, steps: Sequence[Step]) -> bool:
    begin_write(session)
    try:
        sent = _remind_locked(session, invoice_id, as_of, steps)
    except Exception:
        session.rollback()
        raise
    commit(session)
    return sent


def _remind_locked(session: Session, invoice_id: int, as_of: date, steps: Sequence[Step]) -> bool:
    if True:
        invoice = session.scalar(select(Invoice).where(Invoice.id == invoice_id).with_for_update())
        if invoice is None or not invoice.is_payable or invoice.due_date is None:
            return False
        step = step_due(steps, invoice.due_date, as_of)
        if step is None:
            return False
        held = held_by_invoice(session, [invoice.id]).get(invoice.id, 0)
        asked = invoice.amount_due_minor - held
        # NOTE: nothing to ask for while disputes hold all of it, nor while a payment is in
        # flight; the step stays open and goes out later if it is still due then.
        if asked <= 0 or invoice.id in _in_flight(session, [invoice.id]):
            return False
        # NOTE: while card retries are planned, each retry's payment_failed email speaks for
        # the invoice; the reminders take over when none is left.
        if next_retry_on(session, invoice.id) is not None:
            return False
        # NOTE: the uniqueness guard: the step's row goes in first; a second worker (or a
        # second run) fails on unique(invoice_id, step) and sends nothing.
        try:
            with session.begin_nested():
                mark = ReminderSent(invoice_id=invoice.id, step=step.name, sent_at=clock.now())
                session.add(mark)
                session.flush()
        except IntegrityError:
            return False
        account = session.get(Account, invoice.account_id)
        assert account is not None
        email = queue_email(
            session,
            to=account.billing_email,
            template=step.template,
            context={
                "account": account,
                "invoice": invoice,
                "amount_due_minor": asked,
                "days": abs(step.offset),
            },
            account_id=account.id,
            cancel_key=f"invoice:{invoice.id}",
        )
        mark.outbox_email_id = email.id if email is not None else None
        SYSTEM.record(
            session,
            "invoice.reminder_sent" if email is not None else "invoice.reminder_opted_out",
            account_id=account.id,
            target_type="invoice",
            target_id=invoice.number or invoice.public_id,
            after={"step": step.name, "amount_minor": asked, "held_minor": held},
        )
        return email is not None


# -- automatic retries of failed card payments ---------------------------------------------------


def retry_days(config: Any) -> tuple[int, ...]:
    return days_setting(config.get("CARD_RETRY_DAYS"), DEFAULT_RETRY_DAYS)


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def schedule_retries(session: Session, invoice: Invoice, failed_on: date) -> list[PaymentRetry]:
    """Plan the retries of a failed automatic charge (once per invoice: later failures of the
    retries themselves do not plan more). Flushes; the caller commits."""
    existing = session.scalar(select(PaymentRetry.id).where(PaymentRetry.invoice_id == invoice.id))
    if existing is not None:
        return []
    retries = [
        PaymentRetry(
            invoice_id=invoice.id,
            attempt_no=number,
            scheduled_for=_day_start(failed_on + timedelta(days=days)),
            status=RetryStatus.SCHEDULED.value,
        )
        for number, days in enumerate(retry_days(current_app.config), start=1)
    ]
    session.add_all(retries)
    session.flush()
    return retries


def next_retry_on(session: Session, invoice_id: int) -> date | None:
    """The day of the invoice's next planned retry, if one is left."""
    days = planned_retry_days(session, invoice_id)
    return days[0] if days else None


def tell_payment_failed(
    session: Session, invoice: Invoice, reason: str, *, dedupe_key: str | None = None
) -> None:
    """The payment_failed email, with the next retry date (or none left)."""
    account = session.get(Account, invoice.account_id)
    assert account is not None
    held = held_by_invoice(session, [invoice.id]).get(invoice.id, 0)
    queue_email(
        session,
        to=account.billing_email,
        template="payment_failed",
        context={
            "account": account,
            "invoice": invoice,
            "reason": reason,
            "next_retry_on": next_retry_on(session, invoice.id),
            "amount_due_minor": invoice.amount_due_minor - held,
        },
        account_id=account.id,
        dedupe_key=dedupe_key,
    )


def record_failed_collection(
    session: Session, invoice_id: int, reason: str, *, failed_on: date, attempt_key: str
) -> bool:
    """A failed automatic charge of an open invoice: plan its retries and tell the customer
    (once per failed attempt). Flushes; the caller commits. False if it was already known."""
    invoice = session.get(Invoice, invoice_id)
    if invoice is None or not invoice.is_payable:
        return False
    planned = schedule_retries(session, invoice, failed_on)
    if not planned:
        return False
    SYSTEM.record(
        session,
        "invoice.card_retries_scheduled",
        account_id=invoice.account_id,
        target_type="invoice",
        target_id=invoice.number or invoice.public_id,
        after={"retries": [r.scheduled_for.date().isoformat() for r in planned]},
    )
    tell_payment_failed(session, invoice, reason, dedupe_key=f"payment_failed:{attempt_key}")
    return True


def _failed_collections(session: Session, since: datetime) -> list[tuple[int, PaymentAttempt]]:
    """Failed off-session charges of open invoices without planned retries (the billing run's
    and an upgrade's failures: the retry job finds them, nobody has to remember to call it)."""
    from portal.payments.services import OFF_SESSION_KEY_PREFIX

    planned = select(PaymentRetry.invoice_id).where(PaymentRetry.invoice_id == Invoice.id)
    rows = session.execute(
        select(PaymentAttemptItem.invoice_id, PaymentAttempt)
        .join(PaymentAttempt, PaymentAttempt.id == PaymentAttemptItem.attempt_id)
        .join(Invoice, Invoice.id == PaymentAttemptItem.invoice_id)
        .where(
            PaymentAttempt.status == "failed",
            PaymentAttempt.idempotency_key.startswith(f"{OFF_SESSION_KEY_PREFIX}_"),
            PaymentAttempt.updated_at >= since,
            Invoice.is_payable,
            ~planned.exists(),
        )
        .order_by(PaymentAttempt.id)
    )
    return [(invoice_id, attempt) for invoice_id, attempt in rows]


def retry_failed_payments(session: Session, as_of: date, gateway: Any) -> int:
    """Plan retries for new failures, then run every retry due by the end of `as_of`; returns
    how many retries charged the card. Commits per invoice."""
    session = _plain(session)
    if session.in_transaction():
        commit(session)
    days = retry_days(current_app.config)
    since = _day_start(as_of - timedelta(days=max(days, default=0) + 1))
    for invoice_id, attempt in _failed_collections(session, since):
        begin_write(session)
        record_failed_collection(
            session,
            invoice_id,
            attempt.failure_message,
            failed_on=attempt.updated_at.date(),
            attempt_key=attempt.public_id,
        )
        commit(session)
    due = list(
        session.scalars(
            select(PaymentRetry.id)
            .where(
                PaymentRetry.status == RetryStatus.SCHEDULED.value,
                PaymentRetry.scheduled_for < _day_start(as_of + timedelta(days=1)),
            )
            .order_by(PaymentRetry.scheduled_for, PaymentRetry.id)
        )
    )
    if session.in_transaction():
        commit(session)
    charged = 0
    for retry_id in due:
        if _run_retry(session, retry_id, gateway):
            charged += 1
    return charged


def _claim(session: Session, retry_id: int) -> PaymentRetry | None:
    """Take a due retry for this worker: a conditional UPDATE, so of two workers one wins."""
    claimed = session.execute(
        update(PaymentRetry)
        .where(PaymentRetry.id == retry_id, PaymentRetry.status == RetryStatus.SCHEDULED.value)
        .values(status=RetryStatus.DONE.value, completed_at=clock.now())
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        return None
    return session.get(PaymentRetry, retry_id, populate_existing=True)


def _cancel_retries(session: Session, invoice_id: int, outcome: str) -> None:
    session.execute(
        update(PaymentRetry)
        .where(
            PaymentRetry.invoice_id == invoice_id,
            PaymentRetry.status == RetryStatus.SCHEDULED.value,
        )
        .values(status=RetryStatus.CANCELED.value, outcome=outcome, completed_at=clock.now())
        .execution_options(synchronize_session=False)
    )


def _run_retry(session: Session, retry_id: int, gateway: Any) -> bool:
    from portal.payments import collection

    begin_write(session)
    retry = _claim(session, retry_id)
    if retry is None:
        commit(session)
        return False
    invoice = session.get(Invoice, retry.invoice_id)
    if invoice is None or not invoice.is_payable:
        retry.outcome = "nothing_due"
        _cancel_retries(session, retry.invoice_id, "nothing_due")
        commit(session)
        return False
    invoice_id, attempt_no = invoice.id, retry.attempt_no
    # NOTE: the claim commits with the attempt before Stripe is called (collect_invoice's
    # commit_before_network_call): a crash after the charge never runs this retry again.
    outcome = collection.collect_invoice(session, invoice_id, gateway, actor=SYSTEM, reason="retry")
    retry = session.get(PaymentRetry, retry_id, populate_existing=True)
    assert retry is not None
    retry.outcome = outcome.status
    retry.attempt_id = outcome.attempt_id
    invoice = session.get(Invoice, invoice_id, populate_existing=True)
    assert invoice is not None
    SYSTEM.record(
        session,
        "invoice.card_retry",
        account_id=invoice.account_id,
        target_type="invoice",
        target_id=invoice.number or invoice.public_id,
        after={"attempt_no": attempt_no, "outcome": outcome.status},
    )
    if outcome.status in ("paid", "nothing_due"):
        _cancel_retries(session, invoice_id, outcome.status)
    elif outcome.status == "failed":
        tell_payment_failed(
            session, invoice, outcome.message, dedupe_key=f"payment_failed:retry:{retry_id}"
        )
        if next_retry_on(session, invoice_id) is None:
            _past_due(session, invoice)
    commit(session)
    return outcome.status in ("paid", "processing", "requires_action", "failed")


def _past_due(session: Session, invoice: Invoice) -> None:
    """After the last retry failed: the subscription becomes past_due (CARD_RETRY_PAST_DUE)."""
    if not current_app.config.get("CARD_RETRY_PAST_DUE", True) or invoice.subscription_id is None:
        return
    from portal.subscriptions.models import Subscription

    subscription = session.get(Subscription, invoice.subscription_id)
    if subscription is None or subscription.status not in ("active", "trialing"):
        return
    before = subscription.status
    subscription.status = "past_due"
    SYSTEM.record(
        session,
        "subscription.past_due",
        account_id=subscription.account_id,
        target_type="subscription",
        target_id=subscription.public_id,
        before={"status": before},
        after={"status": "past_due", "invoice": invoice.number},
    )


def cancel_for_paid_invoice(session: Session, invoice_id: int) -> None:
    """An invoice was paid: its queued reminders never go, its planned retries never run."""
    cancel_queued(session, f"invoice:{invoice_id}")
    _cancel_retries(session, invoice_id, "paid")


# -- expiring cards --------------------------------------------------------------------------------


def warn_expiring_cards(session: Session, as_of: date) -> int:
    """Tell each account whose default card expires at the end of next month (once per card
    and expiry: the outbox's dedupe key). Returns how many were told. Commits."""
    from portal.payments.models import PaymentMethod

    session = _plain(session)
    if session.in_transaction():
        commit(session)
    month = as_of.month % 12 + 1
    year = as_of.year + (1 if as_of.month == 12 else 0)
    cards = list(
        session.scalars(
            select(PaymentMethod.id).where(
                PaymentMethod.is_default,
                PaymentMethod.detached_at.is_(None),
                PaymentMethod.exp_year == year,
                PaymentMethod.exp_month == month,
            )
        )
    )
    told = 0
    for card_id in cards:
        begin_write(session)
        try:
            method = session.get(PaymentMethod, card_id)
            assert method is not None
            key = f"card_expiring:{method.id}:{method.exp_year}-{method.exp_month:02d}"
            exists = session.scalar(select(OutboxEmail.id).where(OutboxEmail.dedupe_key == key))
            account = session.get(Account, method.account_id)
            if exists is None and account is not None:
                email = queue_email(
                    session,
                    to=account.billing_email,
                    template="card_expiring",
                    context={"account": account, "method": method},
                    account_id=account.id,
                    dedupe_key=key,
                )
                if email is not None:
                    told += 1
                    SYSTEM.record(
                        session,
                        "payment_method.expiry_notice_sent",
                        account_id=account.id,
                        target_type="payment_method",
                        target_id=method.public_id,
                    )
        except Exception:
            session.rollback()
            raise
        commit(session)
    return told
