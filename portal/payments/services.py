"""Paying invoices: one live attempt per invoice, the key saved before Stripe is called, and a
payment recorded exactly once per PaymentIntent, whoever learns of it first (the customer's
redirect, a webhook, or `billing reconcile`).

Services flush; whoever owns the unit of work commits. The pay path is split so that no
transaction is open while Stripe is called: the attempt and its key are saved and committed
(`portal.db.commit_before_network_call`, the one named exception), `charge_at_stripe` talks
to Stripe with plain values only (no session), and `record_charge` writes the outcome under
the attempt's lock in the rest of the request's unit of work.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from flask_babel import gettext as _
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal import clock
from portal.accounts.models import Account
from portal.audit.services import SYSTEM, Actor
from portal.billing.models import Invoice
from portal.billing.money import Money
from portal.billing.queries import issued_invoice, issued_invoices, open_invoices
from portal.billing.services import record_payment
from portal.db import begin_write, commit_before_network_call, has_pending_changes
from portal.errors import Conflict, NotFound, PaymentFailed, ValidationFailed
from portal.formatting import CARD_BRANDS
from portal.mail import queue_email
from portal.payments.gateway import (
    BudgetSpent,
    Card,
    CardDeclined,
    Gateway,
    GatewayRejected,
    GatewayUnavailable,
    Intent,
)
from portal.payments.models import (
    AttemptStatus,
    Payment,
    PaymentAttempt,
    PaymentAttemptItem,
    PaymentMethod,
)

log = logging.getLogger(__name__)

Checkpoint = Callable[[], None]
STRIPE = Actor(kind="stripe")
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
        raise ValidationFailed(_("Choose at least one invoice to pay."))
    invoices = session.scalars(
        issued_invoices(account.id, wanted)
        .order_by(Invoice.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    if len(invoices) != len(wanted):
        raise NotFound(_("We could not find that invoice."))
    return list(invoices)


def invoice_of(session: Session, account: Account, number: str) -> Invoice | None:
    """The account's issued invoice with this number (billing's one lookup by number)."""
    return session.scalar(issued_invoice(account.id, number))


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


# NOTE: an off-session charge is created and confirmed in one call; whoever repeats that call
# with the attempt's key (reconcile) must send the same parameters, and the key says which.
OFF_SESSION_KEY_PREFIX = "collect"


def is_off_session_key(key: str) -> bool:
    return key.startswith(f"{OFF_SESSION_KEY_PREFIX}_")


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
    amounts: Mapping[int, int] | None = None,
    off_session: bool = False,
) -> Started:
    """Reuse the live attempt of these invoices, or save a new one with its idempotency key.

    The invoices must already be locked (`lock_invoices` inside `begin_locked_write`). The
    amount is what is left to pay, computed here; the browser never sends one. `amounts` (by
    invoice id) asks for less than that (collection leaves out what open disputes hold).
    `off_session`: the portal charges a saved card with the customer away (see
    `is_off_session_key`).
    """
    ids = [invoice.id for invoice in invoices]
    live = live_attempt_for(session, ids)
    if live is not None:
        return Started(live, reused=True)
    for invoice in invoices:
        if not invoice.is_payable:
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
            raise Conflict(_("Invoice %(number)s has nothing left to pay.", number=invoice.number))
    currencies = {invoice.currency for invoice in invoices}
    if currencies != {account.currency}:
        raise ValidationFailed(_("Invoices in different currencies are paid separately."))
    asked = {
        invoice.id: min(
            invoice.amount_due_minor, (amounts or {}).get(invoice.id, invoice.amount_due_minor)
        )
        for invoice in invoices
    }
    if any(amount <= 0 for amount in asked.values()):
        raise Conflict(_("There is nothing to pay."))
    attempt = PaymentAttempt(
        account_id=account.id,
        payment_method_id=payment_method.id if payment_method else None,
        currency=account.currency,
        amount_minor=sum(asked.values()),
        status=AttemptStatus.CREATED.value,
        idempotency_key=f"{OFF_SESSION_KEY_PREFIX if off_session else 'pay'}_"
        f"{secrets.token_urlsafe(24)}",
        items=[
            PaymentAttemptItem(invoice_id=invoice.id, amount_minor=asked[invoice.id])
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


def end_reads(session: Session) -> None:
    """End the request's read transaction before a network call, so that no snapshot, row
    lock or SQLite write lock is held while Stripe (or anyone) is waited for.

    Objects loaded so far expire: callers read the plain values they need first.
    """
    if has_pending_changes(session):
        # NOTE: the only writes a request can hold before its first Stripe call are its session
        # bookkeeping (the before-request hooks move "last seen" on, at most once a minute);
        # they are kept, not lost, and nothing of the payment is written yet.
        commit_before_network_call(session)
    else:
        session.rollback()


def set_customer(session: Session, account_id: int, customer: str) -> None:
    """Remember the account's Stripe customer; only the first writer sets it."""
    session.execute(
        update(Account)
        .where(Account.id == account_id, Account.stripe_customer_id.is_(None))
        .values(stripe_customer_id=customer)
    )
    session.flush()


