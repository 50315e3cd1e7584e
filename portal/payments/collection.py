"""Collecting an invoice with the account's default saved card, the customer away (off-session):
after a plan upgrade, in the billing run, on a card retry.

The same attempt machinery as the pay page (portal/payments/services.py): the invoice is locked,
at most one live attempt per invoice (the partial unique index backs the lock), the attempt and
its idempotency key are committed before Stripe hears of them, Stripe is called with no
transaction open, and the outcome is written under the attempt's lock in a new short
transaction that the caller commits with the rest of its unit of work.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask_babel import gettext as _
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.accounts.models import Account
from portal.audit.services import Actor
from portal.billing.models import Invoice
from portal.db import commit_before_network_call, has_pending_changes
from portal.disputes.queries import held_by_invoice
from portal.errors import NotFound
from portal.mail import queue_email
from portal.payments import services
from portal.payments.gateway import Gateway
from portal.payments.models import AttemptStatus, PaymentAttempt, PaymentMethod

OUTCOMES = ("paid", "processing", "requires_action", "failed", "no_card", "nothing_due", "busy")


@dataclass(frozen=True)
class CollectOutcome:
    """How a collection ended. `status` is one of OUTCOMES; `message` says it in plain words
    (for "failed", Stripe's reason); `attempt_id` is the attempt charged or found live."""

    status: str
    message: str
    attempt_id: int | None = None


def default_card(session: Session, account_id: int) -> PaymentMethod | None:
    """The card automatic collection charges: the account's attached default card."""
    return session.scalar(
        select(PaymentMethod).where(
            PaymentMethod.account_id == account_id,
            PaymentMethod.is_default,
            PaymentMethod.detached_at.is_(None),
        )
    )


def _lock_invoice(session: Session, invoice_id: int) -> Invoice | None:
    return session.scalar(
        select(Invoice)
        .where(Invoice.id == invoice_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def collect_invoice(
    session: Session, invoice_id: int, gw: Gateway, *, actor: Actor, reason: str
) -> CollectOutcome:
    """Charge what the invoice still owes, less what open disputes hold, to the account's
    default card, off-session. Commits the attempt (and whatever the caller had pending) before
    Stripe is called; leaves the outcome flushed for the caller's commit.

    `reason` says why ("upgrade", "billing_run", "retry"); it is audited. A decline returns
    "failed" with Stripe's reason and leaves the invoice open: the caller, which knows the next
    retry date, tells the customer.
    """
    if not has_pending_changes(session):
        # NOTE: on SQLite this takes the write lock up front (BEGIN IMMEDIATE); with changes
        # pending the caller's transaction already writes, and the invoice's row lock below
        # serializes collectors on PostgreSQL.
        services.begin_locked_write(session)
    invoice = _lock_invoice(session, invoice_id)
    if invoice is None:
        raise NotFound(_("We could not find that invoice."))
    account = session.get(Account, invoice.account_id)
    assert account is not None
    live = services.live_attempt_for(session, [invoice.id])
    if live is not None:
        return CollectOutcome(
            "busy", _("A payment of this invoice is already in progress."), live.id
        )
    held = held_by_invoice(session, [invoice.id]).get(invoice.id, 0)
    due = invoice.amount_due_minor - held if invoice.is_payable else 0
    if due <= 0:
        return CollectOutcome("nothing_due", _("Nothing is due on this invoice."))
    card = default_card(session, account.id)
    if card is None or not account.stripe_customer_id:
        return CollectOutcome("no_card", _("No saved card to charge."))
    started = services.start_payment(
        session,
        account,
        [invoice],
        payment_method=card,
        amounts={invoice.id: due},
        off_session=True,
    )
    if started.reused:
        # NOTE: only when the partial unique index refused our attempt (the lock did not
        # serialize us): the other collector's attempt stands.
        return CollectOutcome(
            "busy", _("A payment of this invoice is already in progress."), started.attempt.id
        )
    attempt = started.attempt
    actor.record(
        session,
        "payment.collection_started",
        account_id=account.id,
        target_type="payment_attempt",
        target_id=attempt.public_id,
        after={
            "status": attempt.status,
            "amount_minor": attempt.amount_minor,
            "held_minor": held,
            "invoice": invoice.number,
            "reason": reason[:40],
            "off_session": True,
        },
    )
    plan = services.plan_charge(
        attempt,
        customer=account.stripe_customer_id,
        payment_method=card.stripe_payment_method_id,
        off_session=True,
    )
    # NOTE: the attempt and its key are durable before Stripe hears of them; nothing touches
    # the database again until Stripe has answered (`plan` holds plain values only).
    commit_before_network_call(session)
    outcome = services.charge_at_stripe(gw, plan)
    services.begin_locked_write(session)
    locked = services.lock_attempt(session, plan.attempt_id)
    if locked is None:
        raise NotFound(_("We could not find that payment."))
    services.record_charge(session, locked, outcome, actor)
    return _outcome_of(session, locked)


def _outcome_of(session: Session, attempt: PaymentAttempt) -> CollectOutcome:
    status = attempt.status
    if status == AttemptStatus.SUCCEEDED:
        return CollectOutcome("paid", _("The invoice was paid with the saved card."), attempt.id)
    if status == AttemptStatus.REQUIRES_ACTION:
        _ask_customer_to_confirm(session, attempt)
        return CollectOutcome(
            "requires_action",
            _("The bank asks the customer to confirm this payment; we emailed them a link."),
            attempt.id,
        )
    if status in (AttemptStatus.FAILED, AttemptStatus.CANCELED):
        return CollectOutcome(
            "failed",
            attempt.failure_message or _("The payment did not go through."),
            attempt.id,
        )
    # created (an answer we could not read), processing, unknown: reconcile settles it.
    return CollectOutcome(
        "processing",
        _("The payment is processing; it will be checked with the payment provider."),
        attempt.id,
    )


def _ask_customer_to_confirm(session: Session, attempt: PaymentAttempt) -> None:
    """The `action_required` email: the customer finishes 3-D Secure on the pay page."""
    account = session.get(Account, attempt.account_id)
    invoice = session.get(Invoice, attempt.items[0].invoice_id) if attempt.items else None
    if account is None or invoice is None:
        return
    queue_email(
        session,
        to=account.billing_email,
        template="action_required",
        context={"account": account, "invoice": invoice},
        account_id=account.id,
        dedupe_key=f"action_required:{attempt.public_id}",
    )
