"""Read queries of the staff console: customer lookup and the audit log (paginated)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session, joinedload

from portal.accounts.models import Account, Membership, User
from portal.audit.models import AuditEvent
from portal.billing import ledger
from portal.billing.models import (
    CreditNote,
    CreditNoteLine,
    Invoice,
    InvoiceLine,
    LedgerEntry,
    LedgerKind,
)
from portal.billing.money import Money
from portal.billing.queries import LIST_ONLY, subscriptions_of
from portal.disputes.models import (
    ApprovalRequest,
    ApprovalStatus,
    Attachment,
    Dispute,
    DisputeLine,
    DisputeMessage,
)
from portal.payments.models import Payment
from portal.subscriptions.models import Price, Subscription

T = TypeVar("T")
PAGE_SIZE = 25
# NOTE: a page link far beyond the data names nothing; OFFSET that large only costs the database.
MAX_PAGE = 10_000


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of rows, numbered from 1, with whether there is a next one."""

    rows: list[T]
    number: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1


def paginate(session: Session, statement: Select[Any], number: int, size: int = PAGE_SIZE) -> Page:
    """Rows of `statement` for page `number` (it must be ordered); asks for one row more to know
    whether another page follows, instead of counting them all."""
    number = min(max(number, 1), MAX_PAGE)
    rows = list(session.scalars(statement.limit(size + 1).offset((number - 1) * size)))
    return Page(rows[:size], number, len(rows) > size)


def escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _contains(column: Any, text: str) -> Any:
    return func.lower(column).like(f"%{escape_like(text.lower())}%", escape="\\")


def customer_search(q: str) -> Select[tuple[Account]]:
    """Accounts whose name or billing email contains `q`, whose member's email or name does,
    or that own an invoice numbered `q` or a payment referenced by `q` (receipt number, public
    id, Stripe payment intent or charge id)."""
    text = q.strip()
    members = (
        select(Membership.account_id)
        .join(User, User.id == Membership.user_id)
        .where(or_(_contains(User.email, text), _contains(User.name, text)))
    )
    invoices = select(Invoice.account_id).where(func.upper(Invoice.number) == text.upper())
    payments = select(Payment.account_id).where(
        or_(
            Payment.public_id == text,
            Payment.receipt_number == text,
            Payment.stripe_payment_intent_id == text,
            Payment.stripe_charge_id == text,
        )
    )
    return (
        select(Account)
        .where(
            or_(
                _contains(Account.name, text),
                _contains(Account.billing_email, text),
                Account.public_id == text,
                Account.id.in_(members),
                Account.id.in_(invoices),
                Account.id.in_(payments),
            )
        )
        .order_by(Account.name, Account.id)
    )


def account_by_public_id(session: Session, public_id: str) -> Account | None:
    return session.scalar(select(Account).where(Account.public_id == public_id))


@dataclass(frozen=True)
class AuditFilters:
    actor: str = ""  # email (or part of it) of the person who acted
    account: str = ""  # account public id, or part of its name
    action: str = ""  # an action, or its prefix ("dispute." for every dispute action)
    start: date | None = None
    end: date | None = None  # included


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def audit_events(filters: AuditFilters) -> Select[tuple[AuditEvent]]:
    """Audit events matching the filters, newest first."""
    statement = select(AuditEvent)
    if filters.actor:
        statement = statement.where(
            AuditEvent.actor_user_id.in_(
                select(User.id).where(_contains(User.email, filters.actor))
            )
        )
    if filters.account:
        statement = statement.where(
            AuditEvent.account_id.in_(
                select(Account.id).where(
                    or_(
                        Account.public_id == filters.account,
                        _contains(Account.name, filters.account),
                    )
                )
            )
        )
    if filters.action:
        statement = statement.where(
            AuditEvent.action.like(f"{escape_like(filters.action)}%", escape="\\")
        )
    if filters.start:
        statement = statement.where(AuditEvent.occurred_at >= _day_start(filters.start))
    if filters.end:
        statement = statement.where(
            AuditEvent.occurred_at < _day_start(filters.end + timedelta(days=1))
        )
    return statement.order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc())


def users_by_id(session: Session, ids: set[int]) -> dict[int, User]:
    if not ids:
        return {}
    return {user.id: user for user in session.scalars(select(User).where(User.id.in_(ids)))}


def accounts_by_id(session: Session, ids: set[int]) -> dict[int, Account]:
    if not ids:
        return {}
    return {a.id: a for a in session.scalars(select(Account).where(Account.id.in_(ids)))}


def staff_users(session: Session) -> list[User]:
    """Everyone with a staff role who may be assigned work (not disabled)."""
    return list(
        session.scalars(
            select(User)
            .where(User.staff_role.is_not(None), User.disabled_at.is_(None))
            .order_by(User.email)
        )
    )


@dataclass(frozen=True)
class AccountContext:
    """The account at a glance, for a dispute or the customer page."""

    account: Account
    balance: Money
    invoices: list[Invoice]
    payments: list[Payment]
    disputes: list[Dispute]
    subscriptions: list[Subscription]
    members: list[User]


