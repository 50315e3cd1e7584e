"""Issuing an invoice: the one finalization path of the billing run and of one-off invoices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from portal.accounts.models import Account
from portal.audit.services import SYSTEM, Actor
from portal.billing import ledger
from portal.billing import services as billing
from portal.billing.models import Invoice, InvoiceLine, InvoiceStatus
from portal.billing.money import Money
from portal.billing.numbering import take_many
from portal.db import insert_rows
from portal.errors import N_, ValidationFailed

if TYPE_CHECKING:
    from portal.notifications.queueing import EmailRequest


def issue_invoice(
    session: Session,
    draft: Invoice,
    *,
    seller: dict[str, Any],
    actor: Actor = SYSTEM,
    when: datetime | None = None,
) -> Invoice:
    """The one finalization path of the billing run and of one-off invoices: number, freeze the
    tax rates, post to the ledger (billing.finalize_invoice), then queue "invoice issued"."""
    invoice = billing.finalize_invoice(
        session, draft, seller=seller, actor=actor, finalized_at=when
    )
    if invoice.total_minor > 0:
        queue_invoice_issued(session, invoice)
    return invoice


def issue_invoices(
    session: Session,
    drafts: Sequence[tuple[Invoice, datetime]],
    *,
    seller: dict[str, Any],
    actor: Actor = SYSTEM,
) -> list[Invoice]:
    """issue_invoice for a batch of drafts (draft, finalized at), with the same result per
    invoice, in far fewer statements: the numbers of every series in one UPDATE, the invoices,
    lines and audit events in one flush (bulk INSERTs), the ledger entries in one more and each
    account's balance moved once (ledger.post_many); then the "invoice issued" emails."""
    for draft, _ in drafts:
        billing.check_finalizable(draft)
    # NOTE: the drafts are still pending: numbered first, they go in with one INSERT each
    # (an autoflush here would insert them and then update every one with its number).
    with session.no_autoflush:
        numbers = take_many(session, [billing.invoice_series_key(d.account) for d, _ in drafts])
    for (draft, when), sequence in zip(drafts, numbers, strict=True):
        billing.stamp_finalized(
            session, draft, sequence, seller=seller, actor=actor, finalized_at=when
        )
    session.flush()
    invoices = [draft for draft, _ in drafts]
    ledger.post_many(
        session, [billing.ledger_posting(inv) for inv in invoices if inv.total_minor > 0]
    )
    queue_invoices_issued(session, [inv for inv in invoices if inv.total_minor > 0])
    return invoices


@dataclass(frozen=True)
class IssuedInvoice:
    """What the billing run reads of an invoice it issued as rows (portal.billing.issuing
    .issue_invoice_rows): the fields the ledger entry, the "invoice issued" email and the run's
    summary need, with the names of Invoice's."""

    id: int
    account_id: int
    account: Account
    subscription_id: int | None
    currency: str
    number: str
    status: str
    due_date: date
    total_minor: int
    amount_due_minor: int
    finalized_at: datetime

    @property
    def total(self) -> Money:
        return Money(self.total_minor, self.currency)


@dataclass
class DraftRows:
    """A billing-run invoice before it is issued, as plain column values: the invoice's (as
    billing.create_draft_invoice would set them) and its lines' (billing.line_fields)."""

    account: Account
    fields: dict[str, Any]
    lines: list[dict[str, Any]]
    finalized_at: datetime
    issued: IssuedInvoice | None = field(default=None, repr=False)

    @property
    def subscription_id(self) -> int | None:
        return self.fields["subscription_id"]


def draft_rows(
    account: Account,
    lines: Sequence[billing.LineInput],
    *,
    issue_date: date,
    subscription_id: int | None,
    billing_key: str | None,
    billing_period_start: datetime | None,
    period: tuple[date, date] | None,
    finalized_at: datetime,
) -> DraftRows:
    """The rows of a draft with these lines: the same values billing.create_draft_invoice gives
    its objects (lines checked and taxed by billing.line_fields, totals by invoice_totals)."""
    if not lines:
        raise ValidationFailed(N_("An invoice needs at least one line before it can be issued."))
    currency = account.currency
    line_rows = [
        billing.line_fields(line, currency, position)
        for position, line in enumerate(lines, start=1)
    ]
    fields: dict[str, Any] = {
        "account_id": account.id,
        "subscription_id": subscription_id,
        "billing_key": billing_key,
        "billing_period_start": billing_period_start,
        "currency": currency,
        "issue_date": issue_date,
        "period_start": period[0] if period else None,
        "period_end": period[1] if period else None,
        "memo": "",
        **billing.invoice_totals(
            [(row["kind"], row["amount_minor"], row["tax_minor"]) for row in line_rows]
        ),
    }
    return DraftRows(account, fields, line_rows, finalized_at)


