"""Paying invoices: one live attempt per invoice, the key saved before Stripe is called, and a
payment recorded exactly once per PaymentIntent, whoever learns of it first (the customer's
redirect, a webhook, or `billing reconcile`).

Services flush; the caller commits. Where Stripe is called, the caller passes `checkpoint`
(normally `db.session.commit`) so the attempt and its key are durable before the call.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal import clock
from portal.accounts.models import Account
from portal.audit.services import SYSTEM, Actor
from portal.billing.models import Invoice
from portal.billing.money import Money
from portal.billing.queries import OPEN_STATUSES, open_invoices
from portal.billing.services import record_payment
from portal.db import begin_write
from portal.errors import Conflict, NotFound, PaymentFailed, ValidationFailed
from portal.mail import queue_email
from portal.payments.gateway import Card, Gateway, GatewayRejected, GatewayUnavailable, Intent
from portal.payments.models import (
    LIVE_ATTEMPT_STATUSES,
    AttemptStatus,
    Payment,
    PaymentAttempt,
    PaymentAttemptItem,
    PaymentMethod,
)

log = logging.getLogger(__name__)

Checkpoint = Callable[[], None]
PAYABLE = OPEN_STATUSES
ENDED = (AttemptStatus.SUCCEEDED.value, AttemptStatus.FAILED.value, AttemptStatus.CANCELED.value)

# Stripe's PaymentIntent status -> our attempt status.
_FROM_STRIPE = {
    "succeeded": AttemptStatus.SUCCEEDED,
    "processing": AttemptStatus.PROCESSING,
    "requires_action": AttemptStatus.REQUIRES_ACTION,
    "canceled": AttemptStatus.CANCELED,
}


def begin_locked_write(session: Session) -> None:
    """End the request's read transaction and start one that writes: on SQLite the write lock is
    taken up front (BEGIN IMMEDIATE); on PostgreSQL the rows are locked by `lock_invoices`."""
    begin_write(session)


def lock_invoices(session: Session, account: Account, numbers: Sequence[str]) -> list[Invoice]:
    """The account's invoices by number, locked for this transaction (FOR UPDATE)."""
    wanted = sorted(set(numbers))
    if not wanted:
        raise ValidationFailed("Choose at least one invoice to pay.")
    invoices = session.scalars(
        select(Invoice)
        .where(Invoice.account_id == account.id, Invoice.number.in_(wanted))
        .order_by(Invoice.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    if len(invoices) != len(wanted):
        raise NotFound("We could not find that invoice.")
    return list(invoices)


def invoice_of(session: Session, account: Account, number: str) -> Invoice | None:
    return session.scalar(
        select(Invoice).where(Invoice.account_id == account.id, Invoice.number == number)
    )


def payable_invoices(session: Session, account: Account) -> list[Invoice]:
    """Every invoice with something left to pay (the "whole balance")."""
    return list(session.scalars(open_invoices(account.id)))


def live_attempt_for(session: Session, invoice_ids: Sequence[int]) -> PaymentAttempt | None:
    return session.scalar(
        select(PaymentAttempt)
        .join(PaymentAttemptItem, PaymentAttemptItem.attempt_id == PaymentAttempt.id)
        .where(PaymentAttemptItem.invoice_id.in_(list(invoice_ids)), PaymentAttemptItem.is_live)
        .order_by(PaymentAttempt.id)
        .limit(1)
    )


@dataclass(frozen=True)
class Started:
    attempt: PaymentAttempt
    reused: bool


def start_payment(
    session: Session,
    account: Account,
    invoices: Sequence[Invoice],
    *,
    payment_method: PaymentMethod | None = None,
) -> Started:
    """Reuse the live attempt of these invoices, or save a new one with its idempotency key.

    The invoices must already be locked (`lock_invoices` inside `begin_locked_write`). The
    amount is what is left to pay, computed here; the browser never sends one.
    """
    ids = [invoice.id for invoice in invoices]
    live = live_attempt_for(session, ids)
    if live is not None:
        return Started(live, reused=True)
    for invoice in invoices:
        if invoice.status not in PAYABLE or invoice.amount_due_minor <= 0:
            # NOTE: a second click that arrives after the first one paid sees that payment.
            paid_by = session.scalar(
                select(PaymentAttempt)
                .join(PaymentAttemptItem, PaymentAttemptItem.attempt_id == PaymentAttempt.id)
                .where(
                    PaymentAttemptItem.invoice_id == invoice.id,
                    PaymentAttempt.status == AttemptStatus.SUCCEEDED.value,
                )
                .order_by(PaymentAttempt.id.desc())
                .limit(1)
            )
            if paid_by is not None and len(invoices) == 1:
                return Started(paid_by, reused=True)
            raise Conflict(f"Invoice {invoice.number} has nothing left to pay.")
    currencies = {invoice.currency for invoice in invoices}
    if currencies != {account.currency}:
        raise ValidationFailed("Invoices in different currencies are paid separately.")
    attempt = PaymentAttempt(
        account_id=account.id,
        payment_method_id=payment_method.id if payment_method else None,
        currency=account.currency,
        amount_minor=sum(invoice.amount_due_minor for invoice in invoices),
        status=AttemptStatus.CREATED.value,
        idempotency_key=f"pay_{secrets.token_urlsafe(24)}",
        items=[
            PaymentAttemptItem(invoice_id=invoice.id, amount_minor=invoice.amount_due_minor)
            for invoice in invoices
        ],
    )
    try:
        with session.begin_nested():
            session.add(attempt)
            session.flush()
    except IntegrityError:
        # NOTE: only reachable if the row lock did not serialize us; the partial unique index
        # still refuses a second live attempt, and we join the one that won.
        live = live_attempt_for(session, ids)
        if live is None:
            raise
        return Started(live, reused=True)
    return Started(attempt, reused=False)


def ensure_customer(session: Session, account: Account, gw: Gateway, checkpoint: Checkpoint) -> str:
    if account.stripe_customer_id:
        return account.stripe_customer_id
    customer = gw.create_customer(
        email=account.billing_email,
        name=account.name,
        account_ref=account.public_id,
        idempotency_key=f"customer_{account.public_id}",
    )
    # NOTE: only the first writer sets it; a parallel request's customer stays unused.
    begin_locked_write(session)
    session.execute(
        update(Account)
        .where(Account.id == account.id, Account.stripe_customer_id.is_(None))
        .values(stripe_customer_id=customer)
    )
    checkpoint()
    session.refresh(account)
    return account.stripe_customer_id or customer


def charge(
    session: Session,
    attempt: PaymentAttempt,
    gw: Gateway,
    *,
    customer: str,
    payment_method: str,
    checkpoint: Checkpoint,
) -> Intent | None:
    """Create (once) and confirm the attempt's PaymentIntent with its saved key.

    No transaction is open while Stripe is called; each answer is written in a transaction that
    takes the write lock first. Returns the intent (its status decides what the customer sees).
    A decline ends the attempt and raises PaymentFailed; no answer from Stripe leaves it
    "unknown" and raises GatewayUnavailable.
    """
    attempt_id, key, public = attempt.id, attempt.idempotency_key, attempt.public_id
    amount, currency = attempt.amount_minor, attempt.currency
    intent_id = attempt.stripe_payment_intent_id
    checkpoint()

    def write() -> PaymentAttempt:
        begin_locked_write(session)
        locked = lock_attempt(session, attempt_id)
        assert locked is not None
        return locked

    if intent_id is None:
        try:
            created = _with_retry(
                lambda: gw.create_payment_intent(
                    amount_minor=amount,
                    currency=currency,
                    customer=customer,
                    payment_method=payment_method,
                    metadata={"attempt": public},
                    idempotency_key=f"{key}:create",
                )
            )
        except GatewayRejected as refused:
            # NOTE: Stripe refused to create the intent (e.g. the card no longer exists there):
            # nothing was created, so nothing can be charged; the invoice is free again.
            locked = write()
            end_attempt(
                session,
                locked,
                AttemptStatus.FAILED,
                code="refused",
                message="This card cannot be used any more. Please pay with a new card.",
            )
            checkpoint()
            raise PaymentFailed(refused.message) from refused
        except GatewayUnavailable:
            locked = write()
            _set_status(locked, AttemptStatus.UNKNOWN)
            session.flush()
            checkpoint()
            raise
        intent_id = created.id
        locked = write()
        locked.stripe_payment_intent_id = intent_id
        session.flush()
        checkpoint()
    try:
        confirmed_id = intent_id
        intent = _with_retry(
            lambda: gw.confirm_payment_intent(confirmed_id, idempotency_key=f"{key}:confirm")
        )
    except (GatewayUnavailable, GatewayRejected):
        # NOTE: no answer, or a refusal we cannot explain: the charge may have happened.
        # "unknown" (never "failed"); reconcile asks Stripe and settles it.
        locked = write()
        _set_status(locked, AttemptStatus.UNKNOWN)
        session.flush()
        checkpoint()
        raise
    except PaymentFailed as declined:
        seen: Intent | None = None
        if intent_id:
            try:
                seen = gw.retrieve_payment_intent(intent_id)
            except (GatewayUnavailable, GatewayRejected):
                seen = None
        locked = write()
        end_attempt(
            session,
            locked,
            AttemptStatus.FAILED,
            code=seen.failure_code if seen and seen.failure_code else "card_declined",
            message=declined.message,
        )
        checkpoint()
        raise
    locked = write()
    apply_intent(session, locked, intent)
    checkpoint()
    return intent


def _with_retry(call: Callable[[], Intent], attempts: int = 2) -> Intent:
    """Call again once when Stripe did not answer; the same idempotency key makes it safe."""
    for n in range(attempts):
        try:
            return call()
        except GatewayUnavailable:
            if n == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _set_status(attempt: PaymentAttempt, status: AttemptStatus) -> None:
    if attempt.status in ENDED:
        return  # NOTE: an ended attempt never moves again (monotonic).
    attempt.status = status.value


def end_attempt(
    session: Session,
    attempt: PaymentAttempt,
    status: AttemptStatus,
    *,
    code: str = "",
    message: str = "",
) -> None:
    """Finish an attempt: its invoices are free for a new attempt."""
    if attempt.status in ENDED:
        return
    attempt.status = status.value
    attempt.failure_code = code[:64]
    attempt.failure_message = message[:500]
    session.execute(
        update(PaymentAttemptItem)
        .where(PaymentAttemptItem.attempt_id == attempt.id)
        .values(is_live=False)
    )
    session.flush()


def apply_intent(session: Session, attempt: PaymentAttempt, intent: Intent) -> Payment | None:
    """Bring the attempt to what Stripe says about its PaymentIntent. Idempotent, any order."""
    if intent.status == "succeeded":
        return fulfil_payment(session, attempt, intent)
    if attempt.status in ENDED:
        return None
    if intent.status == "canceled":
        end_attempt(session, attempt, AttemptStatus.CANCELED)
    elif intent.status == "requires_payment_method" and (
        intent.failure_code or attempt.status != AttemptStatus.CREATED
    ):
        # NOTE: the charge (or 3-D Secure) failed; Stripe wants another card.
        from portal.payments.gateway import decline_words

        end_attempt(
            session,
            attempt,
            AttemptStatus.FAILED,
            code=intent.failure_code or "card_declined",
            message=decline_words(intent.failure_code, intent.failure_message),
        )
    elif intent.status in _FROM_STRIPE:
        _set_status(attempt, _FROM_STRIPE[intent.status])
    session.flush()
    return None


def fulfil_payment(session: Session, attempt: PaymentAttempt, intent: Intent) -> Payment:
    """Record the payment of a succeeded PaymentIntent once (unique on the intent id)."""
    existing = session.scalar(select(Payment).where(Payment.stripe_payment_intent_id == intent.id))
    if existing is not None:
        end_attempt(session, attempt, AttemptStatus.SUCCEEDED)
        return existing
    account = session.get(Account, attempt.account_id)
    assert account is not None
    invoices = {
        invoice.id: invoice
        for invoice in session.scalars(
            select(Invoice)
            .where(Invoice.id.in_([item.invoice_id for item in attempt.items]))
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    allocations = []
    for item in attempt.items:
        invoice = invoices[item.invoice_id]
        part = min(item.amount_minor, invoice.amount_due_minor)
        if part > 0:
            allocations.append((invoice, Money(part, invoice.currency)))
    amount = Money(intent.amount or attempt.amount_minor, attempt.currency)
    method = (
        session.get(PaymentMethod, attempt.payment_method_id) if attempt.payment_method_id else None
    )
    try:
        with session.begin_nested():
            payment = record_payment(
                session,
                account,
                amount,
                allocations,
                received_at=clock.now(),
                method_description=f"{method.brand.title()} ·{method.last4}" if method else "Card",
                stripe_payment_intent_id=intent.id,
                stripe_charge_id=intent.latest_charge,
                attempt_id=attempt.id,
                actor=Actor(kind="stripe"),
            )
    except IntegrityError:
        # NOTE: another worker recorded it between our check and our insert; theirs stands.
        existing = session.scalar(
            select(Payment).where(Payment.stripe_payment_intent_id == intent.id)
        )
        if existing is None:
            raise
        end_attempt(session, attempt, AttemptStatus.SUCCEEDED)
        return existing
    end_attempt(session, attempt, AttemptStatus.SUCCEEDED)
    queue_email(
        session,
        to=account.billing_email,
        subject="Receipt for your payment",
        template="receipt",
        context={"account": account, "payment": payment, "invoices": list(invoices.values())},
        account_id=account.id,
        dedupe_key=f"receipt:{intent.id}",
    )
    return payment


def attempt_for_intent(session: Session, intent_id: str) -> PaymentAttempt | None:
    return session.scalar(
        select(PaymentAttempt)
        .where(PaymentAttempt.stripe_payment_intent_id == intent_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def lock_attempt(session: Session, attempt_id: int) -> PaymentAttempt | None:
    return session.scalar(
        select(PaymentAttempt)
        .where(PaymentAttempt.id == attempt_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def audit_attempt(
    session: Session, attempt: PaymentAttempt, action: str, actor: Actor = SYSTEM
) -> None:
    actor.record(
        session,
        action,
        account_id=attempt.account_id,
        target_type="payment_attempt",
        target_id=attempt.public_id,
        after={"status": attempt.status, "amount_minor": attempt.amount_minor},
    )


def live_attempts_by_invoice(
    session: Session, invoice_ids: Sequence[int]
) -> dict[int, PaymentAttempt]:
    """The live attempt of each of these invoices that has one."""
    if not invoice_ids:
        return {}
    rows = session.execute(
        select(PaymentAttemptItem.invoice_id, PaymentAttempt)
        .join(PaymentAttempt, PaymentAttempt.id == PaymentAttemptItem.attempt_id)
        .where(PaymentAttemptItem.invoice_id.in_(list(invoice_ids)), PaymentAttemptItem.is_live)
    ).all()
    return {invoice_id: attempt for invoice_id, attempt in rows}


def live_statuses() -> tuple[str, ...]:
    return LIVE_ATTEMPT_STATUSES


# -- saved cards ---------------------------------------------------------------------------------


def save_card(
    session: Session, account: Account, card: Card, *, keep: bool = True
) -> PaymentMethod:
    """Insert or refresh our copy of a card (brand, last 4, expiry only); the first is default.

    With `keep=False` the card is for one payment only: the row exists (the payment and the
    ledger name the card) but is stored as detached, so it is never listed or offered again.
    """
    if card.customer and account.stripe_customer_id and card.customer != account.stripe_customer_id:
        raise NotFound("We could not find that card.")
    row = session.scalar(
        select(PaymentMethod).where(PaymentMethod.stripe_payment_method_id == card.id)
    )
    if row is not None and row.account_id != account.id:
        raise NotFound("We could not find that card.")
    if row is None:
        has_default = session.scalar(
            select(PaymentMethod.id).where(
                PaymentMethod.account_id == account.id,
                PaymentMethod.is_default,
                PaymentMethod.detached_at.is_(None),
            )
        )
        row = PaymentMethod(
            account_id=account.id,
            stripe_payment_method_id=card.id,
            is_default=has_default is None,
            brand=card.brand[:32],
            last4=card.last4,
            exp_month=card.exp_month,
            exp_year=card.exp_year,
        )
        session.add(row)
    else:
        row.brand, row.last4 = card.brand[:32], card.last4
        row.exp_month, row.exp_year = card.exp_month, card.exp_year
    if not keep:
        # NOTE: a webhook (setup_intent.succeeded, payment_method.attached) may have saved the
        # card a moment ago; "not for next time" wins, and later webhooks never undo it
        # (save_card only refreshes brand and expiry of an existing row).
        row.is_default = False
        row.detached_at = row.detached_at or clock.now()
    session.flush()
    return row


def release_unsaved_card(session: Session, attempt: PaymentAttempt, gw: Gateway) -> bool:
    """Detach at Stripe the one-payment card of an ended attempt; True when Stripe was asked.

    The caller commits first: Stripe is called outside any transaction.
    """
    if attempt.status not in ENDED or attempt.payment_method_id is None:
        return False
    method = session.get(PaymentMethod, attempt.payment_method_id)
    if method is None or method.detached_at is None:
        return False
    # NOTE: a card removed by the customer is already detached; Stripe then refuses, harmlessly.
    found = gw.find_payment_method(method.stripe_payment_method_id)
    if found is None or found.customer is None:
        return False
    try:
        gw.detach_payment_method(method.stripe_payment_method_id)
    except GatewayRejected:
        log.info("card %s was already detached at Stripe", method.public_id)
    return True


def active_cards(session: Session, account: Account) -> list[PaymentMethod]:
    return list(
        session.scalars(
            select(PaymentMethod)
            .where(PaymentMethod.account_id == account.id, PaymentMethod.detached_at.is_(None))
            .order_by(PaymentMethod.is_default.desc(), PaymentMethod.id)
        )
    )


def card_of(session: Session, account: Account, public_id: str) -> PaymentMethod:
    """One of the account's attached cards; another account's card is "not found"."""
    row = session.scalar(
        select(PaymentMethod).where(
            PaymentMethod.public_id == public_id,
            PaymentMethod.account_id == account.id,
            PaymentMethod.detached_at.is_(None),
        )
    )
    if row is None:
        raise NotFound("We could not find that card.")
    return row


def make_default(session: Session, account: Account, card: PaymentMethod) -> None:
    session.execute(
        update(PaymentMethod)
        .where(PaymentMethod.account_id == account.id, PaymentMethod.is_default)
        .values(is_default=False)
    )
    session.flush()
    card.is_default = True
    session.flush()


def autopay_needs_a_card(session: Session, account: Account) -> bool:
    from portal.subscriptions.models import Subscription

    return (
        session.scalar(
            select(Subscription.id).where(
                Subscription.account_id == account.id,
                Subscription.collection_method == "charge_automatically",
                Subscription.status.in_(("active", "trialing", "past_due")),
            )
        )
        is not None
    )


def remove_card(session: Session, account: Account, card: PaymentMethod, gw: Gateway) -> None:
    """Detach a card (ownership already checked); never the last one while autopay needs it."""
    cards = active_cards(session, account)
    if len(cards) == 1 and autopay_needs_a_card(session, account):
        raise Conflict(
            "This is your only card and a subscription is paid automatically with it. "
            "Add another card first."
        )
    try:
        gw.detach_payment_method(card.stripe_payment_method_id)
    except GatewayRejected:
        log.info("card %s was already detached at Stripe", card.public_id)
    was_default = card.is_default
    card.detached_at = clock.now()
    card.is_default = False
    session.flush()
    if was_default:
        rest = [c for c in cards if c.id != card.id]
        if rest:
            make_default(session, account, rest[0])
