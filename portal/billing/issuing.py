"""Issuing an invoice: the one finalization path of the billing run and of one-off invoices."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from portal.audit.services import SYSTEM, Actor
from portal.billing import services as billing
from portal.billing.models import Invoice


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


def queue_invoice_issued(session: Session, invoice: Invoice) -> None:
    """The "invoice issued" email (context: account, invoice), in the invoice's transaction."""
    from flask_babel import force_locale
    from flask_babel import gettext as _

    from portal.mail import queue_email

    account = invoice.account
    with force_locale(account.locale):
        subject = _("Invoice %(number)s", number=invoice.number)
        queue_email(
            session,
            to=account.billing_email,
            subject=subject,
            template="invoice_issued",
            context={"account": account, "invoice": invoice},
            account_id=account.id,
            dedupe_key=f"invoice_issued:{invoice.id}",
        )