def create_customer_at_stripe(gw: Gateway, account: Account) -> str:
    """The account's Stripe customer, created (idempotently) when it has none. Network only."""
    if account.stripe_customer_id:
        return account.stripe_customer_id
    return gw.create_customer(
        email=account.billing_email,
        name=account.name,
        account_ref=account.public_id,
        idempotency_key=f"customer_{account.public_id}",
    )


def ensure_customer(session: Session, account: Account, gw: Gateway, checkpoint: Checkpoint) -> str:
    """For callers that own their unit of work (jobs, the demo, tests): create the customer at
    Stripe if needed, then store it and `checkpoint` (their commit)."""
    if account.stripe_customer_id:
        return account.stripe_customer_id
    account_id = account.id
    customer = create_customer_at_stripe(gw, account)
    begin_locked_write(session)
    set_customer(session, account_id, customer)
    checkpoint()
    stored = session.get(Account, account_id)
    return (stored.stripe_customer_id if stored else None) or customer


@dataclass(frozen=True)
class ChargePlan:
    """Everything a charge needs from the database, read before it commits: plain values only,
    so that nothing touches the database while Stripe is being called."""

    attempt_id: int
    public_id: str
    key: str
    amount_minor: int
    currency: str
    customer: str
    payment_method: str
    intent_id: str | None
    off_session: bool = False


def plan_charge(
    attempt: PaymentAttempt, *, customer: str, payment_method: str, off_session: bool = False
) -> ChargePlan:
    """`off_session`: the customer is not there (the portal collects with a saved card)."""
    return ChargePlan(
        attempt_id=attempt.id,
        public_id=attempt.public_id,
        key=attempt.idempotency_key,
        amount_minor=attempt.amount_minor,
        currency=attempt.currency,
        customer=customer,
        payment_method=payment_method,
        intent_id=attempt.stripe_payment_intent_id,
        off_session=off_session,
    )


@dataclass(frozen=True)
class ChargeOutcome:
    """What Stripe said (or did not say) about a charge.

    kind: "answered" (the intent's status decides), "declined" (the card was declined),
    "action" (an off-session charge the bank wants the customer to confirm: it waits for them),
    "refused" (Stripe refused to create the intent: nothing can be charged) or "unknown" (no
    answer: the charge may have happened; reconcile settles it).
    """

    kind: str
    intent_id: str | None = None
    intent: Intent | None = None
    code: str = ""
    message: str = ""


