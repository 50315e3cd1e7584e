"""Notifications (issue 12): the email outbox, reminders and card retries already made, account
email preferences, and the cursors of incremental syncs.

- `OutboxEmail` (outbox_emails): written in the transaction that causes the email, delivered after
  commit by the worker. Status: pending (not tried yet, or claimed by a sender), failed (the last
  try failed; a retry is due at next_attempt_at), sent, dead (given up after MAIL_MAX_ATTEMPTS;
  staff can retry it from /staff/outbox), canceled (dropped before sending by `cancel_key`).
  `message_id` is the row's Message-ID header, fixed when the row is written, so a resend after a
  lost SMTP answer carries the same id and is recognisable as the same message.
- `ReminderSent` (payment_reminders): one row per reminder step sent for an invoice; the unique
  (invoice_id, step) makes a second one impossible, even from two workers at once.
- `PaymentRetry` (payment_retries): the scheduled automatic retries of a failed card payment.
- `EmailPreference` (email_preferences): ONE ROW PER ACCOUNT (a table of its own, not columns on
  `accounts`; absent row = the defaults: no extra recipients, every email on). Essential emails
  (receipts, sign-in links, dispute replies, payment failed) ignore the opt-outs.
- `SyncCursor` (sync_cursors): where an incremental sync stopped, e.g. name "stripe_events",
  value the last Stripe event id settled.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from portal import clock
from portal.db import Base, intpk, one_of


class OutboxStatus(StrEnum):
    PENDING = "pending"
    FAILED = "failed"  # the last try failed; retried at next_attempt_at
    SENT = "sent"
    DEAD = "dead"  # given up after MAIL_MAX_ATTEMPTS: a dead letter, retried only by staff
    CANCELED = "canceled"


# Rows a sender may still claim (when due).
DELIVERABLE_STATUSES = (OutboxStatus.PENDING.value, OutboxStatus.FAILED.value)


class AttachmentKind(StrEnum):
    INVOICE_PDF = "invoice_pdf"  # attachment_ref = the invoice's id; rendered at send time


MESSAGE_ID_DOMAIN = "billing-portal.invalid"


def new_message_id(domain: str = MESSAGE_ID_DOMAIN) -> str:
    """A Message-ID header value, unique and random: `<hex@domain>`."""
    return f"<{secrets.token_hex(16)}@{domain}>"


class OutboxEmail(Base):
    __tablename__ = "outbox_emails"
    __table_args__ = (
        CheckConstraint(one_of("status", OutboxStatus), name="status_valid"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        CheckConstraint(
            "attachment_kind IS NULL OR " + one_of("attachment_kind", AttachmentKind),
            name="attachment_kind_valid",
        ),
        CheckConstraint(
            "(attachment_kind IS NULL) = (attachment_ref IS NULL)", name="attachment_complete"
        ),
        Index("ix_outbox_emails_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_outbox_emails_cancel_key_status", "cancel_key", "status"),
    )

    id: Mapped[intpk]
    # NOTE: reminders and receipts carry a key so the same email is never queued twice.
    dedupe_key: Mapped[str | None] = mapped_column(String(120), unique=True)
    # NOTE: the Message-ID header, fixed at queue time: every resend of this row carries it.
    message_id: Mapped[str] = mapped_column(String(255), unique=True, default=new_message_id)
    # e.g. "invoice:<id>": cancel_queued(session, key) drops every unsent row with this key.
    cancel_key: Mapped[str | None] = mapped_column(String(120))
    # Essential emails go even to an account that opted out of the non-essential ones.
    is_essential: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    attachment_kind: Mapped[str | None] = mapped_column(String(32))
    attachment_ref: Mapped[str | None] = mapped_column(String(64))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"))
    to_address: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(255))
    text_body: Mapped[str] = mapped_column(Text)
    html_body: Mapped[str] = mapped_column(Text, default="")
    template: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=clock.now)
    last_error: Mapped[str] = mapped_column(String(1000), default="")
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    sent_at: Mapped[datetime | None]
    # When the row became dead or canceled (sent rows have sent_at).
    ended_at: Mapped[datetime | None]


class ReminderSent(Base):
    """A payment reminder step already sent for an invoice (e.g. step "before_3", "after_7")."""

    __tablename__ = "payment_reminders"
    __table_args__ = (UniqueConstraint("invoice_id", "step"),)

    id: Mapped[intpk]
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"))
    step: Mapped[str] = mapped_column(String(32))
    outbox_email_id: Mapped[int | None] = mapped_column(
        ForeignKey("outbox_emails.id", ondelete="SET NULL")
    )
    sent_at: Mapped[datetime] = mapped_column(default=clock.now)


class RetryStatus(StrEnum):
    SCHEDULED = "scheduled"
    DONE = "done"
    CANCELED = "canceled"


class PaymentRetry(Base):
    """One automatic retry of a failed card payment, scheduled for a day; done once."""

    __tablename__ = "payment_retries"
    __table_args__ = (
        UniqueConstraint("invoice_id", "attempt_no"),
        CheckConstraint(one_of("status", RetryStatus), name="status_valid"),
        CheckConstraint("attempt_no >= 1", name="attempt_no_positive"),
        Index("ix_payment_retries_status_scheduled_for", "status", "scheduled_for"),
    )

    id: Mapped[intpk]
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"))
    attempt_no: Mapped[int]
    scheduled_for: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default=RetryStatus.SCHEDULED.value)
    # The payment attempt this retry made (None until it ran, or when nothing was charged).
    attempt_id: Mapped[int | None] = mapped_column(
        ForeignKey("payment_attempts.id", ondelete="SET NULL")
    )
    # What the retry came to, e.g. a CollectOutcome status ("paid", "failed", "no_card").
    outcome: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    completed_at: Mapped[datetime | None]


class EmailPreference(Base):
    """An account's email preferences: one row per account (no row = the defaults)."""

    __tablename__ = "email_preferences"

    id: Mapped[intpk]
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), unique=True
    )
    # Extra recipients of billing emails (e.g. accounts payable), one address per line.
    extra_recipients: Mapped[str] = mapped_column(Text, default="")
    opt_out_reminders: Mapped[bool] = mapped_column(Boolean, default=False)
    opt_out_card_expiry: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now, onupdate=clock.now)


class SyncCursor(Base):
    """Where an incremental sync stopped (e.g. "stripe_events" -> the last event id settled)."""

    __tablename__ = "sync_cursors"

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(64), unique=True)
    value: Mapped[str] = mapped_column(String(255), default="")
    updated_at: Mapped[datetime] = mapped_column(default=clock.now, onupdate=clock.now)
