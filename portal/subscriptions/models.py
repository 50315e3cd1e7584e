"""Plans, prices (flat, per unit, tiered, metered), subscriptions and metered usage."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal import clock
from portal.accounts.models import Account
from portal.db import Base, currency_check, intpk, money_minor, one_of, public_id


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


class ChangeKind(StrEnum):
    PLAN = "plan"
    QUANTITY = "quantity"
    INTERVAL = "interval"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    REACTIVATE = "reactivate"
    # The one-time retention discount taken instead of canceling (migration 0009).
    DISCOUNT = "discount"


class ChangeStatus(StrEnum):
    SCHEDULED = "scheduled"
    APPLIED = "applied"
    WITHDRAWN = "withdrawn"


class ChangeTiming(StrEnum):
    NOW = "now"
    PERIOD_END = "period_end"


# NOTE: a tax rate's country is an ISO 3166 alpha-2 code, or "ALL" for a rate that applies
# wherever the customer is.
ALL_COUNTRIES = "ALL"


class TaxRate(Base):
    """A tax rate (name, basis points, country, inclusive or exclusive), referenced by a price or
    a plan and frozen onto invoice lines when an invoice is finalized (portal.billing.tax)."""

    __tablename__ = "tax_rates"
    __table_args__ = (
        CheckConstraint("rate_bp >= 0 AND rate_bp <= 10000", name="rate_valid"),
        CheckConstraint(
            "country = 'ALL' OR (length(country) = 2 AND upper(country) = country)",
            name="country_valid",
        ),
    )

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(64))
    rate_bp: Mapped[int]
    country: Mapped[str] = mapped_column(String(3), default=ALL_COUNTRIES)
    inclusive: Mapped[bool] = mapped_column(default=False)
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)

    def applies_to(self, country: str) -> bool:
        """Whether the rate applies to a customer in `country` (ISO alpha-2)."""
        return self.country == ALL_COUNTRIES or self.country == (country or "").upper()


class Plan(Base):
    __tablename__ = "plans"
    __table_args__ = (
        CheckConstraint("trial_days >= 0", name="trial_days_non_negative"),
        CheckConstraint("max_pause_days >= 0", name="max_pause_days_non_negative"),
        CheckConstraint(
            "retention_discount_bp >= 0 AND retention_discount_bp <= 10000",
            name="retention_discount_valid",
        ),
        CheckConstraint(
            "retention_discount_periods >= 0", name="retention_discount_periods_non_negative"
        ),
    )

    id: Mapped[intpk]
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    description: Mapped[str] = mapped_column(String(500), default="")
    is_active: Mapped[bool] = mapped_column(default=True)
    # NOTE: the ladder: a higher rank is an upgrade (applies now), a lower one a downgrade
    # (applies at the period end unless the customer chooses now where allowed).
    rank: Mapped[int] = mapped_column(default=0)
    trial_days: Mapped[int] = mapped_column(default=0)
    allows_cancel_now: Mapped[bool] = mapped_column(default=False)
    allows_pause: Mapped[bool] = mapped_column(default=False)
    max_pause_days: Mapped[int] = mapped_column(default=90)
    retention_discount_bp: Mapped[int] = mapped_column(default=0)
    retention_discount_periods: Mapped[int] = mapped_column(default=0)
    tax_rate_id: Mapped[int | None] = mapped_column(ForeignKey("tax_rates.id", ondelete="RESTRICT"))
    created_at: Mapped[datetime] = mapped_column(default=clock.now)

    prices: Mapped[list[Price]] = relationship(back_populates="plan")
    tax_rate: Mapped[TaxRate | None] = relationship()


class PlanTransition(Base):
    """A plan a subscriber of `from_plan` may change to."""

    __tablename__ = "plan_transitions"
    __table_args__ = (
        UniqueConstraint("from_plan_id", "to_plan_id"),
        CheckConstraint("from_plan_id != to_plan_id", name="not_to_itself"),
    )

    id: Mapped[intpk]
    from_plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"))
    to_plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"))

    from_plan: Mapped[Plan] = relationship(foreign_keys=[from_plan_id])
    to_plan: Mapped[Plan] = relationship(foreign_keys=[to_plan_id])


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
        CheckConstraint("version >= 1", name="version_positive"),
        # NOTE: a price customers are on never changes: a new amount is a new row (the next
        # version), the old one stays for its subscribers. One ACTIVE price per plan, currency
        # and interval is what new subscriptions and changes are offered.
        UniqueConstraint(
            "plan_id",
            "currency",
            "billing_interval",
            "interval_count",
            "version",
            name="uq_prices_plan_currency_interval_version",
        ),
        Index(
            "uq_prices_active_per_plan_currency_interval",
            "plan_id",
            "currency",
            "billing_interval",
            "interval_count",
            unique=True,
            sqlite_where=text("is_active"),
            postgresql_where=text("is_active"),
        ),
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
    version: Mapped[int] = mapped_column(default=1)
    # NOTE: the price's own tax rate, else the plan's (portal.billing.tax.rate_for).
    tax_rate_id: Mapped[int | None] = mapped_column(ForeignKey("tax_rates.id", ondelete="RESTRICT"))
    is_active: Mapped[bool] = mapped_column(default=True)

    plan: Mapped[Plan] = relationship(back_populates="prices")
    tax_rate: Mapped[TaxRate | None] = relationship()
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
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("discount_bp >= 0 AND discount_bp <= 10000", name="discount_valid"),
        CheckConstraint("discount_periods_left >= 0", name="discount_periods_non_negative"),
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
    # NOTE: bumped on every change of the subscription (bump_version): a form carries the
    # version it was shown with, and a stale one is refused.
    version: Mapped[int] = mapped_column(default=1)
    # A discount (e.g. the retention offer) on the next `discount_periods_left` regular invoices.
    discount_bp: Mapped[int] = mapped_column(default=0)
    discount_periods_left: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now, onupdate=clock.now)

    account: Mapped[Account] = relationship()
    price: Mapped[Price] = relationship(foreign_keys=[price_id])
    changes: Mapped[list[SubscriptionChange]] = relationship(
        back_populates="subscription",
        order_by="SubscriptionChange.requested_at, SubscriptionChange.id",
        viewonly=True,
    )

    def bump_version(self) -> None:
        """Mark a change: forms shown with the previous version are now stale."""
        self.version = (self.version or 1) + 1


class SubscriptionChange(Base):
    """Every change of a subscription: who asked, when it takes effect, whether it is still
    scheduled (a downgrade, fewer seats, cancel at the period end) and the invoice of its
    proration. At most one scheduled change per subscription."""

    __tablename__ = "subscription_changes"
    __table_args__ = (
        CheckConstraint(one_of("kind", ChangeKind), name="kind_valid"),
        CheckConstraint(one_of("status", ChangeStatus), name="status_valid"),
        CheckConstraint(one_of("timing", ChangeTiming), name="timing_valid"),
        CheckConstraint(
            "actor_kind IN ('customer', 'staff', 'stripe', 'system')", name="actor_kind_valid"
        ),
        CheckConstraint("from_quantity IS NULL OR from_quantity >= 0", name="from_quantity_valid"),
        CheckConstraint("to_quantity IS NULL OR to_quantity >= 0", name="to_quantity_valid"),
        CheckConstraint("(status = 'applied') = (applied_at IS NOT NULL)", name="applied_iff_at"),
        CheckConstraint(
            "(status = 'withdrawn') = (withdrawn_at IS NOT NULL)", name="withdrawn_iff_at"
        ),
        Index(
            "uq_subscription_changes_one_scheduled",
            "subscription_id",
            unique=True,
            sqlite_where=text("status = 'scheduled'"),
            postgresql_where=text("status = 'scheduled'"),
        ),
        Index("ix_subscription_changes_status_effective_at", "status", "effective_at"),
        Index("ix_subscription_changes_subscription_id", "subscription_id"),
    )

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=ChangeStatus.SCHEDULED.value)
    timing: Mapped[str] = mapped_column(String(16), default=ChangeTiming.NOW.value)
    actor_kind: Mapped[str] = mapped_column(String(16), default="system")
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    requested_at: Mapped[datetime] = mapped_column(default=clock.now)
    effective_at: Mapped[datetime]
    applied_at: Mapped[datetime | None]
    withdrawn_at: Mapped[datetime | None]
    from_price_id: Mapped[int | None] = mapped_column(ForeignKey("prices.id", ondelete="RESTRICT"))
    to_price_id: Mapped[int | None] = mapped_column(ForeignKey("prices.id", ondelete="RESTRICT"))
    from_quantity: Mapped[int | None]
    to_quantity: Mapped[int | None]
    resume_at: Mapped[datetime | None]
    reason: Mapped[str] = mapped_column(String(32), default="")
    reason_text: Mapped[str] = mapped_column(String(500), default="")
    # The invoice of this change's proration (an upgrade applied now), if any.
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id", ondelete="SET NULL"))

    subscription: Mapped[Subscription] = relationship(back_populates="changes")
    from_price: Mapped[Price | None] = relationship(foreign_keys=[from_price_id])
    to_price: Mapped[Price | None] = relationship(foreign_keys=[to_price_id])

    @property
    def discount_terms(self) -> tuple[int, int] | None:
        """(basis points, invoices) of a retention discount taken; None for other kinds.

        NOTE: kept in reason_text as "basis points:invoices" (the table has no columns for it,
        and the plan's offer may change later: the history keeps what this customer got).
        """
        if self.kind != ChangeKind.DISCOUNT.value:
            return None
        bp, _sep, periods = (self.reason_text or "").partition(":")
        if not (bp.isdigit() and periods.isdigit()):
            return None
        return int(bp), int(periods)


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