def charge_at_stripe(gw: Gateway, plan: ChargePlan) -> ChargeOutcome:
    """Create (once, with the saved key) and confirm the PaymentIntent. Network only: it takes
    no session, so it cannot touch the database while it waits for Stripe."""
    intent_id = plan.intent_id
    if intent_id is None and plan.off_session:
        return _charge_off_session(gw, plan)
    if intent_id is None:
        try:
            created = _with_retry(
                lambda: gw.create_payment_intent(
                    amount_minor=plan.amount_minor,
                    currency=plan.currency,
                    customer=plan.customer,
                    payment_method=plan.payment_method,
                    metadata={"attempt": plan.public_id},
                    idempotency_key=f"{plan.key}:create",
                )
            )
        except GatewayRejected as refused:
            # NOTE: Stripe refused to create the intent (e.g. the card no longer exists there):
            # nothing was created, so nothing can be charged; the invoice is free again.
            return ChargeOutcome("refused", code="refused", message=refused.message)
        except GatewayUnavailable:
            return ChargeOutcome("unknown")
        intent_id = created.id
    confirmed_id = intent_id
    try:
        intent = _with_retry(
            lambda: gw.confirm_payment_intent(confirmed_id, idempotency_key=f"{plan.key}:confirm")
        )
    except (GatewayUnavailable, GatewayRejected):
        # NOTE: no answer, or a refusal we cannot explain: the charge may have happened.
        # "unknown" (never "failed"); reconcile asks Stripe and settles it.
        return ChargeOutcome("unknown", intent_id=intent_id)
    except PaymentFailed as declined:
        try:
            seen: Intent | None = gw.retrieve_payment_intent(intent_id)
        except (GatewayUnavailable, GatewayRejected):
            seen = None
        return ChargeOutcome(
            "declined",
            intent_id=intent_id,
            code=seen.failure_code if seen and seen.failure_code else "card_declined",
            message=declined.message,
        )
    return ChargeOutcome("answered", intent_id=intent_id, intent=intent)


def _charge_off_session(gw: Gateway, plan: ChargePlan) -> ChargeOutcome:
    """Create and confirm in one call (Stripe's off-session charge), with the saved key."""
    try:
        intent = _with_retry(
            lambda: gw.create_payment_intent(
                amount_minor=plan.amount_minor,
                currency=plan.currency,
                customer=plan.customer,
                payment_method=plan.payment_method,
                metadata={"attempt": plan.public_id},
                idempotency_key=f"{plan.key}:create",
                off_session=True,
            )
        )
    except CardDeclined as declined:
        if declined.code == "authentication_required" and declined.intent_id:
            # NOTE: Stripe declines an off-session charge whose bank wants 3-D Secure with
            # this code; the intent waits for the customer to confirm it on the pay page.
            return ChargeOutcome("action", intent_id=declined.intent_id, code=declined.code)
        return ChargeOutcome(
            "declined",
            intent_id=declined.intent_id,
            code=declined.code or "card_declined",
            message=declined.message,
        )
    except GatewayRejected as refused:
        return ChargeOutcome("refused", code="refused", message=refused.message)
    except GatewayUnavailable:
        # NOTE: no answer to a create that confirms: the charge may have happened; "unknown",
        # and reconcile finds the intent by the attempt in its metadata.
        return ChargeOutcome("unknown")
    return ChargeOutcome("answered", intent_id=intent.id, intent=intent)


def record_charge(
    session: Session, attempt: PaymentAttempt, outcome: ChargeOutcome, actor: Actor = SYSTEM
) -> None:
    """Write what Stripe said about a charge; the attempt must be locked (`lock_attempt`)."""
    if outcome.intent_id and attempt.stripe_payment_intent_id is None:
        attempt.stripe_payment_intent_id = outcome.intent_id
    if outcome.kind == "answered" and outcome.intent is not None:
        apply_intent(session, attempt, outcome.intent, actor)
    elif outcome.kind == "action":
        attempt.failure_code = outcome.code[:64]
        _set_status(session, attempt, AttemptStatus.REQUIRES_ACTION, actor)
    elif outcome.kind == "refused":
        end_attempt(
            session,
            attempt,
            AttemptStatus.FAILED,
            code="refused",
            message=_("This card cannot be used any more. Please pay with a new card."),
            actor=actor,
        )
    elif outcome.kind == "declined":
        end_attempt(
            session,
            attempt,
            AttemptStatus.FAILED,
            code=outcome.code,
            message=outcome.message,
            actor=actor,
        )
    else:
        _set_status(session, attempt, AttemptStatus.UNKNOWN, actor)
    session.flush()


