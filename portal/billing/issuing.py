"""Issuing an invoice: the one finalization path of the billing run and of one-off invoices."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from portal.audit.services import SYSTEM, Actor
from portal.billing import ledger
from portal.billing import services as billing
from portal.billing.models import Invoice
from portal.billing.numbering import take_many

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


def queue_invoices_issued(session: Session, invoices: Sequence[Invoice]) -> None:
    """The "invoice issued" emails of a batch, queued together (portal.notifications.queueing:
    preferences and members read once, each language entered once)."""
    from portal.notifications.queueing import queue_many

    if invoices:
        queue_many(session, [_issued_request(invoice) for invoice in invoices])


def _issued_request(invoice: Invoice) -> EmailRequest:
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
