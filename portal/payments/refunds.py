"""Refunds we asked Stripe for: recording the answer, and settling the ones whose answer was lost.

A refund row (status "pending", its idempotency key) is saved and committed before Stripe is
called. Whichever arrives first settles it, exactly once: the call's own answer
(apply_refund_result), the charge.refunded webhook (settle_from_charge, called by the webhook
handler before it records refunds made elsewhere), or `billing reconcile`
(settle_pending_refunds), which asks Stripe for the charge's refunded total.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import clock
from portal.audit.services import SYSTEM, Actor
from portal.billing.money import Money
from portal.billing.services import record_refund_in_ledger
from portal.db import begin_write
from portal.payments.gateway import Gateway, GatewayRejected, GatewayUnavailable
from portal.payments.models import Payment, Refund

PENDING = "pending"


def _locked(session: Session, model: Any, row_id: int) -> Any:
    return session.scalar(
        select(model)
        .where(model.id == row_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def _succeed(session: Session, refund: Refund, payment: Payment, actor: Actor) -> None:
    before = payment.amount_refunded_minor
    refund.status = "succeeded"
    refund.succeeded_at = clock.now()
    record_refund_in_ledger(
        session,
        payment,
        Money(refund.amount_minor, refund.currency),
        refund_id=refund.id,
        refunded_at=refund.succeeded_at,
    )
    actor.record(
        session,
        "refund.recorded",
        account_id=refund.account_id,
        target_type="payment",
        target_id=payment.public_id,
        before={"amount_refunded_minor": before},
        after={
            "amount_refunded_minor": payment.amount_refunded_minor,
            "refund_minor": refund.amount_minor,
            "currency": refund.currency,
            "refund": refund.public_id,
        },
    )
    session.flush()
    if refund.dispute_id is not None:
        _resolve_dispute(session, refund, actor)


def _resolve_dispute(session: Session, refund: Refund, actor: Actor) -> None:
    """A refund made to settle a dispute resolves it once the money is confirmed gone back
    (here, whether the answer came from the call, the webhook or reconcile)."""
    from portal.disputes import services as disputes
    from portal.disputes.models import Dispute, DisputeStatus
    from portal.disputes.queries import OPEN_DISPUTE_STATUSES

    dispute = session.get(Dispute, refund.dispute_id)
    if dispute is not None and dispute.status in OPEN_DISPUTE_STATUSES:
        disputes.transition(
            session, dispute, DisputeStatus.RESOLVED, actor, note=refund.reason, resolution="refund"
        )


def apply_refund_result(
    session: Session, refund_id: int, *, stripe_refund_id: str, status: str, actor: Actor
) -> Refund:
    """Record Stripe's answer to our refund call (locks the refund and its payment). A refund
    already settled by the webhook or reconcile is left as it is."""
    refund = _locked(session, Refund, refund_id)
    payment = _locked(session, Payment, refund.payment_id)
    if refund.stripe_refund_id is None:
        refund.stripe_refund_id = stripe_refund_id
    if refund.status != PENDING:
        return refund
    if status == "succeeded":
        _succeed(session, refund, payment, actor)
    elif status in ("failed", "canceled"):
        refund.status = status
        actor.record(
            session,
            "refund.failed",
            account_id=refund.account_id,
            target_type="refund",
            target_id=refund.public_id,
            before={"status": PENDING},
            after={"status": status},
        )
    session.flush()
    return refund


def settle_from_charge(
    session: Session, payment: Payment, refunded_at_stripe: int, actor: Actor = SYSTEM
) -> None:
    """With the payment locked: our pending refunds that Stripe's refunded total now covers are
    recorded as succeeded (oldest first), so a webhook never records them a second time."""
    unexplained = min(refunded_at_stripe, payment.amount_minor) - payment.amount_refunded_minor
    pending = session.scalars(
        select(Refund)
        .where(Refund.payment_id == payment.id, Refund.status == PENDING)
        .order_by(Refund.id)
        .with_for_update()
    ).all()
    for refund in pending:
        if refund.amount_minor > unexplained:
            break
        _succeed(session, refund, payment, actor)
        unexplained -= refund.amount_minor


def pending_refund_ids(session: Session, older_than: timedelta) -> list[int]:
    return list(
        session.scalars(
            select(Refund.id)
            .where(Refund.status == PENDING, Refund.created_at <= clock.now() - older_than)
            .order_by(Refund.id)
        )
    )


def settle_pending_refunds(
    session: Session,
    gw: Gateway,
    commit: Callable[[], None],
    *,
    older_than: timedelta = timedelta(minutes=5),
) -> tuple[list[str], list[str]]:
    """`billing reconcile`'s part for refunds: ask Stripe for each pending refund's charge (no
    transaction open meanwhile), then lock and settle. Returns (settled, unreachable) lines."""
    settled: list[str] = []
    unreachable: list[str] = []
    ids = pending_refund_ids(session, older_than)
    session.rollback()
    for refund_id in ids:
        row = session.execute(
            select(
                Refund.public_id,
                Payment.id,
                Payment.stripe_charge_id,
                Payment.stripe_payment_intent_id,
            )
            .join(Payment, Payment.id == Refund.payment_id)
            .where(Refund.id == refund_id)
        ).one()
        public_id, payment_id, charge_id, intent_id = row
        session.rollback()
        try:
            if charge_id is None and intent_id:
                charge_id = gw.retrieve_payment_intent(intent_id).latest_charge
            charge = gw.find_charge(charge_id) if charge_id else None
        except (GatewayUnavailable, GatewayRejected) as error:
            unreachable.append(f"refund {public_id}: {error.message}")
            continue
        if charge is None:
            unreachable.append(f"refund {public_id}: Stripe has no charge for its payment")
            continue
        begin_write(session)
        payment = _locked(session, Payment, payment_id)
        settle_from_charge(session, payment, charge.amount_refunded)
        status = session.scalar(select(Refund.status).where(Refund.id == refund_id))
        commit()
        if status != PENDING:
            settled.append(f"refund {public_id}: pending -> {status}")
    return settled, unreachable
