"""Payment methods, payment attempts (one PaymentIntent each), payments, refunds, Stripe's inbox."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal import clock
from portal.db import Base, currency_check, intpk, money_minor, public_id


class AttemptStatus(StrEnum):
    CREATED = "created"  # saved, Stripe not called yet (or the call's outcome is being recorded)
    REQUIRES_ACTION = "requires_action"  # 3-D Secure or a new card needed in the browser
    PROCESSING = "processing"
    UNKNOWN = "unknown"  # the call's answer was lost: reconcile settles it, never "failed"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


LIVE_ATTEMPT_STATUSES = ("created", "requires_action", "processing", "unknown")


class PaymentMethod(Base):
    __tablename__ = "payment_methods"
    __table_args__ = (
        CheckConstraint("exp_month BETWEEN 1 AND 12", name="exp_month_valid"),
        CheckConstraint("length(last4) = 4", name="last4_length"),
        # NOTE: at most one default card per account among the attached ones.
        Index(
            "uq_payment_methods_default_per_account",
            "account_id",
            unique=True,
            sqlite_where=text("is_default AND detached_at IS NULL"),
            postgresql_where=text("is_default AND detached_at IS NULL"),
        ),
        Index("ix_payment_methods_account_id", "account_id"),
    )

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    stripe_payment_method_id: Mapped[str] = mapped_column(String(255), unique=True)
    brand: Mapped[str] = mapped_column(String(32))
    last4: Mapped[str] = mapped_column(String(4))
    exp_month: Mapped[int]
    exp_year: Mapped[int]
    is_default: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    detached_at: Mapped[datetime | None]


class PaymentAttempt(Base):
    __tablename__ = "payment_attempts"
    __table_args__ = (
        CheckConstraint(currency_check(), name="currency_iso"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint(
            "status IN ('created', 'requires_action', 'processing', 'unknown', 'succeeded', "
            "'failed', 'canceled')",
            name="status_valid",
        ),
        Index("ix_payment_attempts_account_id_created_at", "account_id", "created_at"),
        Index("ix_payment_attempts_status", "status"),
    )

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    payment_method_id: Mapped[int | None] = mapped_column(
        ForeignKey("payment_methods.id", ondelete="SET NULL")
    )
    currency: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[money_minor]
    status: Mapped[str] = mapped_column(String(20), default=AttemptStatus.CREATED.value)
    # NOTE: saved before Stripe is called, and sent with every retry of that call.
    idempotency_key: Mapped[str] = mapped_column(String(80), unique=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    failure_code: Mapped[str] = mapped_column(String(64), default="")
    failure_message: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now, onupdate=clock.now)

    items: Mapped[list[PaymentAttemptItem]] = relationship(
        back_populates="attempt", cascade="all, delete-orphan"
    )


class PaymentAttemptItem(Base):
    """One invoice covered by an attempt. `is_live` is true while the attempt may still charge."""

    __tablename__ = "payment_attempt_items"
    __table_args__ = (
        UniqueConstraint("attempt_id", "invoice_id"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        # NOTE: the database itself forbids a second live attempt for one invoice.
        Index(
            "uq_payment_attempt_items_live_invoice",
            "invoice_id",
            unique=True,
            sqlite_where=text("is_live"),
            postgresql_where=text("is_live"),
        ),
    )

    id: Mapped[intpk]
    attempt_id: Mapped[int] = mapped_column(ForeignKey("payment_attempts.id", ondelete="CASCADE"))
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="RESTRICT"))
    amount_minor: Mapped[money_minor]
    is_live: Mapped[bool] = mapped_column(default=True)

    attempt: Mapped[PaymentAttempt] = relationship(back_populates="items")


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint(currency_check(), name="currency_iso"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint("amount_refunded_minor >= 0", name="amount_refunded_non_negative"),
        CheckConstraint("amount_refunded_minor <= amount_minor", name="not_over_refunded"),
        Index("ix_payments_account_id_received_at", "account_id", "received_at"),
    )

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    attempt_id: Mapped[int | None] = mapped_column(
        ForeignKey("payment_attempts.id", ondelete="RESTRICT"), unique=True
    )
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[money_minor]
    amount_refunded_minor: Mapped[money_minor] = mapped_column(default=0)
    method_description: Mapped[str] = mapped_column(String(64), default="")
    # "RCT-2026-00042": gapless per year (portal.payments.receipts); what the receipt shows.
    receipt_number: Mapped[str | None] = mapped_column(String(24), unique=True)
    received_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=clock.now)

    allocations: Mapped[list[PaymentAllocation]] = relationship(
        back_populates="payment", cascade="all, delete-orphan"
    )


class PaymentAllocation(Base):
    """How much of a payment went to which invoice."""

    __tablename__ = "payment_allocations"
    __table_args__ = (
        UniqueConstraint("payment_id", "invoice_id"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        Index("ix_payment_allocations_invoice_id", "invoice_id"),
    )

    id: Mapped[intpk]
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id", ondelete="CASCADE"))
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="RESTRICT"))
    amount_minor: Mapped[money_minor]

    payment: Mapped[Payment] = relationship(back_populates="allocations")


class Refund(Base):
    __tablename__ = "refunds"
    __table_args__ = (
        CheckConstraint(currency_check(), name="currency_iso"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed', 'canceled')", name="status_valid"
        ),
        Index("ix_refunds_payment_id", "payment_id"),
    )

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id", ondelete="RESTRICT"))
    dispute_id: Mapped[int | None] = mapped_column(ForeignKey("disputes.id", ondelete="SET NULL"))
    currency: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[money_minor]
    reason: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    idempotency_key: Mapped[str] = mapped_column(String(80), unique=True)
    stripe_refund_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    issued_by_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    succeeded_at: Mapped[datetime | None]


class StripeEvent(Base):
    """The webhook inbox: each Stripe event id is stored once, with the effect it had."""

    __tablename__ = "stripe_events"
    __table_args__ = (
        CheckConstraint("status IN ('processed', 'ignored', 'failed')", name="status_valid"),
        Index("ix_stripe_events_received_at", "received_at"),
    )

    id: Mapped[intpk]
    stripe_event_id: Mapped[str] = mapped_column(String(255), unique=True)
    event_type: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(String(255), default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="processed")
    error: Mapped[str] = mapped_column(String(1000), default="")
    received_at: Mapped[datetime] = mapped_column(default=clock.now)
    processed_at: Mapped[datetime | None]
