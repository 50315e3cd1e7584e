"""Stripe's events: `POST /webhooks/stripe`, and the handlers it dispatches to.

The order of work is what keeps the database free while Stripe is slow:

1. the signature is checked on the raw body and the body's shape is checked (400 otherwise);
2. a short read asks whether the event is already in the inbox (a duplicate answers at once),
   and that read is ended;
3. the event's object is fetched from Stripe, with no transaction open: handlers never trust
   the copy in the event (a leaked signing secret must not be able to record a refund Stripe
   never made, or remove a card) and act only on what Stripe answers;
4. the inbox row and the effect are written in the request's unit of work (the write lock or
   the row locks are taken only now). Handlers are idempotent and only move forward, so
   duplicates and any order converge.

An object Stripe does not know is not applied; the event is kept in the inbox as "failed"
and audited. An object Stripe knows but that we cannot place raises UnknownObject: the
request answers 500 and Stripe retries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Response, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal import clock
from portal.accounts.models import Account
from portal.audit.services import record
from portal.billing.money import Money
from portal.billing.services import record_refund_in_ledger
from portal.disputes.services import apply_chargeback
from portal.extensions import csrf, db
from portal.payments import services
from portal.payments.gateway import (
    Card,
    Charge,
    Dispute,
    Gateway,
    GatewayRejected,
    GatewayUnavailable,
    Intent,
    gateway,
)
from portal.payments.models import Payment, PaymentAttempt, PaymentMethod, Refund, StripeEvent
from portal.payments.refunds import settle_from_charge

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 512 * 1024
STRIPE = services.STRIPE


class UnknownObject(Exception):
    """Stripe knows the event's object but the portal cannot place it: answer 5xx, Stripe
    retries."""


class MalformedEvent(ValueError):
    """A signed body that is not a Stripe event: answer 400 with the reason."""


@dataclass(frozen=True)
class NotAtStripe:
    """Stripe does not know the object the event names (or refused to show it)."""

    object_id: str


Fetcher = Callable[[Gateway, dict[str, Any]], Any]
Applier = Callable[[Session, dict[str, Any], Any], None]


# -- parsing -----------------------------------------------------------------------------------


def parse_event(payload: bytes) -> dict[str, Any]:
    """The event as a dict with a string id and type and an object with a string id."""
    try:
        event = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as error:
        raise MalformedEvent("The body is not JSON.") from error
    if not isinstance(event, dict):
        raise MalformedEvent("The body is not a Stripe event object.")
    event_id, event_type, data = event.get("id"), event.get("type"), event.get("data")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 255:
        raise MalformedEvent("The event has no usable id.")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 64:
        raise MalformedEvent("The event has no usable type.")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise MalformedEvent("The event carries no object.")
    object_id = data["object"].get("id")
    if event_type in HANDLERS and (not isinstance(object_id, str) or not object_id):
        raise MalformedEvent("The event's object has no id.")
    if isinstance(object_id, str) and len(object_id) > 255:
        raise MalformedEvent("The event's object id is too long.")
    return event


def _obj(event: dict[str, Any]) -> dict[str, Any]:
    return event["data"]["object"]  # type: ignore[no-any-return]


def _object_id(event: dict[str, Any]) -> str:
    return str(_obj(event).get("id") or "")


# -- fetching from Stripe (network only: no session) -------------------------------------------


def _found(value: Any, object_id: str) -> Any:
    return NotAtStripe(object_id) if value is None else value


def _fetch_payment_intent(gw: Gateway, event: dict[str, Any]) -> Any:
    return _found(gw.find_payment_intent(_object_id(event)), _object_id(event))


def _fetch_charge(gw: Gateway, event: dict[str, Any]) -> Any:
    return _found(gw.find_charge(_object_id(event)), _object_id(event))


def _fetch_setup_intent(gw: Gateway, event: dict[str, Any]) -> Any:
    intent = gw.find_setup_intent(_object_id(event))
    if intent is None:
        return NotAtStripe(_object_id(event))
    card = gw.find_payment_method(intent.payment_method) if intent.payment_method else None
    return (intent, card)


def _fetch_payment_method(gw: Gateway, event: dict[str, Any]) -> Any:
    return _found(gw.find_payment_method(_object_id(event)), _object_id(event))


def _fetch_dispute(gw: Gateway, event: dict[str, Any]) -> Any:
    return _found(gw.find_dispute(_object_id(event)), _object_id(event))


def fetch(gw: Gateway, event: dict[str, Any]) -> Any:
    """Stripe's own copy of the event's object (None for a type we do not act on)."""
    handler = HANDLERS.get(event["type"])
    if handler is None:
        return None
    try:
        return handler[0](gw, event)
    except GatewayRejected:
        # NOTE: Stripe refused to show it (a malformed id, another account's object): we
        # cannot confirm it, so it is treated like an object Stripe does not know.
        return NotAtStripe(_object_id(event))


# -- applying (in the request's unit of work) ---------------------------------------------------


def _payment_intent(session: Session, event: dict[str, Any], intent: Intent) -> None:
    attempt = services.attempt_for_intent(session, intent.id)
    if attempt is None and intent.metadata and intent.metadata.get("attempt"):
        # NOTE: the create call's answer was lost, so we never saved the intent id; the
        # metadata (Stripe's, not the event's) names the attempt saved before the call.
        attempt = session.scalar(
            select(PaymentAttempt)
            .where(PaymentAttempt.public_id == intent.metadata["attempt"])
            .with_for_update()
        )
        if attempt is not None and attempt.stripe_payment_intent_id is None:
            attempt.stripe_payment_intent_id = intent.id
    if attempt is None:
        raise UnknownObject(f"payment intent {intent.id} belongs to no payment attempt")
    services.apply_intent(session, attempt, intent, STRIPE)


def _charge_refunded(session: Session, event: dict[str, Any], charge: Charge) -> None:
    where = Payment.stripe_charge_id == charge.id
    if charge.payment_intent:
        where = where | (Payment.stripe_payment_intent_id == charge.payment_intent)
    payment = session.scalar(select(Payment).where(where).with_for_update())
    if payment is None:
        raise UnknownObject(f"refunded charge {charge.id} matches no payment")
    # NOTE: Stripe's amount_refunded only grows, so applying the difference is
    # order-independent; the event's own figure is never used.
    refunded = min(charge.amount_refunded, payment.amount_minor)
    # NOTE: refunds we asked for ourselves (pending, their answer maybe lost) are settled first,
    # so the difference left is only what was refunded elsewhere (the Stripe dashboard).
    settle_from_charge(session, payment, refunded, STRIPE)
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
        idempotency_key=f"{charge.id}:refunded:{refunded}",
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
    STRIPE.record(
        session,
        "refund.recorded",
        account_id=payment.account_id,
        target_type="payment",
        target_id=payment.public_id,
        before={"amount_refunded_minor": refunded - delta},
        after={
            "amount_refunded_minor": refunded,
            "refund_minor": delta,
            "currency": payment.currency,
            "refund": refund.public_id,
        },
    )


def _account_for_customer(session: Session, customer: str | None) -> Account | None:
    if not customer:
        return None
    return session.scalar(select(Account).where(Account.stripe_customer_id == customer))


def _setup_intent_succeeded(
    session: Session, event: dict[str, Any], fetched: tuple[Intent, Card | None]
) -> None:
    intent, card = fetched
    if intent.status != "succeeded" or card is None:
        _not_applied(session, event, f"Stripe says setup intent {intent.id} is {intent.status}")
        return
    account = _account_for_customer(session, intent.customer)
    if account is None:
        raise UnknownObject(f"setup intent {intent.id} belongs to no account")
    services.save_card(session, account, card, actor=STRIPE)


def _payment_method_changed(session: Session, event: dict[str, Any], card: Card) -> None:
    row = session.scalar(
        select(PaymentMethod)
        .where(PaymentMethod.stripe_payment_method_id == card.id)
        .with_for_update()
    )
    if card.customer is None:
        # NOTE: Stripe says it is detached (whatever the event's type claims).
        if row is not None and row.detached_at is None:
            services.forget_card(session, row, STRIPE)
        return
    account = _account_for_customer(session, card.customer)
    if account is None:
        if row is None:
            raise UnknownObject(f"payment method {card.id} belongs to no account")
        return
    if event["type"] == "payment_method.detached":
        _not_applied(session, event, f"Stripe says payment method {card.id} is still attached")
        return
    if row is not None and row.account_id != account.id:
        _not_applied(session, event, f"payment method {card.id} belongs to another account")
        return
    services.save_card(session, account, card, actor=STRIPE)


def _dispute(session: Session, event: dict[str, Any], dispute: Dispute) -> None:
    where = Payment.stripe_charge_id == dispute.charge
    if dispute.payment_intent:
        where = where | (Payment.stripe_payment_intent_id == dispute.payment_intent)
    payment = session.scalar(select(Payment).where(where).with_for_update())
    if payment is None:
        raise UnknownObject(f"dispute {dispute.id} matches no payment")
    # NOTE: every dispute event applies Stripe's current copy of the dispute (status,
    # deadline, balance transactions), so duplicates and any order converge (issue 11).
    apply_chargeback(session, dispute, payment, STRIPE)


def _not_applied(session: Session, event: dict[str, Any], reason: str) -> None:
    log.warning("stripe event %s (%s) not applied: %s", event["id"], event["type"], reason)
    record(
        session,
        "stripe.event_not_applied",
        actor_kind="stripe",
        target_type="stripe_event",
        target_id=str(event["id"])[:64],
        after={"type": event["type"], "object": _object_id(event), "reason": reason},
    )


HANDLERS: dict[str, tuple[Fetcher, Applier]] = {
    "payment_intent.succeeded": (_fetch_payment_intent, _payment_intent),
    "payment_intent.payment_failed": (_fetch_payment_intent, _payment_intent),
    "payment_intent.processing": (_fetch_payment_intent, _payment_intent),
    "payment_intent.requires_action": (_fetch_payment_intent, _payment_intent),
    "payment_intent.canceled": (_fetch_payment_intent, _payment_intent),
    "charge.refunded": (_fetch_charge, _charge_refunded),
    "setup_intent.succeeded": (_fetch_setup_intent, _setup_intent_succeeded),
    "payment_method.attached": (_fetch_payment_method, _payment_method_changed),
    "payment_method.detached": (_fetch_payment_method, _payment_method_changed),
    "payment_method.updated": (_fetch_payment_method, _payment_method_changed),
    "charge.dispute.created": (_fetch_dispute, _dispute),
    "charge.dispute.updated": (_fetch_dispute, _dispute),
    "charge.dispute.closed": (_fetch_dispute, _dispute),
    "charge.dispute.funds_withdrawn": (_fetch_dispute, _dispute),
    "charge.dispute.funds_reinstated": (_fetch_dispute, _dispute),
}


def already_received(session: Session, event_id: str) -> bool:
    return (
        session.scalar(select(StripeEvent.id).where(StripeEvent.stripe_event_id == event_id))
        is not None
    )


def handle_event(session: Session, event: dict[str, Any], fetched: Any) -> str:
    """Store the event in the inbox and apply Stripe's copy of its object, in the caller's
    unit of work.

    Returns "processed", "ignored" (a type we do not act on), "not_at_stripe" (kept as
    failed, audited) or "duplicate". A handler error propagates: the caller rolls back (the
    inbox row too) and answers 5xx.
    """
    handler = HANDLERS.get(event["type"])
    missing = isinstance(fetched, NotAtStripe)
    status = "ignored" if handler is None else ("failed" if missing else "processed")
    row = StripeEvent(
        stripe_event_id=event["id"],
        event_type=event["type"][:64],
        object_id=_object_id(event)[:255],
        payload=_safe_payload(event),
        status=status,
        processed_at=clock.now(),
    )
    try:
        # NOTE: added inside the savepoint (begin_nested flushes what is pending first).
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return "duplicate"  # NOTE: a parallel delivery of the same event got there first.
    if handler is None:
        return "ignored"
    if missing:
        _not_applied(session, event, f"Stripe does not know {fetched.object_id}")
        return "not_at_stripe"
    handler[1](session, event, fetched)
    session.flush()
    return "processed"


def _safe_payload(event: dict[str, Any]) -> dict[str, Any]:
    """What we keep of an event: never a client secret."""
    obj = dict(_obj(event))
    obj.pop("client_secret", None)
    obj.pop("next_action", None)
    return {"id": event["id"], "type": event["type"], "object": obj}


# -- the route ---------------------------------------------------------------------------------


def _answer(status: int, **body: Any) -> Response:
    response = jsonify(**body)
    response.status_code = status
    return response


@csrf.exempt
def stripe_webhook() -> Response:
    """`POST /webhooks/stripe` (registered on the checkout blueprint, CSRF-exempt: the
    signature on the raw body is its check)."""
    payload = request.get_data(cache=False)
    if len(payload) > MAX_BODY_BYTES:
        return _answer(413, error="too large", message="The event body is too large.")
    gw = gateway()
    try:
        gw.verify_signature(payload, request.headers.get("Stripe-Signature"))
    except ValueError:
        return _answer(400, error="invalid signature", message="The signature does not verify.")
    try:
        event = parse_event(payload)
    except MalformedEvent as error:
        return _answer(400, error="malformed event", message=str(error))
    if already_received(db.session, event["id"]):
        return _answer(200, received=True, outcome="duplicate")
    # NOTE: nothing is held while Stripe is asked: the read above is ended first (on SQLite a
    # webhook's transaction would otherwise hold the write lock for the whole call).
    services.end_reads(db.session)
    try:
        fetched = fetch(gw, event)
    except GatewayUnavailable:
        log.warning("stripe event %s (%s): Stripe did not answer", event["id"], event["type"])
        return _answer(503, error="not processed", message="Stripe did not answer; please retry.")
    try:
        outcome = handle_event(db.session, event, fetched)
    except UnknownObject as error:
        db.session.rollback()
        log.error("stripe event %s (%s) not placed: %s", event["id"], event["type"], error)
        return _answer(500, error="not processed", message="Not placed yet; please retry.")
    return _answer(200, received=True, outcome=outcome)
