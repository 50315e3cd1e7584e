"""Invoices and their lines, numbering series, credit notes, stored PDFs and the ledger."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    ColumnElement,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    and_,
    case,
)
from sqlalchemy.ext.hybrid import hybrid_method, hybrid_property
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal import clock
from portal.accounts.models import Account
from portal.billing.money import Money
from portal.db import Base, currency_check, intpk, money_minor, one_of, public_id


class InvoiceStatus(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


class LineKind(StrEnum):
    SUBSCRIPTION = "subscription"
    PRORATION = "proration"
    USAGE = "usage"
    ONE_OFF = "one_off"
    DISCOUNT = "discount"


class LedgerKind(StrEnum):
    INVOICE = "invoice"
    INVOICE_VOID = "invoice_void"
    PAYMENT = "payment"
    CREDIT_NOTE = "credit_note"
    REFUND = "refund"
    # Card chargebacks (issue 11): the bank takes the payment back, Stripe's fee for it, and
    # the money returned when the chargeback is won.
    CHARGEBACK = "chargeback"
    CHARGEBACK_FEE = "chargeback_fee"
    CHARGEBACK_REVERSAL = "chargeback_reversal"


class CreditNoteReason(StrEnum):
    DUPLICATE = "duplicate"
    FRAUDULENT = "fraudulent"
    ORDER_CHANGE = "order_change"
    PRODUCT_UNSATISFACTORY = "product_unsatisfactory"
    DISPUTE = "dispute"
    GOODWILL = "goodwill"
    OTHER = "other"


# NOTE: what can be paid: an issued invoice that is open or uncollectible (uncollectible is an
# accounting write-off, the customer may still pay it) with something left to pay. Drafts owe
# nothing yet; void invoices owe nothing any more. Invoice.amount_due_minor and
# Invoice.is_payable are the one definition, in Python and in SQL.
OPEN_STATUSES = (InvoiceStatus.OPEN.value, InvoiceStatus.UNCOLLECTIBLE.value)
_OWES_NOTHING = (InvoiceStatus.DRAFT.value, InvoiceStatus.VOID.value)


class NumberSeries(Base):
    """A gapless counter, one row per series, advanced with a single UPDATE … RETURNING."""

    __tablename__ = "number_series"
    __table_args__ = (CheckConstraint("next_value >= 1", name="next_value_positive"),)

    id: Mapped[intpk]
    key: Mapped[str] = mapped_column(String(40), unique=True)
    next_value: Mapped[int] = mapped_column(default=1)


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (
        CheckConstraint(currency_check(), name="currency_iso"),
        CheckConstraint(one_of("status", InvoiceStatus), name="status_valid"),
        CheckConstraint("subtotal_minor >= 0", name="subtotal_non_negative"),
        CheckConstraint("discount_minor >= 0", name="discount_non_negative"),
        CheckConstraint("tax_minor >= 0", name="tax_non_negative"),
        CheckConstraint(
            "total_minor = subtotal_minor - discount_minor + tax_minor", name="total_adds_up"
        ),
        CheckConstraint("total_minor >= 0", name="total_non_negative"),
        CheckConstraint("amount_paid_minor >= 0", name="amount_paid_non_negative"),
        CheckConstraint("amount_credited_minor >= 0", name="amount_credited_non_negative"),
        # NOTE: a paid invoice can still be credited (issue 11): what the credit finds nothing
        # left to reduce becomes credit on the account's balance (or is refunded), so paid and
        # credited are each bounded by the total, not their sum.
        CheckConstraint("amount_paid_minor <= total_minor", name="not_overpaid"),
        CheckConstraint("amount_credited_minor <= total_minor", name="not_overcredited"),
        CheckConstraint("(status = 'draft') = (number IS NULL)", name="number_iff_finalized"),
        CheckConstraint("due_date IS NULL OR due_date >= issue_date", name="due_after_issue"),
        UniqueConstraint("series_key", "sequence"),
        Index("ix_invoices_account_id_issue_date", "account_id", "issue_date", "id"),
        Index("ix_invoices_account_id_status_due_date", "account_id", "status", "due_date"),
        Index("ix_invoices_subscription_id", "subscription_id"),
        # NOTE: aging reads the invoices paid or voided after a cutoff (0003).
        Index("ix_invoices_account_id_paid_at", "account_id", "paid_at"),
        Index("ix_invoices_account_id_voided_at", "account_id", "voided_at"),
    )

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    subscription_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="RESTRICT")
    )
    # NOTE: the billing run's idempotency key ("sub:<id>:<period start>"): running it twice can
    # never bill one period twice.
    billing_key: Mapped[str | None] = mapped_column(String(80), unique=True)
    number: Mapped[str | None] = mapped_column(String(40), unique=True)
    series_key: Mapped[str | None] = mapped_column(String(40))
    sequence: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(16), default=InvoiceStatus.DRAFT.value)
    currency: Mapped[str] = mapped_column(String(3))
    issue_date: Mapped[date]
    due_date: Mapped[date | None]
    period_start: Mapped[date | None]
    period_end: Mapped[date | None]
    subtotal_minor: Mapped[money_minor] = mapped_column(default=0)
    discount_minor: Mapped[money_minor] = mapped_column(default=0)
    tax_minor: Mapped[money_minor] = mapped_column(default=0)
    total_minor: Mapped[money_minor] = mapped_column(default=0)
    amount_paid_minor: Mapped[money_minor] = mapped_column(default=0)
    amount_credited_minor: Mapped[money_minor] = mapped_column(default=0)
    # Seller and buyer as they were when the invoice was finalized (it never changes after).
    seller: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    buyer: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    memo: Mapped[str] = mapped_column(String(1000), default="")
    finalized_at: Mapped[datetime | None]
    paid_at: Mapped[datetime | None]
    voided_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=clock.now)

    account: Mapped[Account] = relationship()
    lines: Mapped[list[InvoiceLine]] = relationship(
        back_populates="invoice", order_by="InvoiceLine.position", cascade="all, delete-orphan"
    )

    @hybrid_property
    def amount_due_minor(self) -> int:
        """What is left to pay (0 on drafts and void invoices)."""
        if self.status in _OWES_NOTHING:
            return 0
        return max(self.total_minor - self.amount_paid_minor - self.amount_credited_minor, 0)

    @amount_due_minor.inplace.expression
    @classmethod
    def _amount_due_minor_sql(cls) -> ColumnElement[int]:
        left = cls.total_minor - cls.amount_paid_minor - cls.amount_credited_minor
        return case((cls.status.in_(_OWES_NOTHING), 0), (left < 0, 0), else_=left)

    @hybrid_property
    def is_payable(self) -> bool:
        """Issued, not settled, with something left to pay: what the customer can pay now."""
        return self.status in OPEN_STATUSES and self.amount_due_minor > 0

    @is_payable.inplace.expression
    @classmethod
    def _is_payable_sql(cls) -> ColumnElement[bool]:
        return and_(cls.status.in_(OPEN_STATUSES), cls.amount_due_minor > 0)

    @hybrid_method
    def is_overdue(self, on: date) -> bool:
        """Payable and past its due date on the given day."""
        return bool(self.is_payable and self.due_date is not None and self.due_date < on)

    @is_overdue.inplace.expression
    @classmethod
    def _is_overdue_sql(cls, on: date | ColumnElement[date]) -> ColumnElement[bool]:
        return and_(cls.is_payable, cls.due_date < on)

    @property
    def total(self) -> Money:
        return Money(self.total_minor, self.currency)

    @property
    def amount_due(self) -> Money:
        return Money(self.amount_due_minor, self.currency)


class InvoiceLine(Base):
    __tablename__ = "invoice_lines"
    __table_args__ = (
        UniqueConstraint("invoice_id", "position"),
        CheckConstraint(one_of("kind", LineKind), name="kind_valid"),
        CheckConstraint("tax_rate_bp >= 0 AND tax_rate_bp <= 10000", name="tax_rate_valid"),
        CheckConstraint(
            "kind = 'discount' OR amount_minor >= 0 OR kind = 'proration'",
            name="only_credits_negative",
        ),
        CheckConstraint("kind != 'discount' OR amount_minor <= 0", name="discount_not_positive"),
        CheckConstraint("quantity >= 0", name="quantity_non_negative"),
    )

    id: Mapped[intpk]
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"))
    position: Mapped[int]
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(500))
    period_start: Mapped[date | None]
    period_end: Mapped[date | None]
    quantity: Mapped[int] = mapped_column(default=1)
    unit_amount_minor: Mapped[money_minor] = mapped_column(default=0)
    amount_minor: Mapped[money_minor]
    tax_rate_bp: Mapped[int] = mapped_column(default=0)
    tax_name: Mapped[str] = mapped_column(String(32), default="")
    tax_minor: Mapped[money_minor] = mapped_column(default=0)
    price_id: Mapped[int | None] = mapped_column(ForeignKey("prices.id", ondelete="SET NULL"))

    invoice: Mapped[Invoice] = relationship(back_populates="lines")


class InvoiceDocument(Base):
    """A rendered PDF of a finalized invoice, stored once and served by content hash."""

    __tablename__ = "invoice_documents"
    __table_args__ = (UniqueConstraint("invoice_id", "template_version", "page_size"),)

    id: Mapped[intpk]
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"))
    template_version: Mapped[str] = mapped_column(String(16))
    page_size: Mapped[str] = mapped_column(String(8), default="A4")
    content_hash: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)


class CreditNote(Base):
    __tablename__ = "credit_notes"
    __table_args__ = (
        CheckConstraint(currency_check(), name="currency_iso"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint(one_of("reason", CreditNoteReason), name="reason_valid"),
        UniqueConstraint("series_key", "sequence"),
        Index("ix_credit_notes_account_id_issued_at", "account_id", "issued_at"),
        Index("ix_credit_notes_invoice_id", "invoice_id"),
    )

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    number: Mapped[str] = mapped_column(String(40), unique=True)
    series_key: Mapped[str] = mapped_column(String(40))
    sequence: Mapped[int]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="RESTRICT"))
    dispute_id: Mapped[int | None] = mapped_column(ForeignKey("disputes.id", ondelete="SET NULL"))
    currency: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[money_minor]
    reason: Mapped[str] = mapped_column(String(32))
    memo: Mapped[str] = mapped_column(Text, default="")
    issued_by_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    issued_at: Mapped[datetime] = mapped_column(default=clock.now)

    invoice: Mapped[Invoice] = relationship()
    lines: Mapped[list[CreditNoteLine]] = relationship(
        back_populates="credit_note", cascade="all, delete-orphan"
    )


class CreditNoteLine(Base):
    __tablename__ = "credit_note_lines"
    __table_args__ = (CheckConstraint("amount_minor > 0", name="amount_positive"),)

    id: Mapped[intpk]
    credit_note_id: Mapped[int] = mapped_column(ForeignKey("credit_notes.id", ondelete="CASCADE"))
    invoice_line_id: Mapped[int | None] = mapped_column(
        ForeignKey("invoice_lines.id", ondelete="RESTRICT")
    )
    description: Mapped[str] = mapped_column(String(500))
    amount_minor: Mapped[money_minor]

    credit_note: Mapped[CreditNote] = relationship(back_populates="lines")


class LedgerEntry(Base):
    """One change to what an account owes. Balance = the sum of its entries."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint(currency_check(), name="currency_iso"),
        CheckConstraint(one_of("kind", LedgerKind), name="kind_valid"),
        # NOTE: the sign is fixed by the kind: what raises the balance is positive.
        CheckConstraint(
            "(kind IN ('invoice', 'refund', 'chargeback', 'chargeback_fee') AND amount_minor > 0)"
            " OR (kind IN ('invoice_void', 'payment', 'credit_note', 'chargeback_reversal')"
            " AND amount_minor < 0)",
            name="sign_matches_kind",
        ),
        Index(
            "ix_ledger_entries_account_id_currency_effective_at",
            "account_id",
            "currency",
            "effective_at",
            "id",
        ),
    )

    id: Mapped[intpk]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    currency: Mapped[str] = mapped_column(String(3))
    kind: Mapped[str] = mapped_column(String(24))
    amount_minor: Mapped[money_minor]
    effective_at: Mapped[datetime]
    description: Mapped[str] = mapped_column(String(255))
    # NOTE: one entry per source event ("invoice:12", "payment:7"): replays cannot post twice.
    source_ref: Mapped[str] = mapped_column(String(80), unique=True)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id", ondelete="RESTRICT"))
    created_at: Mapped[datetime] = mapped_column(default=clock.now)


class AccountBalance(Base):
    """The sum of an account's ledger entries in one currency, kept by ledger.post.

    NOTE: invariant: balance_minor == sum(ledger_entries.amount_minor) for the same account and
    currency. ledger.post changes both in one transaction (an upsert: the row lock it takes
    serialises concurrent posts), so the dashboard and statements read one row, not the history.
    """

    __tablename__ = "account_balances"
    __table_args__ = (CheckConstraint(currency_check(), name="currency_iso"),)

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="RESTRICT"), primary_key=True
    )
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    balance_minor: Mapped[money_minor] = mapped_column(default=0)
