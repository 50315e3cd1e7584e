"""Disputes raised by customers (or arriving as card chargebacks), their thread and evidence."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal import clock
from portal.db import Base, currency_check, intpk, money_minor, one_of, public_id

if TYPE_CHECKING:
    from portal.accounts.models import Account
    from portal.billing.models import Invoice
    from portal.payments.models import Payment


class DisputeStatus(StrEnum):
    OPEN = "open"
    IN_REVIEW = "in_review"
    WAITING_ON_CUSTOMER = "waiting_on_customer"
    RESOLVED = "resolved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


class DisputeReason(StrEnum):
    NOT_RECOGNIZED = "not_recognized"
    DUPLICATE = "duplicate"
    WRONG_AMOUNT = "wrong_amount"
    SERVICE_NOT_RECEIVED = "service_not_received"
    CANCELED_BUT_CHARGED = "canceled_but_charged"
    OTHER = "other"


class DisputeSource(StrEnum):
    CUSTOMER = "customer"
    CHARGEBACK = "chargeback"


class AttachmentVisibility(StrEnum):
    CUSTOMER = "customer"
    INTERNAL = "internal"


class ApprovalKind(StrEnum):
    CREDIT_NOTE = "credit_note"
    REFUND = "refund"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    DONE = "done"


DISPUTE_REASONS = tuple(reason.value for reason in DisputeReason)

# NOTE: the evidence types we accept, checked by content (portal.disputes.evidence), and the
# largest file the database row may describe (the configured limit is at most this).
ATTACHMENT_CONTENT_TYPES = ("application/pdf", "image/png", "image/jpeg")
ATTACHMENT_MAX_BYTES = 10 * 1024 * 1024
# NOTE: no dispute questions more than this (10^13 minor units: 100 billion in a 2-decimal
# currency); a larger number is a typo or an attack, refused by the service and the database.
MAX_DISPUTE_MINOR = 10**13


class Dispute(Base):
    __tablename__ = "disputes"
    __table_args__ = (
        CheckConstraint(currency_check(), name="currency_iso"),
        CheckConstraint(
            f"amount_minor > 0 AND amount_minor <= {MAX_DISPUTE_MINOR}", name="amount_positive"
        ),
        CheckConstraint(one_of("status", DisputeStatus), name="status_valid"),
        CheckConstraint(one_of("reason", DisputeReason), name="reason_valid"),
        CheckConstraint(one_of("source", DisputeSource), name="source_valid"),
        CheckConstraint(
            "resolution IS NULL OR resolution IN ('credit_note', 'refund', 'rejected')",
            name="resolution_valid",
        ),
        CheckConstraint(
            "resolution != 'rejected' OR length(resolution_note) > 0",
            name="rejection_has_reason",
        ),
        # NOTE: a customer disputes an invoice; a card chargeback arrives against a payment
        # (and names the invoice too when the payment paid one).
        CheckConstraint(
            "invoice_id IS NOT NULL OR payment_id IS NOT NULL", name="invoice_or_payment"
        ),
        CheckConstraint(
            "source != 'chargeback' OR (stripe_dispute_id IS NOT NULL AND payment_id IS NOT NULL)",
            name="chargeback_has_stripe_dispute",
        ),
        CheckConstraint(
            "source != 'customer' OR stripe_dispute_id IS NULL", name="customer_not_stripe"
        ),
        CheckConstraint("fee_minor >= 0", name="fee_non_negative"),
        Index("ix_disputes_account_id_created_at", "account_id", "created_at"),
        Index("ix_disputes_status_created_at", "status", "created_at"),
        Index("ix_disputes_invoice_id", "invoice_id"),
        Index("ix_disputes_payment_id", "payment_id"),
        Index("ix_disputes_status_response_due_at", "status", "response_due_at"),
    )

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id", ondelete="RESTRICT"))
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id", ondelete="RESTRICT"))
    opened_by_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    assigned_to_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    source: Mapped[str] = mapped_column(String(16), default=DisputeSource.CUSTOMER.value)
    currency: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[money_minor]
    reason: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(24), default=DisputeStatus.OPEN.value)
    resolution: Mapped[str | None] = mapped_column(String(16))
    resolution_note: Mapped[str] = mapped_column(Text, default="")
    # Card chargebacks: Stripe's dispute, its reason and status as Stripe words them, the
    # deadline for our evidence and the fee Stripe took.
    stripe_dispute_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_reason: Mapped[str | None] = mapped_column(String(64))
    stripe_status: Mapped[str | None] = mapped_column(String(64))
    evidence_due_by: Mapped[datetime | None]
    fee_minor: Mapped[money_minor] = mapped_column(default=0)
    # NOTE: when support should have answered (the configured response target in business
    # hours, portal.disputes.response) and when it first did.
    response_due_at: Mapped[datetime | None]
    first_response_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now, onupdate=clock.now)
    resolved_at: Mapped[datetime | None]

    account: Mapped[Account] = relationship("Account")
    invoice: Mapped[Invoice | None] = relationship("Invoice")
    payment: Mapped[Payment | None] = relationship("Payment")
    lines: Mapped[list[DisputeLine]] = relationship(cascade="all, delete-orphan")
    messages: Mapped[list[DisputeMessage]] = relationship(
        order_by="DisputeMessage.created_at", cascade="all, delete-orphan"
    )
    events: Mapped[list[DisputeEvent]] = relationship(
        order_by="[DisputeEvent.at, DisputeEvent.id]", cascade="all, delete-orphan"
    )


class DisputeLine(Base):
    __tablename__ = "dispute_lines"
    __table_args__ = (
        UniqueConstraint("dispute_id", "invoice_line_id"),
        CheckConstraint(
            f"amount_minor > 0 AND amount_minor <= {MAX_DISPUTE_MINOR}", name="amount_positive"
        ),
        # NOTE: one open dispute per invoice line: `is_open` mirrors the dispute's status (the
        # service keeps it), and this partial unique index refuses a second open one even when
        # two requests race.
        Index(
            "uq_dispute_lines_open_invoice_line",
            "invoice_line_id",
            unique=True,
            sqlite_where=text("is_open"),
            postgresql_where=text("is_open"),
        ),
    )

    id: Mapped[intpk]
    dispute_id: Mapped[int] = mapped_column(ForeignKey("disputes.id", ondelete="CASCADE"))
    invoice_line_id: Mapped[int] = mapped_column(
        ForeignKey("invoice_lines.id", ondelete="RESTRICT")
    )
    amount_minor: Mapped[money_minor]
    is_open: Mapped[bool] = mapped_column(default=True)


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
    # NOTE: a deleted message is kept (the audit trail and staff see it) and shown to nobody
    # as current; its files keep their own visibility, so deleting never exposes them.
    deleted_at: Mapped[datetime | None]

    attachments: Mapped[list[Attachment]] = relationship(order_by="Attachment.id", viewonly=True)


class Attachment(Base):
    __tablename__ = "attachments"
    __table_args__ = (
        CheckConstraint(
            f"size_bytes > 0 AND size_bytes <= {ATTACHMENT_MAX_BYTES}", name="size_bounded"
        ),
        CheckConstraint(
            one_of("content_type", ATTACHMENT_CONTENT_TYPES), name="content_type_allowed"
        ),
        CheckConstraint(one_of("visibility", AttachmentVisibility), name="visibility_valid"),
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
    # NOTE: who may see the file is the file's own property: an internal note's files are
    # internal, and stay so if the note is deleted or detached.
    visibility: Mapped[str] = mapped_column(String(16), default=AttachmentVisibility.CUSTOMER.value)
    # The name the uploader gave (shown, never used on disk or in a header).
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    deleted_at: Mapped[datetime | None]


class DisputeEvent(Base):
    """One step of a dispute's timeline: the status it reached, when and by whom."""

    __tablename__ = "dispute_events"
    __table_args__ = (
        CheckConstraint(one_of("status", DisputeStatus), name="status_valid"),
        CheckConstraint(
            "from_status IS NULL OR " + one_of("from_status", DisputeStatus),
            name="from_status_valid",
        ),
        CheckConstraint(
            "actor_kind IN ('customer', 'staff', 'stripe', 'system')", name="actor_kind_valid"
        ),
        Index("ix_dispute_events_dispute_id_at", "dispute_id", "at"),
    )

    id: Mapped[intpk]
    dispute_id: Mapped[int] = mapped_column(ForeignKey("disputes.id", ondelete="CASCADE"))
    from_status: Mapped[str | None] = mapped_column(String(24))
    status: Mapped[str] = mapped_column(String(24))
    at: Mapped[datetime] = mapped_column(default=clock.now)
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    note: Mapped[str] = mapped_column(Text, default="")