def issue_invoice_rows(
    session: Session,
    drafts: Sequence[DraftRows],
    *,
    seller: dict[str, Any],
    actor: Actor = SYSTEM,
) -> list[IssuedInvoice]:
    """issue_invoices for drafts that are rows, not objects (the billing run's batch): the same
    invoices, lines, audit events, ledger entries and emails, inserted as rows, each table in
    one statement; sets and returns each draft's IssuedInvoice.

    NOTE: finalization freezes each line's tax rate from its row (billing._freeze_tax); the
    run's drafts took their rates from the rows loaded in this transaction, which are the ones
    a freeze would read again, so there is nothing to freeze.
    """
    numbers = take_many(session, [billing.invoice_series_key(d.account) for d in drafts])
    rows: list[dict[str, Any]] = []
    for draft, sequence in zip(drafts, numbers, strict=True):
        account = draft.account
        row = {
            **draft.fields,
            **billing.finalized_fields(
                account,
                sequence,
                issue_date=draft.fields["issue_date"],
                due_date=None,
                seller=seller,
                finalized_at=draft.finalized_at,
            ),
        }
        status, paid_at = InvoiceStatus.OPEN, None
        billing.record_transition(
            session,
            actor,
            InvoiceStatus.DRAFT,
            status,
            account_id=account.id,
            target_id=row["number"],
        )
        if row["total_minor"] <= 0:
            billing.record_transition(
                session,
                actor,
                status,
                InvoiceStatus.PAID,
                account_id=account.id,
                target_id=row["number"],
            )
            status, paid_at = InvoiceStatus.PAID, draft.finalized_at
        row["status"], row["paid_at"] = status.value, paid_at
        rows.append(row)
    ids = insert_rows(session, Invoice.__table__, rows, ids=True)
    line_rows = []
    for draft, invoice_id in zip(drafts, ids, strict=True):
        for line in draft.lines:
            line_rows.append({**line, "invoice_id": invoice_id})
    insert_rows(session, InvoiceLine.__table__, line_rows)
    issued = []
    for draft, row, invoice_id in zip(drafts, rows, ids, strict=True):
        draft.issued = IssuedInvoice(
            id=invoice_id,
            account_id=row["account_id"],
            account=draft.account,
            subscription_id=row["subscription_id"],
            currency=row["currency"],
            number=row["number"],
            status=row["status"],
            due_date=row["due_date"],
            total_minor=row["total_minor"],
            # NOTE: Invoice.amount_due_minor of a new invoice: nothing paid or credited yet.
            amount_due_minor=max(row["total_minor"], 0),
            finalized_at=row["finalized_at"],
        )
        issued.append(draft.issued)
    # Only an invoice with something to pay posts to the ledger and is mailed.
    to_pay = [inv for inv in issued if inv.total_minor > 0]
    ledger.post_many(session, [billing.ledger_posting(inv) for inv in to_pay])
    if to_pay:
        from portal.notifications.queueing import queue_many_as_rows

        queue_many_as_rows(session, [_issued_request(inv) for inv in to_pay])
    return issued


def queue_invoices_issued(session: Session, invoices: Sequence[Invoice]) -> None:
    """The "invoice issued" emails of a batch, queued together (portal.notifications.queueing:
    preferences and members read once, each language entered once)."""
    from portal.notifications.queueing import queue_many

    if invoices:
        queue_many(session, [_issued_request(invoice) for invoice in invoices])


def _issued_request(invoice: Invoice | IssuedInvoice) -> EmailRequest:
    from portal.notifications.queueing import EmailRequest

    account = invoice.account
    return EmailRequest(
        to=account.billing_email,
        template="invoice_issued",
        context={"account": account, "invoice": invoice},
        account_id=account.id,
        dedupe_key=f"invoice_issued:{invoice.id}",
        account=account,
    )


def queue_invoice_issued(session: Session, invoice: Invoice) -> None:
    """The "invoice issued" email (context: account, invoice), in the invoice's transaction."""
    queue_invoices_issued(session, [invoice])