def charge(
    session: Session,
    attempt: PaymentAttempt,
    gw: Gateway,
    *,
    customer: str,
    payment_method: str,
    checkpoint: Checkpoint,
) -> Intent | None:
    """For callers that own their unit of work (jobs, the demo): `checkpoint` (their commit)
    makes the attempt and its key durable, Stripe is called with no transaction open, and the
    outcome is written under the attempt's lock and checkpointed again.

    Returns the intent Stripe answered with; a decline raises PaymentFailed and no answer
    GatewayUnavailable, after the attempt has been updated.
    """
    plan = plan_charge(attempt, customer=customer, payment_method=payment_method)
    checkpoint()
    outcome = charge_at_stripe(gw, plan)
    begin_locked_write(session)
    locked = lock_attempt(session, plan.attempt_id)
    if locked is None:
        raise NotFound(_("We could not find that payment."))
    record_charge(session, locked, outcome)
    checkpoint()
    if outcome.kind == "declined":
        raise PaymentFailed(outcome.message)
    if outcome.kind == "refused":
        raise PaymentFailed(outcome.message)
    if outcome.kind == "unknown":
        raise GatewayUnavailable()
    return outcome.intent


def _with_retry(call: Callable[[], Intent], attempts: int = 2) -> Intent:
    """Call again once when Stripe did not answer; the same idempotency key makes it safe."""
    for n in range(attempts):
        try:
            return call()
        except BudgetSpent:
            raise
        except GatewayUnavailable:
            if n == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _set_status(
    session: Session, attempt: PaymentAttempt, status: AttemptStatus, actor: Actor = SYSTEM
) -> None:
    if attempt.status in ENDED or attempt.status == status.value:
        return  # NOTE: an ended attempt never moves again (monotonic).
    before = attempt.status
    attempt.status = status.value
    _audit_status(session, attempt, before, actor)


def _audit_status(session: Session, attempt: PaymentAttempt, before: str, actor: Actor) -> None:
    actor.record(
        session,
        "payment_attempt.status_changed",
        account_id=attempt.account_id,
        target_type="payment_attempt",
        target_id=attempt.public_id,
        before={"status": before},
        after={
            "status": attempt.status,
            "amount_minor": attempt.amount_minor,
            "failure_code": attempt.failure_code or None,
        },
    )


def end_attempt(
    session: Session,
    attempt: PaymentAttempt,
    status: AttemptStatus,
    *,
    code: str = "",
    message: str = "",
    actor: Actor = SYSTEM,
) -> None:
    """Finish an attempt: its invoices are free for a new attempt."""
    if attempt.status in ENDED:
        return
    before = attempt.status
    attempt.status = status.value
    attempt.failure_code = code[:64]
    attempt.failure_message = message[:500]
    _audit_status(session, attempt, before, actor)
    session.execute(
        update(PaymentAttemptItem)
        .where(PaymentAttemptItem.attempt_id == attempt.id)
        .values(is_live=False)
    )
    session.flush()


def apply_intent(
    session: Session, attempt: PaymentAttempt, intent: Intent, actor: Actor = STRIPE
) -> Payment | None:
    """Bring the attempt to what Stripe says about its PaymentIntent. Idempotent, any order."""
    adopt_card_of_intent(session, attempt, intent, actor)
    if intent.status == "succeeded":
        return fulfil_payment(session, attempt, intent, actor)
    if attempt.status in ENDED:
        return None
    if intent.status == "canceled":
        end_attempt(session, attempt, AttemptStatus.CANCELED, actor=actor)
    elif (
        intent.status == "requires_payment_method"
        and intent.failure_code == "authentication_required"
        and attempt.status == AttemptStatus.REQUIRES_ACTION
    ):
        # NOTE: an off-session charge the bank wants confirmed: it waits for the customer.
        pass
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
            actor=actor,
        )
    elif intent.status in _FROM_STRIPE:
        _set_status(session, attempt, _FROM_STRIPE[intent.status], actor)
    session.flush()
    return None