def account_context(session: Session, account: Account, *, recent: int = 5) -> AccountContext:
    invoices = list(
        session.scalars(
            select(Invoice)
            .options(*LIST_ONLY)
            .where(Invoice.account_id == account.id, Invoice.number.is_not(None))
            .order_by(Invoice.issue_date.desc(), Invoice.id.desc())
            .limit(recent)
        )
    )
    payments = list(
        session.scalars(
            select(Payment)
            .where(Payment.account_id == account.id)
            .order_by(Payment.received_at.desc(), Payment.id.desc())
            .limit(recent)
        )
    )
    disputes = list(
        session.scalars(
            select(Dispute)
            .where(Dispute.account_id == account.id)
            .options(joinedload(Dispute.invoice))
            .order_by(Dispute.created_at.desc(), Dispute.id.desc())
            .limit(recent * 2)
        )
    )
    subscriptions = list(
        session.scalars(
            subscriptions_of(account.id).options(
                joinedload(Subscription.price).joinedload(Price.plan)
            )
        )
    )
    members = list(
        session.scalars(
            select(User)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.account_id == account.id)
            .order_by(Membership.id)
        )
    )
    return AccountContext(
        account=account,
        balance=ledger.balance(session, account.id, account.currency),
        invoices=invoices,
        payments=payments,
        disputes=disputes,
        subscriptions=subscriptions,
        members=members,
    )


def pending_approval_count(session: Session) -> int:
    """Approval requests waiting for an admin."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(ApprovalRequest)
            .where(ApprovalRequest.status == ApprovalStatus.PENDING.value)
        )
        or 0
    )


def dispute_lines(session: Session, dispute: Dispute) -> list[tuple[DisputeLine, InvoiceLine]]:
    """The invoice lines a dispute questions, with the amount questioned on each."""
    rows = session.execute(
        select(DisputeLine, InvoiceLine)
        .join(InvoiceLine, InvoiceLine.id == DisputeLine.invoice_line_id)
        .where(DisputeLine.dispute_id == dispute.id)
        .order_by(InvoiceLine.position)
    ).all()
    return [(line, invoice_line) for line, invoice_line in rows]


def credited_by_line(session: Session, invoice: Invoice | None) -> dict[int, int]:
    """What credit notes already gave back per line of the invoice (minor units)."""
    if invoice is None:
        return {}
    rows = session.execute(
        select(CreditNoteLine.invoice_line_id, func.sum(CreditNoteLine.amount_minor))
        .join(CreditNote, CreditNote.id == CreditNoteLine.credit_note_id)
        .where(CreditNote.invoice_id == invoice.id, CreditNoteLine.invoice_line_id.is_not(None))
        .group_by(CreditNoteLine.invoice_line_id)
    )
    return {int(line_id): int(total) for line_id, total in rows}


def open_approval(session: Session, dispute: Dispute) -> ApprovalRequest | None:
    """The approval request of this dispute still waiting (pending) or being carried out."""
    return session.scalar(
        select(ApprovalRequest)
        .where(
            ApprovalRequest.dispute_id == dispute.id,
            ApprovalRequest.status.in_(
                (ApprovalStatus.PENDING.value, ApprovalStatus.APPROVED.value)
            ),
        )
        .order_by(ApprovalRequest.id.desc())
        .limit(1)
    )


def dispute_attachments(session: Session, dispute_id: int) -> list[Attachment]:
    """Every evidence file of the dispute staff may open, oldest first (see _staff_attachments)."""
    return list(session.scalars(_staff_attachments(dispute_id).order_by(Attachment.id)))


def dispute_attachment(session: Session, dispute_id: int, public_id: str) -> Attachment | None:
    """One file of this dispute for staff; a file of another dispute finds nothing."""
    return session.scalar(_staff_attachments(dispute_id).where(Attachment.public_id == public_id))


def _staff_attachments(dispute_id: int) -> Select[tuple[Attachment]]:
    # NOTE: staff see the customer's files and the internal ones alike; a deleted file (and
    # the files of a deleted message) is shown to nobody, staff included.
    return (
        select(Attachment)
        .outerjoin(DisputeMessage, DisputeMessage.id == Attachment.message_id)
        .where(
            Attachment.dispute_id == dispute_id,
            Attachment.deleted_at.is_(None),
            or_(Attachment.message_id.is_(None), DisputeMessage.deleted_at.is_(None)),
        )
    )


CHARGEBACK_KINDS = (
    LedgerKind.CHARGEBACK.value,
    LedgerKind.CHARGEBACK_FEE.value,
    LedgerKind.CHARGEBACK_REVERSAL.value,
)


def chargeback_entries(session: Session, dispute: Dispute) -> list[LedgerEntry]:
    """The ledger's money movements of a card chargeback: the withdrawal, Stripe's fee and,
    when won, the reinstatement, oldest first.

    NOTE: portal.disputes.services posts each with the Stripe dispute id at the end of its
    description ("Dispute fee (dp_…)"); the kinds and the account narrow it down first.
    """
    if not dispute.stripe_dispute_id:
        return []
    return list(
        session.scalars(
            select(LedgerEntry)
            .where(
                LedgerEntry.account_id == dispute.account_id,
                LedgerEntry.kind.in_(CHARGEBACK_KINDS),
                LedgerEntry.description.endswith(f"({dispute.stripe_dispute_id})", autoescape=True),
            )
            .order_by(LedgerEntry.effective_at, LedgerEntry.id)
        )
    )
