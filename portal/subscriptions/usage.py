"""Metered usage, recorded with an idempotency key: the same key twice counts once.

Race-safe through the unique constraint (subscription_id, idempotency_key): the row is inserted
with ON CONFLICT DO NOTHING (PostgreSQL and SQLite), so two reporters sending the same key at
the same moment leave one row, and both get it back. Flushes, never commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from portal import clock
from portal.audit.services import SYSTEM, Actor
from portal.errors import N_, Conflict, ValidationFailed
from portal.subscriptions.models import (
    PricingModel,
    Subscription,
    SubscriptionStatus,
    UsageRecord,
)

MAX_USAGE_QUANTITY = 10**9
MAX_KEY_LENGTH = 128
# NOTE: a reporter's clock may run a little ahead of ours; further ahead is a mistake.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class UsageOutcome:
    record: UsageRecord
    created: bool  # False: the key was recorded before, nothing was added


def record_usage(
    session: Session,
    subscription: Subscription,
    quantity: int,
    occurred_at: datetime,
    idempotency_key: str,
    *,
    actor: Actor = SYSTEM,
) -> UsageOutcome:
    """Record `quantity` units used at `occurred_at` on a metered subscription, once per key."""
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise ValidationFailed(N_("A usage quantity must be a whole number."))
    if not 0 <= quantity <= MAX_USAGE_QUANTITY:
        raise ValidationFailed(
            N_("A usage quantity must be between 0 and %(max)s."),
            params={"max": MAX_USAGE_QUANTITY},
        )
    key = (idempotency_key or "").strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ValidationFailed(
            N_("A usage record needs an idempotency key of 1 to %(max)s printable characters."),
            params={"max": MAX_KEY_LENGTH},
        )
    if occurred_at.tzinfo is None:
        raise ValidationFailed(N_("A usage time needs a time zone."))
    if subscription.price.pricing_model != PricingModel.METERED:
        raise ValidationFailed(N_("Usage can only be recorded on a metered subscription."))
    if subscription.status == SubscriptionStatus.CANCELED:
        raise Conflict(N_("This subscription has ended; no more usage can be recorded."))
    if occurred_at > clock.now() + CLOCK_SKEW:
        raise ValidationFailed(N_("Usage cannot be recorded for a time in the future."))
    if occurred_at < subscription.started_at:
        raise ValidationFailed(N_("Usage cannot be recorded before the subscription started."))

    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    inserted = session.execute(
        dialect.insert(UsageRecord)
        .values(
            subscription_id=subscription.id,
            quantity=quantity,
            occurred_at=occurred_at,
            idempotency_key=key,
            created_at=clock.now(),
        )
        .on_conflict_do_nothing(
            index_elements=[UsageRecord.subscription_id, UsageRecord.idempotency_key]
        )
        .returning(UsageRecord.id)
    ).scalar_one_or_none()
    record = session.scalars(
        select(UsageRecord)
        .where(UsageRecord.subscription_id == subscription.id, UsageRecord.idempotency_key == key)
        .execution_options(populate_existing=True)
    ).one()
    if inserted is None:
        if record.quantity != quantity:
            raise Conflict(
                N_("This usage key was already recorded with a different quantity."),
            )
        return UsageOutcome(record, created=False)
    actor.record(
        session,
        "usage.recorded",
        account_id=subscription.account_id,
        target_type="subscription",
        target_id=subscription.public_id,
        after={"quantity": quantity, "occurred_at": occurred_at.isoformat(), "key": key},
    )
    session.flush()
    return UsageOutcome(record, created=True)


def usage_total(session: Session, subscription_id: int, start: datetime, end: datetime) -> int:
    """Units used in [start, end)."""
    return int(
        session.scalar(
            select(func.coalesce(func.sum(UsageRecord.quantity), 0)).where(
                UsageRecord.subscription_id == subscription_id,
                UsageRecord.occurred_at >= start,
                UsageRecord.occurred_at < end,
            )
        )
        or 0
    )
