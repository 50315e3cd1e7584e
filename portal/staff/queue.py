"""The dispute queue: customer disputes and card chargebacks in one list, filtered and sorted,
each with how its answer stands against the response target."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, and_, case, or_, select
from sqlalchemy.orm import Session, aliased

from portal import clock
from portal.accounts.models import Account, User
from portal.billing.models import Invoice
from portal.billing.money import SUPPORTED_CURRENCIES, exponent
from portal.disputes.models import Dispute, DisputeSource, DisputeStatus
from portal.disputes.queries import OPEN_DISPUTE_STATUSES
from portal.staff.queries import MAX_PAGE, PAGE_SIZE

# Status filter: the open ones (default), every dispute, or one status.
STATUS_ACTIVE = "active"
STATUS_ALL = "all"
STATUS_FILTERS = (STATUS_ACTIVE, STATUS_ALL, *(status.value for status in DisputeStatus))
AGE_FILTERS = ("", "late", "1", "2", "7", "30")  # past the target, or older than N days
SOURCE_FILTERS = ("", DisputeSource.CUSTOMER.value, DisputeSource.CHARGEBACK.value)
SORTS = ("due", "newest", "oldest", "amount")
# NOTE: "due soon" means less than this is left before the response target.
DUE_SOON = timedelta(hours=4)


@dataclass(frozen=True)
class QueueFilters:
    status: str = STATUS_ACTIVE
    age: str = ""
    assignee: str = ""  # "", "me", "none", or a staff user's public id
    source: str = ""
    amount_min: Decimal | None = None  # major units of each dispute's own currency
    amount_max: Decimal | None = None
    sort: str = "due"


@dataclass(frozen=True)
class QueueRow:
    dispute: Dispute
    account_name: str
    account_public_id: str
    invoice_number: str | None
    assignee_email: str | None


@dataclass(frozen=True)
class QueuePage:
    rows: list[QueueRow]
    number: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1


# NOTE: amounts are typed in major units (12.50) and compared in thousandths of a major unit,
# which every currency's minor unit divides exactly (exponent 0, 2 or 3): no float, no rounding.
_THOUSANDTHS_PER_MINOR = case(
    {code: 10 ** (3 - exponent(code)) for code in SUPPORTED_CURRENCIES},
    value=Dispute.currency,
    else_=10,
)


def _thousandths(amount: Decimal) -> int:
    return int(amount * 1000)


def queue_statement(filters: QueueFilters, *, me: User, now: datetime) -> Select[Any]:
    assignee = aliased(User)
    statement = (
        select(Dispute, Account.name, Account.public_id, Invoice.number, assignee.email)
        .join(Account, Account.id == Dispute.account_id)
        .outerjoin(Invoice, Invoice.id == Dispute.invoice_id)
        .outerjoin(assignee, assignee.id == Dispute.assigned_to_user_id)
    )
    if filters.status == STATUS_ACTIVE:
        statement = statement.where(Dispute.status.in_(OPEN_DISPUTE_STATUSES))
    elif filters.status != STATUS_ALL:
        statement = statement.where(Dispute.status == filters.status)
    if filters.age == "late":
        statement = statement.where(
            Dispute.status.in_(OPEN_DISPUTE_STATUSES),
            or_(
                and_(
                    Dispute.first_response_at.is_(None),
                    Dispute.response_due_at.is_not(None),
                    Dispute.response_due_at < now,
                ),
                and_(Dispute.evidence_due_by.is_not(None), Dispute.evidence_due_by < now),
            ),
        )
    elif filters.age:
        statement = statement.where(Dispute.created_at <= now - timedelta(days=int(filters.age)))
    if filters.assignee == "me":
        statement = statement.where(Dispute.assigned_to_user_id == me.id)
    elif filters.assignee == "none":
        statement = statement.where(Dispute.assigned_to_user_id.is_(None))
    elif filters.assignee:
        statement = statement.where(assignee.public_id == filters.assignee)
    if filters.source:
        statement = statement.where(Dispute.source == filters.source)
    if filters.amount_min is not None:
        statement = statement.where(
            Dispute.amount_minor * _THOUSANDTHS_PER_MINOR >= _thousandths(filters.amount_min)
        )
    if filters.amount_max is not None:
        statement = statement.where(
            Dispute.amount_minor * _THOUSANDTHS_PER_MINOR <= _thousandths(filters.amount_max)
        )
    return statement.order_by(*_order(filters.sort))


def _order(sort: str) -> list[Any]:
    if sort == "newest":
        return [Dispute.created_at.desc(), Dispute.id.desc()]
    if sort == "oldest":
        return [Dispute.created_at, Dispute.id]
    if sort == "amount":
        return [(Dispute.amount_minor * _THOUSANDTHS_PER_MINOR).desc(), Dispute.id]
    # "due": the earliest deadline first (a chargeback's evidence date, else the response
    # target), answered and deadline-free ones last.
    deadline = case(
        (Dispute.evidence_due_by.is_not(None), Dispute.evidence_due_by),
        (Dispute.first_response_at.is_(None), Dispute.response_due_at),
        else_=None,
    )
    return [deadline.is_(None), deadline, Dispute.created_at, Dispute.id]


def queue_page(session: Session, filters: QueueFilters, number: int, *, me: User) -> QueuePage:
    number = min(max(number, 1), MAX_PAGE)
    statement = queue_statement(filters, me=me, now=clock.now())
    found = session.execute(statement.limit(PAGE_SIZE + 1).offset((number - 1) * PAGE_SIZE)).all()
    rows = [QueueRow(*row) for row in found[:PAGE_SIZE]]
    return QueuePage(rows, number, len(found) > PAGE_SIZE)


@dataclass(frozen=True)
class Due:
    """Where a dispute stands against its deadline: kind is late, soon, ok, answered or closed."""

    kind: str
    at: datetime | None
    label: str  # "response" or "evidence"


def due_state(dispute: Dispute, now: datetime) -> Due:
    if dispute.status not in OPEN_DISPUTE_STATUSES:
        return Due("closed", dispute.resolved_at, "response")
    if dispute.evidence_due_by is not None:
        at, label = dispute.evidence_due_by, "evidence"
    elif dispute.first_response_at is not None:
        return Due("answered", dispute.first_response_at, "response")
    else:
        at, label = dispute.response_due_at, "response"
    if at is None:
        return Due("ok", None, label)
    if at < now:
        return Due("late", at, label)
    return Due("soon" if at - now <= DUE_SOON else "ok", at, label)