def fulfil_payment(
    session: Session, attempt: PaymentAttempt, intent: Intent, actor: Actor = STRIPE
) -> Payment:
    """Record the payment of a succeeded PaymentIntent once (unique on the intent id)."""
    existing = session.scalar(select(Payment).where(Payment.stripe_payment_intent_id == intent.id))
    if existing is not None:
        end_attempt(session, attempt, AttemptStatus.SUCCEEDED, actor=actor)
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
                method_description=stored_card_description(method),
                stripe_payment_intent_id=intent.id,
                stripe_charge_id=intent.latest_charge,
                attempt_id=attempt.id,
                actor=actor,
            )
    except IntegrityError:
        # NOTE: another worker recorded it between our check and our insert; theirs stands.
        existing = session.scalar(
            select(Payment).where(Payment.stripe_payment_intent_id == intent.id)
        )
        if existing is None:
            raise
        end_attempt(session, attempt, AttemptStatus.SUCCEEDED, actor=actor)
        return existing
    end_attempt(session, attempt, AttemptStatus.SUCCEEDED, actor=actor)
    queue_email(
        session,
        to=account.billing_email,
        subject=_("Receipt for your payment"),
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


# -- a new card typed in on the pay page: one PaymentIntent, confirmed in the browser ------------
# NOTE: Stripe.js confirmCardPayment sends the card with the intent and asks for 3-D Secure once,
# for the payment; a SetupIntent first would ask once more, for saving the card (issue 9, 16).

SAVE_CARD_METADATA = "save_card"


def awaits_card_entry(attempt: PaymentAttempt) -> bool:
    """A pay-page attempt whose intent waits for the card the customer types in."""
    return (
        attempt.payment_method_id is None
        and attempt.status in (AttemptStatus.CREATED.value, AttemptStatus.REQUIRES_ACTION.value)
        and not is_off_session_key(attempt.idempotency_key)
    )


def intent_for_card_entry(gw: Gateway, plan: ChargePlan, *, save: bool) -> Intent:
    """The attempt's PaymentIntent, with no card yet: created once, with the saved key (or read
    again when it exists). With `save`, Stripe keeps the card the browser pays with for later
    off-session charges (`setup_future_usage`). Network only."""
    if plan.intent_id:
        return gw.retrieve_payment_intent(plan.intent_id)
    return _with_retry(
        lambda: gw.create_payment_intent(
            amount_minor=plan.amount_minor,
            currency=plan.currency,
            customer=plan.customer,
            payment_method=None,
            metadata={"attempt": plan.public_id, SAVE_CARD_METADATA: "1" if save else "0"},
            idempotency_key=f"{plan.key}:create",
            setup_future_usage="off_session" if save else None,
        )
    )


def record_card_entry(
    session: Session, attempt: PaymentAttempt, intent: Intent, actor: Actor = SYSTEM
) -> None:
    """Write the intent the browser is to confirm; the attempt must be locked (`lock_attempt`)."""
    if attempt.stripe_payment_intent_id is None:
        attempt.stripe_payment_intent_id = intent.id
    if intent.status == "requires_payment_method" and not intent.failure_code:
        _set_status(session, attempt, AttemptStatus.REQUIRES_ACTION, actor)
    else:
        apply_intent(session, attempt, intent, actor)
    session.flush()


def adopt_card_of_intent(
    session: Session, attempt: PaymentAttempt, intent: Intent, actor: Actor = SYSTEM
) -> None:
    """Once Stripe took a payment with a card typed in for it, our copy of the card: saved, or
    kept for this payment only, as the customer chose when the intent was made."""
    choice = (intent.metadata or {}).get(SAVE_CARD_METADATA)
    card = intent.card
    if attempt.payment_method_id is not None or card is None or choice not in ("0", "1"):
        return
    if intent.status not in ("succeeded", "processing"):
        return
    account = session.get(Account, attempt.account_id)
    if account is None or not account.stripe_customer_id:
        return
    if intent.customer != account.stripe_customer_id:
        return
    # NOTE: only a card Stripe attached to the customer can be charged later; one that is not
    # (it cannot be, for a card used without setup_future_usage) is kept for this payment only.
    keep = choice == "1" and card.customer == account.stripe_customer_id
    row = save_card(session, account, card, keep=keep, actor=actor)
    attempt.payment_method_id = row.id
    session.flush()


# -- saved cards ---------------------------------------------------------------------------------


def save_card(
    session: Session, account: Account, card: Card, *, keep: bool = True, actor: Actor = SYSTEM
) -> PaymentMethod:
    """Insert or refresh our copy of a card (brand, last 4, expiry only); the first is default.

    With `keep=False` the card is for one payment only: the row exists (the payment and the
    ledger name the card) but is stored as detached, so it is never listed or offered again.
    """
    if card.customer and account.stripe_customer_id and card.customer != account.stripe_customer_id:
        raise NotFound(_("We could not find that card."))
    row = session.scalar(
        select(PaymentMethod).where(PaymentMethod.stripe_payment_method_id == card.id)
    )
    if row is not None and row.account_id != account.id:
        raise NotFound(_("We could not find that card."))
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
        before = None
    else:
        before = _card_state(row)
        row.brand, row.last4 = card.brand[:32], card.last4
        row.exp_month, row.exp_year = card.exp_month, card.exp_year
    if not keep:
        # NOTE: a webhook (setup_intent.succeeded, payment_method.attached) may have saved the
        # card a moment ago; "not for next time" wins, and later webhooks never undo it
        # (save_card only refreshes brand and expiry of an existing row).
        row.is_default = False
        row.detached_at = row.detached_at or clock.now()
    session.flush()
    after = _card_state(row)
    if before != after:
        action = "payment_method.added" if before is None else "payment_method.updated"
        _audit_card(session, row, action, actor, before, after)
    return row


def _card_state(row: PaymentMethod) -> dict[str, object]:
    return {
        "brand": row.brand,
        "last4": row.last4,
        "exp": f"{row.exp_month:02d}/{row.exp_year}",
        "default": bool(row.is_default),
        "saved": row.detached_at is None,
    }


def _audit_card(
    session: Session,
    row: PaymentMethod,
    action: str,
    actor: Actor,
    before: dict[str, object] | None,
    after: dict[str, object] | None,
) -> None:
    actor.record(
        session,
        action,
        account_id=row.account_id,
        target_type="payment_method",
        target_id=row.public_id,
        before=before,
        after=after,
    )


def unsaved_card_to_release(session: Session, attempt: PaymentAttempt) -> str | None:
    """The Stripe id of the one-payment card of an ended attempt, to detach at Stripe once the
    request has committed (`release_card_at_stripe`); None when there is nothing to release."""
    if attempt.status not in ENDED or attempt.payment_method_id is None:
        return None
    method = session.get(PaymentMethod, attempt.payment_method_id)
    if method is None or method.detached_at is None:
        return None
    return method.stripe_payment_method_id


def release_card_at_stripe(gw: Gateway, stripe_payment_method_id: str) -> bool:
    """Detach a card at Stripe that our database no longer offers; True when Stripe was asked.
    Network only (run after the commit): a failure leaves it attached there but unusable
    through the portal, which never charges a card it holds as detached."""
    try:
        found = gw.find_payment_method(stripe_payment_method_id)
        if found is None or found.customer is None:
            return False
        gw.detach_payment_method(stripe_payment_method_id)
    except GatewayRejected:
        # NOTE: a card removed by the customer is already detached; Stripe then refuses.
        log.info("card %s was already detached at Stripe", stripe_payment_method_id)
    except GatewayUnavailable:
        log.warning("could not detach card %s at Stripe; it stays unused", stripe_payment_method_id)
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
        raise NotFound(_("We could not find that card."))
    return row


def make_default(
    session: Session, account: Account, card: PaymentMethod, actor: Actor = SYSTEM
) -> None:
    """Make one of the account's attached cards its default (the one autopay charges)."""
    if card.is_default:
        return
    previous = session.scalars(
        select(PaymentMethod).where(
            PaymentMethod.account_id == account.id,
            PaymentMethod.is_default,
            PaymentMethod.id != card.id,
        )
    ).all()
    session.execute(
        update(PaymentMethod)
        .where(PaymentMethod.account_id == account.id, PaymentMethod.is_default)
        .values(is_default=False)
    )
    session.flush()
    card.is_default = True
    session.flush()
    _audit_card(
        session,
        card,
        "payment_method.made_default",
        actor,
        {"default_was": [row.public_id for row in previous]},
        {"default": card.public_id},
    )


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


def removal_blocked(session: Session, account: Account) -> str:
    """Why no card of the account can be removed now ("" when one can)."""
    if len(active_cards(session, account)) == 1 and autopay_needs_a_card(session, account):
        return only_card_message()
    return ""


def remove_card(
    session: Session, account: Account, card_public_id: str, actor: Actor = SYSTEM
) -> str:
    """Stop offering a card (ownership checked here, under the cards' lock); never the last one
    while a subscription auto-pays with it. Returns its Stripe id, to detach at Stripe once
    this has committed (`release_card_at_stripe`)."""
    cards = list(
        session.scalars(
            select(PaymentMethod)
            .where(PaymentMethod.account_id == account.id, PaymentMethod.detached_at.is_(None))
            .order_by(PaymentMethod.is_default.desc(), PaymentMethod.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )
    card = next((c for c in cards if c.public_id == card_public_id), None)
    if card is None:
        raise NotFound(_("We could not find that card."))
    if len(cards) == 1 and autopay_needs_a_card(session, account):
        raise Conflict(only_card_message())
    forget_card(session, card, actor)
    return card.stripe_payment_method_id


def only_card_message() -> str:
    """Why the last card cannot go while autopay needs it."""
    return _(
        "This is your only card and a subscription is paid automatically with it. "
        "Add another card first."
    )


def verify_new_card(gw: Gateway, *, customer: str | None, setup_intent_id: str) -> Card:
    """The card a SetupIntent just saved, checked to belong to `customer`. Network only.

    NOTE: ownership in our terms first: the SetupIntent must be this account's customer's.
    """
    intent = gw.find_setup_intent(setup_intent_id[:255])
    if intent is None or not customer or intent.customer != customer:
        raise NotFound(_("We could not find that card."))
    if intent.status != "succeeded" or not intent.payment_method:
        raise PaymentFailed(_("The card could not be verified. Please try again."))
    details = gw.retrieve_payment_method(intent.payment_method)
    if details.customer is None:
        # NOTE: real Stripe attaches it with the SetupIntent; localstripe does not.
        details = gw.attach_payment_method(
            details.id, customer=customer, idempotency_key=f"attach_{details.id}"
        )
    return details


def payment_of_attempt(session: Session, attempt_id: int) -> Payment | None:
    """The payment an attempt recorded (its receipt), if it succeeded."""
    return session.scalar(select(Payment).where(Payment.attempt_id == attempt_id).limit(1))


def forget_card(session: Session, row: PaymentMethod, actor: Actor = SYSTEM) -> None:
    """Our copy of a card that Stripe says is detached stops being offered."""
    before = _card_state(row)
    was_default = row.is_default
    row.detached_at = clock.now()
    row.is_default = False
    session.flush()
    _audit_card(session, row, "payment_method.removed", actor, before, _card_state(row))
    if was_default:
        rest = session.scalars(
            select(PaymentMethod)
            .where(PaymentMethod.account_id == row.account_id, PaymentMethod.detached_at.is_(None))
            .order_by(PaymentMethod.id)
            .limit(1)
        ).first()
        account = session.get(Account, row.account_id)
        if rest is not None and account is not None:
            make_default(session, account, rest, actor)


def stored_card_description(method: PaymentMethod | None) -> str:
    """How a payment's card is kept on the payment row, in the one way a card is written
    ("Visa ending in 4242", as portal.formatting.card writes it in English)."""
    if method is None:
        return "Card"
    brand = CARD_BRANDS.get((method.brand or "").lower()) or (method.brand or "Card").title()
    return f"{brand} ending in {method.last4}" if method.last4 else brand
