"""Stripe's events: the inbox row and the event's effect are written in one transaction.

Handlers never trust the order or the copy of an object in the event: payment events re-fetch
the PaymentIntent, and the attempt's state machine only moves forward, so duplicates and any
order converge. An event about an object we cannot place raises (5xx) so Stripe retries it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal import clock
from portal.accounts.models import Account
from portal.audit.services import record
from portal.billing.money import Money
from portal.billing.services import record_refund_in_ledger
from portal.payments import services
from portal.payments.gateway import Gateway
from portal.payments.models import Payment, PaymentAttempt, PaymentMethod, Refund, StripeEvent

log = logging.getLogger(__name__)


class UnknownObject(Exception):
    """The event names an object the portal cannot place: answer 5xx, Stripe retries."""


Handler = Callable[[Session, Any, Gateway], None]


def _obj(event: Any) -> Any:
    return event["data"]["object"]


def _payment_intent(session: Session, event: Any, gw: Gateway) -> None:
    intent_id = _obj(event)["id"]
    intent = gw.retrieve_payment_intent(intent_id)
    attempt = services.attempt_for_intent(session, intent.id)
    if attempt is None and intent.metadata and intent.metadata.get("attempt"):
        # NOTE: the create call's answer was lost, so we never saved the intent id; the
        # metadata names the attempt that was saved before the call.
        attempt = session.scalar(
            select(PaymentAttempt)
            .where(PaymentAttempt.public_id == intent.metadata["attempt"])
            .with_for_update()
        )
        if attempt is not None and attempt.stripe_payment_intent_id is None:
            attempt.stripe_payment_intent_id = intent.id
    if attempt is None:
        raise UnknownObject(f"payment intent {intent_id} belongs to no payment attempt")
    services.apply_intent(session, attempt, intent)


def _charge_refunded(session: Session, event: Any, gw: Gateway) -> None:
    charge = _obj(event)
    payment = session.scalar(
        select(Payment)
        .where(
            (Payment.stripe_charge_id == charge["id"])
            | (Payment.stripe_payment_intent_id == charge.get("payment_intent"))
        )
        .with_for_update()
    )
    if payment is None:
        raise UnknownObject(f"refunded charge {charge['id']} matches no payment")
    refunded = int(charge.get("amount_refunded") or 0)
    # NOTE: amount_refunded only grows, so applying the difference is order-independent.
    delta = refunded - payment.amount_refunded_minor
    if delta <= 0:
        return
    refund = Refund(
        account_id=payment.account_id,
        payment_id=payment.id,
        currency=payment.currency,
        amount_minor=delta,
        reason="Refunded at Stripe",
        status="succeeded",
        idempotency_key=f"{charge['id']}:refunded:{refunded}",
        succeeded_at=clock.now(),
    )
    session.add(refund)
    session.flush()
    record_refund_in_ledger(
        session,
        payment,
        Money(delta, payment.currency),
        refund_id=refund.id,
        refunded_at=clock.now(),
    )


def _account_for_customer(session: Session, customer: str | None) -> Account | None:
    if not customer:
        return None
    return session.scalar(select(Account).where(Account.stripe_customer_id == customer))


def _setup_intent_succeeded(session: Session, event: Any, gw: Gateway) -> None:
    intent = gw.retrieve_setup_intent(_obj(event)["id"])
    account = _account_for_customer(session, intent.customer)
    if account is None or not intent.payment_method:
        raise UnknownObject(f"setup intent {intent.id} belongs to no account")
    if intent.status == "succeeded":
        services.save_card(session, account, gw.retrieve_payment_method(intent.payment_method))


def _payment_method_changed(session: Session, event: Any, gw: Gateway) -> None:
    method = _obj(event)
    row = session.scalar(
        select(PaymentMethod).where(PaymentMethod.stripe_payment_method_id == method["id"])
    )
    if event["type"] == "payment_method.detached":
        if row is not None and row.detached_at is None:
            row.detached_at = clock.now()
            row.is_default = False
        return
    account = _account_for_customer(session, method.get("customer"))
    if account is None:
        if row is None:
            raise UnknownObject(f"payment method {method['id']} belongs to no account")
        return
    services.save_card(session, account, gw.retrieve_payment_method(method["id"]))


def _dispute(session: Session, event: Any, gw: Gateway) -> None:
    dispute = _obj(event)
    payment = session.scalar(
        select(Payment).where(
            (Payment.stripe_charge_id == dispute.get("charge"))
            | (Payment.stripe_payment_intent_id == dispute.get("payment_intent"))
        )
    )
    if payment is None:
        raise UnknownObject(f"dispute {dispute.get('id')} matches no payment")
    # NOTE: the hand-off point for the disputes issue: recorded in the inbox and audited.
    record(
        session,
        event["type"].replace("charge.", ""),
        actor_kind="stripe",
        account_id=payment.account_id,
        target_type="payment",
        target_id=payment.public_id,
        after={
            "stripe_dispute_id": dispute.get("id"),
            "amount_minor": dispute.get("amount"),
            "reason": dispute.get("reason"),
            "status": dispute.get("status"),
        },
    )


HANDLERS: dict[str, Handler] = {
    "payment_intent.succeeded": _payment_intent,
    "payment_intent.payment_failed": _payment_intent,
    "payment_intent.processing": _payment_intent,
    "payment_intent.requires_action": _payment_intent,
    "payment_intent.canceled": _payment_intent,
    "charge.refunded": _charge_refunded,
    "setup_intent.succeeded": _setup_intent_succeeded,
    "payment_method.attached": _payment_method_changed,
    "payment_method.detached": _payment_method_changed,
    "payment_method.updated": _payment_method_changed,
    "charge.dispute.created": _dispute,
    "charge.dispute.closed": _dispute,
}


def handle_event(session: Session, event: Any, gw: Gateway) -> str:
    """Store the event in the inbox and apply it, in the caller's transaction.

    Returns "processed", "ignored" (a type we do not act on) or "duplicate". A handler error
    propagates: the caller rolls back (the inbox row too) and answers 5xx.
    """
    event_id = str(event["id"])
    if session.scalar(select(StripeEvent.id).where(StripeEvent.stripe_event_id == event_id)):
        return "duplicate"
    handler = HANDLERS.get(event["type"])
    obj = _obj(event)
    row = StripeEvent(
        stripe_event_id=event_id,
        event_type=event["type"][:64],
        object_id=str(obj.get("id", ""))[:255],
        payload=_safe_payload(event),
        status="processed" if handler else "ignored",
        processed_at=clock.now(),
    )
    try:
        # NOTE: added inside the savepoint (begin_nested flushes what is pending first).
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return "duplicate"  # NOTE: a parallel delivery of the same event got there first.
    if handler is not None:
        handler(session, event, gw)
    session.flush()
    return row.status


def _safe_payload(event: Any) -> dict[str, Any]:
    """What we keep of an event: never a client secret."""
    obj = dict(_obj(event))
    obj.pop("client_secret", None)
    obj.pop("next_action", None)
    return {"id": event["id"], "type": event["type"], "object": obj}