class ApprovalRequest(Base):
    """A credit or refund above a support user's limit, waiting for a second person (an
    admin) to approve it; the one who asked can never decide."""

    __tablename__ = "approval_requests"
    __table_args__ = (
        CheckConstraint(currency_check(), name="currency_iso"),
        CheckConstraint(one_of("kind", ApprovalKind), name="kind_valid"),
        CheckConstraint(one_of("status", ApprovalStatus), name="status_valid"),
        CheckConstraint(
            f"amount_minor > 0 AND amount_minor <= {MAX_DISPUTE_MINOR}", name="amount_positive"
        ),
        CheckConstraint(
            "decided_by_user_id IS NULL OR decided_by_user_id != requested_by_user_id",
            name="second_person_decides",
        ),
        CheckConstraint(
            "(status = 'pending') = (decided_by_user_id IS NULL)", name="decided_iff_not_pending"
        ),
        Index("ix_approval_requests_status_requested_at", "status", "requested_at"),
        Index("ix_approval_requests_dispute_id", "dispute_id"),
    )

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    kind: Mapped[str] = mapped_column(String(16))
    dispute_id: Mapped[int | None] = mapped_column(ForeignKey("disputes.id", ondelete="RESTRICT"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    currency: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[money_minor]
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=ApprovalStatus.PENDING.value)
    requested_by_user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    decided_by_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="RESTRICT")
    )
    decision_note: Mapped[str] = mapped_column(Text, default="")
    requested_at: Mapped[datetime] = mapped_column(default=clock.now)
    decided_at: Mapped[datetime | None]
    done_at: Mapped[datetime | None]
