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
from sqlalchemy import Select, case, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, scoped_session

from portal import clock
from portal.accounts.models import Account
from portal.audit.services import SYSTEM
from portal.billing.models import OPEN_STATUSES, Invoice
from portal.db import begin_write, commit
from portal.disputes.models import Dispute
from portal.disputes.queries import OPEN_DISPUTE_STATUSES, held_by_invoice
from portal.mail import queue_email
from portal.notifications.delivery import cancel_queued
from portal.notifications.models import OutboxEmail, PaymentRetry, ReminderSent, RetryStatus
from portal.notifications.queries import planned_retry_days
from portal.notifications.queueing import EmailRequest, queue_many
from portal.payments.models import LIVE_ATTEMPT_STATUSES, PaymentAttempt, PaymentAttemptItem

log = logging.getLogger(__name__)

DEFAULT_BEFORE_DAYS = (3,)
DEFAULT_AFTER_DAYS = (1, 7, 14)
DEFAULT_RETRY_DAYS = (1, 3, 5, 7)
# An invoice this many days past its last reminder step is no longer looked at.
CATCH_UP_DAYS = 7
DEFAULT_BATCH_SIZE = 200


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


def step_windows(steps: Sequence[Step], as_of: date) -> list[tuple[Step, date, date]]:
    """For each step, the due dates (low, high, both included) for which it is the step
    `step_due` answers on `as_of`: the SQL form of step_due, one date range per step."""
    windows = []
    for index, step in enumerate(steps):
        high = as_of - timedelta(days=step.offset)
        if index + 1 < len(steps):
            # NOTE: the next step has not come due yet: due + next.offset > as_of.
            low = as_of - timedelta(days=steps[index + 1].offset) + timedelta(days=1)
        else:
            low = as_of - timedelta(days=step.offset + CATCH_UP_DAYS)
        if step.offset < 0:
            # NOTE: a before-due step only while the invoice is not yet due (as_of < due).
            low = max(low, as_of + timedelta(days=1))
        if low <= high:
            windows.append((step, low, high))
    return windows


def _due_reminders(as_of: date, steps: Sequence[Step]) -> Select[tuple[int, str, int]]:
    """(invoice id, step, minor units disputes hold) of every reminder due on `as_of` and not
    sent yet: one set-based query. Skipped here (and so never sent while it lasts): invoices not
    payable, with a payment in flight or card retries still planned, or that disputes hold whole.

    NOTE: the step is chosen in SQL (a CASE over the due date, `step_windows`), so the invoices
    that had their current step already are left out by the same query, not looked at one by
    one."""
    windows = step_windows(steps, as_of)
    step_name = case(
        *[(Invoice.due_date.between(low, high), literal(step.name)) for step, low, high in windows],
        else_=None,
    ).label("step")
    held = (
        select(func.coalesce(func.sum(Dispute.amount_minor), 0))
        .where(Dispute.invoice_id == Invoice.id, Dispute.status.in_(OPEN_DISPUTE_STATUSES))
        .correlate(Invoice)
        .scalar_subquery()
    )
    # NOTE: not correlated: SQLite would walk every live attempt again for each invoice; as a
    # list it is made once (the live attempts are few; PostgreSQL hashes it).
    in_flight = (
        select(PaymentAttemptItem.invoice_id)
        .join(PaymentAttempt, PaymentAttempt.id == PaymentAttemptItem.attempt_id)
        .where(
            PaymentAttemptItem.is_live,
            PaymentAttempt.status.in_(LIVE_ATTEMPT_STATUSES),
        )
    )
    retries = (
        select(PaymentRetry.id)
        .where(
            PaymentRetry.invoice_id == Invoice.id,
            PaymentRetry.status == RetryStatus.SCHEDULED.value,
        )
        .correlate(Invoice)
    )
    sent = (
        select(ReminderSent.id)
        .where(ReminderSent.invoice_id == Invoice.id, ReminderSent.step == step_name)
        .correlate(Invoice)
    )
    low = min((low for _step, low, _high in windows), default=as_of)
    high = max((high for _step, _low, high in windows), default=as_of - timedelta(days=1))
    return (
        select(Invoice.id, step_name, held.label("held"))
        .where(
            Invoice.status.in_(OPEN_STATUSES),
            Invoice.is_payable,
            Invoice.due_date.between(low, high),
            step_name.is_not(None),
            # NOTE: nothing to ask for while a payment is in flight; the step stays open and
            # goes out later if it is still due then.
            Invoice.id.not_in(in_flight),
            # NOTE: while card retries are planned, each retry's payment_failed email speaks
            # for the invoice; the reminders take over when none is left.
            ~retries.exists(),
            ~sent.exists(),
            Invoice.amount_due_minor > held,
        )
        .order_by(Invoice.id)
    )


