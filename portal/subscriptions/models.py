"""Plans, prices (flat, per unit, tiered, metered), subscriptions and metered usage."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal import clock
from portal.accounts.models import Account
from portal.db import Base, currency_check, intpk, money_minor, public_id


class PricingModel(StrEnum):
    FLAT = "flat"
    PER_UNIT = "per_unit"
    TIERED = "tiered"
    METERED = "metered"


class TierMode(StrEnum):
    GRADUATED = "graduated"
    VOLUME = "volume"


class SubscriptionStatus(StrEnum):
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    PAUSED = "paused"
    CANCELED = "canceled"


class Plan(Base):
    __tablename__ = "plans"

    id: Mapped[intpk]
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    description: Mapped[str] = mapped_column(String(500), default="")
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)

    prices: Mapped[list[Price]] = relationship(back_populates="plan")


class Price(Base):
    __tablename__ = "prices"
    __table_args__ = (
        CheckConstraint(currency_check(), name="currency_iso"),
        CheckConstraint(
            "pricing_model IN ('flat', 'per_unit', 'tiered', 'metered')", name="pricing_model_valid"
        ),
        CheckConstraint("billing_interval IN ('month', 'year')", name="interval_valid"),
        CheckConstraint("interval_count >= 1", name="interval_count_positive"),
        CheckConstraint("unit_amount_minor >= 0", name="unit_amount_non_negative"),
        CheckConstraint("flat_amount_minor >= 0", name="flat_amount_non_negative"),
        CheckConstraint(
            "(pricing_model = 'tiered') = (tier_mode IS NOT NULL)", name="tier_mode_iff_tiered"
        ),
        CheckConstraint(
            "tier_mode IS NULL OR tier_mode IN ('graduated', 'volume')", name="tier_mode_valid"
        ),
        CheckConstraint("min_quantity >= 0", name="min_quantity_non_negative"),
        CheckConstraint(
            "max_quantity IS NULL OR max_quantity >= min_quantity", name="max_quantity_above_min"
        ),
        UniqueConstraint("plan_id", "currency", "billing_interval", "interval_count"),
    )

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id", ondelete="RESTRICT"))
    currency: Mapped[str] = mapped_column(String(3))
    billing_interval: Mapped[str] = mapped_column(String(8), default="month")
    interval_count: Mapped[int] = mapped_column(default=1)
    pricing_model: Mapped[str] = mapped_column(String(16))
    tier_mode: Mapped[str | None] = mapped_column(String(16))
    # flat: flat_amount each period. per_unit: unit_amount x quantity (+ flat). metered:
    # unit_amount x usage summed over the period (+ flat). tiered: see PriceTier.
    unit_amount_minor: Mapped[money_minor] = mapped_column(default=0)
    flat_amount_minor: Mapped[money_minor] = mapped_column(default=0)
    unit_label: Mapped[str] = mapped_column(String(32), default="")
    min_quantity: Mapped[int] = mapped_column(default=1)
    max_quantity: Mapped[int | None]
    tax_rate_bp: Mapped[int] = mapped_column(default=0)
    tax_name: Mapped[str] = mapped_column(String(32), default="")
    is_active: Mapped[bool] = mapped_column(default=True)

    plan: Mapped[Plan] = relationship(back_populates="prices")
    tiers: Mapped[list[PriceTier]] = relationship(
        back_populates="price", order_by="PriceTier.position"
    )


class PriceTier(Base):
    __tablename__ = "price_tiers"
    __table_args__ = (
        UniqueConstraint("price_id", "position"),
        CheckConstraint("up_to IS NULL OR up_to > 0", name="up_to_positive"),
        CheckConstraint("unit_amount_minor >= 0", name="unit_amount_non_negative"),
        CheckConstraint("flat_amount_minor >= 0", name="flat_amount_non_negative"),
    )

    id: Mapped[intpk]
    price_id: Mapped[int] = mapped_column(ForeignKey("prices.id", ondelete="CASCADE"))
    position: Mapped[int]
    up_to: Mapped[int | None]  # None: no upper bound (the last tier)
    unit_amount_minor: Mapped[money_minor] = mapped_column(default=0)
    flat_amount_minor: Mapped[money_minor] = mapped_column(default=0)

    price: Mapped[Price] = relationship(back_populates="tiers")


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        CheckConstraint(
            "status IN ('trialing', 'active', 'past_due', 'paused', 'canceled')",
            name="status_valid",
        ),
        CheckConstraint("quantity >= 0", name="quantity_non_negative"),
        CheckConstraint("current_period_end > current_period_start", name="period_end_after_start"),
        CheckConstraint(
            "collection_method IN ('charge_automatically', 'send_invoice')",
            name="collection_method_valid",
        ),
        CheckConstraint(
            "scheduled_quantity IS NULL OR scheduled_quantity >= 0",
            name="scheduled_quantity_non_negative",
        ),
        Index("ix_subscriptions_account_id_status", "account_id", "status"),
        Index("ix_subscriptions_current_period_end", "current_period_end"),
    )

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    price_id: Mapped[int] = mapped_column(ForeignKey("prices.id", ondelete="RESTRICT"))
    quantity: Mapped[int] = mapped_column(default=1)
    status: Mapped[str] = mapped_column(String(16), default=SubscriptionStatus.ACTIVE.value)
    collection_method: Mapped[str] = mapped_column(String(24), default="charge_automatically")
    started_at: Mapped[datetime] = mapped_column(default=clock.now)
    current_period_start: Mapped[datetime]
    current_period_end: Mapped[datetime]
    trial_end: Mapped[datetime | None]
    cancel_at_period_end: Mapped[bool] = mapped_column(default=False)
    canceled_at: Mapped[datetime | None]
    cancellation_reason: Mapped[str] = mapped_column(String(500), default="")
    paused_at: Mapped[datetime | None]
    pause_until: Mapped[datetime | None]
    # A change the customer scheduled for the end of the period (a downgrade, fewer seats).
    scheduled_price_id: Mapped[int | None] = mapped_column(
        ForeignKey("prices.id", ondelete="RESTRICT")
    )
    scheduled_quantity: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now, onupdate=clock.now)

    account: Mapped[Account] = relationship()
    price: Mapped[Price] = relationship(foreign_keys=[price_id])
    scheduled_price: Mapped[Price | None] = relationship(foreign_keys=[scheduled_price_id])


class UsageRecord(Base):
    __tablename__ = "usage_records"
    __table_args__ = (
        # NOTE: the same idempotency key reported twice counts once.
        UniqueConstraint("subscription_id", "idempotency_key"),
        CheckConstraint("quantity >= 0", name="quantity_non_negative"),
        Index("ix_usage_records_subscription_id_occurred_at", "subscription_id", "occurred_at"),
    )

    id: Mapped[intpk]
    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="RESTRICT")
    )
    quantity: Mapped[int]
    occurred_at: Mapped[datetime]
    idempotency_key: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
