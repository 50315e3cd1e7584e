"""Disputes raised by customers (or arriving as card chargebacks), their thread and evidence."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal import clock
from portal.db import Base, currency_check, intpk, money_minor, public_id


class DisputeStatus(StrEnum):
    OPEN = "open"
    IN_REVIEW = "in_review"
    WAITING_ON_CUSTOMER = "waiting_on_customer"
    RESOLVED = "resolved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


DISPUTE_REASONS = (
    "not_recognized",
    "duplicate",
    "wrong_amount",
    "service_not_received",
    "canceled_but_charged",
    "other",
)


class Dispute(Base):
    __tablename__ = "disputes"
    __table_args__ = (
        CheckConstraint(currency_check(), name="currency_iso"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint(
            "status IN ('open', 'in_review', 'waiting_on_customer', 'resolved', 'rejected', "
            "'withdrawn')",
            name="status_valid",
        ),
        CheckConstraint(
            "reason IN ('not_recognized', 'duplicate', 'wrong_amount', 'service_not_received', "
            "'canceled_but_charged', 'other')",
            name="reason_valid",
        ),
        CheckConstraint("source IN ('customer', 'chargeback')", name="source_valid"),
        CheckConstraint(
            "resolution IS NULL OR resolution IN ('credit_note', 'refund', 'rejected')",
            name="resolution_valid",
        ),
        CheckConstraint(
            "resolution != 'rejected' OR length(resolution_note) > 0",
            name="rejection_has_reason",
        ),
        Index("ix_disputes_account_id_created_at", "account_id", "created_at"),
        Index("ix_disputes_status_created_at", "status", "created_at"),
        Index("ix_disputes_invoice_id", "invoice_id"),
    )

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="RESTRICT"))
    opened_by_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    assigned_to_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    source: Mapped[str] = mapped_column(String(16), default="customer")
    stripe_dispute_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[money_minor]
    reason: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(24), default=DisputeStatus.OPEN.value)
    resolution: Mapped[str | None] = mapped_column(String(16))
    resolution_note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now, onupdate=clock.now)
    resolved_at: Mapped[datetime | None]

    lines: Mapped[list[DisputeLine]] = relationship(cascade="all, delete-orphan")
    messages: Mapped[list[DisputeMessage]] = relationship(
        order_by="DisputeMessage.created_at", cascade="all, delete-orphan"
    )


class DisputeLine(Base):
    __tablename__ = "dispute_lines"
    __table_args__ = (
        UniqueConstraint("dispute_id", "invoice_line_id"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
    )

    id: Mapped[intpk]
    dispute_id: Mapped[int] = mapped_column(ForeignKey("disputes.id", ondelete="CASCADE"))
    invoice_line_id: Mapped[int] = mapped_column(
        ForeignKey("invoice_lines.id", ondelete="RESTRICT")
    )
    amount_minor: Mapped[money_minor]


class DisputeMessage(Base):
    __tablename__ = "dispute_messages"
    __table_args__ = (
        CheckConstraint("author_kind IN ('customer', 'staff', 'system')", name="author_kind_valid"),
        # NOTE: only staff write internal notes; they never reach a customer page, email or PDF.
        CheckConstraint("NOT is_internal OR author_kind = 'staff'", name="internal_only_staff"),
        Index("ix_dispute_messages_dispute_id_created_at", "dispute_id", "created_at"),
    )

    id: Mapped[intpk]
    dispute_id: Mapped[int] = mapped_column(ForeignKey("disputes.id", ondelete="CASCADE"))
    author_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    author_kind: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)
    is_internal: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)


class Attachment(Base):
    __tablename__ = "attachments"
    __table_args__ = (
        CheckConstraint("size_bytes > 0 AND size_bytes <= 10485760", name="size_bounded"),
        CheckConstraint(
            "content_type IN ('application/pdf', 'image/png', 'image/jpeg', 'text/plain')",
            name="content_type_allowed",
        ),
        Index("ix_attachments_dispute_id", "dispute_id"),
    )

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    dispute_id: Mapped[int] = mapped_column(ForeignKey("disputes.id", ondelete="CASCADE"))
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("dispute_messages.id", ondelete="SET NULL")
    )
    uploaded_by_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