def reminder_candidates(session: Session, as_of: date, steps: Sequence[Step]) -> list[int]:
    """Ids of the open invoices that get a reminder on `as_of` (not sent yet, nothing in the
    way), in id order."""
    if not steps:
        return []
    return [row[0] for row in session.execute(_due_reminders(as_of, steps))]


def batch_size(config: Any) -> int:
    """Reminders per unit of work (REMINDER_BATCH_SIZE, default 200): each batch is one short
    write transaction, so another writer waits at most for one batch."""
    return max(1, int(config.get("REMINDER_BATCH_SIZE") or DEFAULT_BATCH_SIZE))


def send_reminders(session: Session, as_of: date) -> int:
    """Send every reminder due on `as_of`; returns how many were sent. Commits per batch."""
    session = _plain(session)
    steps = schedule(current_app.config)
    if not steps:
        return 0
    if session.in_transaction():
        commit(session)
    due = reminder_candidates(session, as_of, steps)
    if session.in_transaction():
        commit(session)
    size = batch_size(current_app.config)
    sent = 0
    for start in range(0, len(due), size):
        sent += _remind_batch(session, due[start : start + size], as_of, steps)
    return sent


def _remind_batch(
    session: Session, invoice_ids: Sequence[int], as_of: date, steps: Sequence[Step]
) -> int:
    begin_write(session)
    try:
        sent = _remind_locked(session, invoice_ids, as_of, steps)
    except Exception:
        session.rollback()
        raise
    commit(session)
    return sent


def _insert_marks(session: Session, marks: list[dict[str, Any]]) -> dict[int, int]:
    """Insert the steps' rows, skipping any (invoice, step) already there; {invoice id: row id}
    of those this call inserted, and so may send."""
    if not marks:
        return {}
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = (
        insert(ReminderSent)
        .values(marks)
        .on_conflict_do_nothing(index_elements=["invoice_id", "step"])
        .returning(ReminderSent.invoice_id, ReminderSent.id)
    )
    return {invoice_id: mark_id for invoice_id, mark_id in session.execute(statement)}


def _remind_locked(
    session: Session, invoice_ids: Sequence[int], as_of: date, steps: Sequence[Step]
) -> int:
    # NOTE: the selection again, now in the write transaction with the invoices locked (FOR
    # UPDATE on PostgreSQL, the write lock on SQLite): an invoice paid, disputed or reminded
    # since the first look drops out here.
    rows = session.execute(
        _due_reminders(as_of, steps)
        .where(Invoice.id.in_(list(invoice_ids)))
        .with_for_update(of=Invoice)
    ).all()
    if not rows:
        return 0
    now = clock.now()
    # NOTE: the uniqueness guard: each step's row goes in first, and only the rows this
    # statement inserted are sent; one a second worker (or a second run) inserted already
    # conflicts on unique(invoice_id, step) and is skipped, never sent twice.
    inserted = _insert_marks(
        session,
        [{"invoice_id": invoice_id, "step": step, "sent_at": now} for invoice_id, step, _ in rows],
    )
    chosen = [
        (invoice_id, step, int(held)) for invoice_id, step, held in rows if invoice_id in inserted
    ]
    if not chosen:
        return 0
    invoices = {
        invoice.id: invoice
        for invoice in session.scalars(
            select(Invoice).where(Invoice.id.in_([invoice_id for invoice_id, _, _ in chosen]))
        )
    }
    accounts = {
        account.id: account
        for account in session.scalars(
            select(Account).where(Account.id.in_({i.account_id for i in invoices.values()}))
        )
    }
    by_name = {step.name: step for step in steps}
    requests = []
    for invoice_id, step_name, held in chosen:
        invoice = invoices[invoice_id]
        account = accounts[invoice.account_id]
        step = by_name[step_name]
        requests.append(
            EmailRequest(
                to=account.billing_email,
                template=step.template,
                context={
                    "account": account,
                    "invoice": invoice,
                    "amount_due_minor": invoice.amount_due_minor - held,
                    "days": abs(step.offset),
                },
                account_id=account.id,
                account=account,
                cancel_key=f"invoice:{invoice.id}",
            )
        )
    emails = queue_many(session, requests)
    links = []
    sent = 0
    for (invoice_id, step_name, held), email in zip(chosen, emails, strict=True):
        invoice = invoices[invoice_id]
        if email is not None:
            links.append({"id": inserted[invoice_id], "outbox_email_id": email.id})
            sent += 1
        SYSTEM.record(
            session,
            "invoice.reminder_sent" if email is not None else "invoice.reminder_opted_out",
            account_id=invoice.account_id,
            target_type="invoice",
            target_id=invoice.number or invoice.public_id,
            after={
                "step": step_name,
                "amount_minor": invoice.amount_due_minor - held,
                "held_minor": held,
            },
        )
    if links:
        session.execute(update(ReminderSent), links)
    return sent


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
