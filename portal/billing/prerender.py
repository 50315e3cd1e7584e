"""Pre-rendering invoice PDFs in the background, so a customer's first download is served from
the stored row instead of waiting for WeasyPrint (a job of the worker)."""

from __future__ import annotations

from flask import current_app, has_request_context, url_for
from flask_babel import force_locale
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from portal.billing import documents, pdf
from portal.billing.models import Invoice, InvoiceDocument, InvoiceStatus
from portal.db import commit
from portal.i18n import language_for

BATCH = 50


def prerender_invoice_pdfs(session: Session, *, limit: int = BATCH) -> int:
    """Render and store the PDF of up to `limit` finalized invoices that have none yet, in the
    account's language and page size (what its first download asks for); returns how many.

    Needs an app and a request context (url_for). Each stored PDF is a unit of work of its own.
    """
    ids = list(
        session.scalars(
            select(Invoice.id)
            .where(
                Invoice.status != InvoiceStatus.DRAFT.value,
                Invoice.number.is_not(None),
                ~exists().where(InvoiceDocument.invoice_id == Invoice.id),
            )
            .order_by(Invoice.id.desc())
            .limit(limit)
        )
    )
    session.rollback()
    rendered = 0
    for invoice_id in ids:
        invoice = session.get(Invoice, invoice_id)
        if invoice is None:
            continue
        _stored_pdf(session, invoice)
        commit(session)
        rendered += 1
    return rendered


def invoice_pdf_attachment(session: Session, invoice_id: int) -> tuple[str, bytes]:
    """The invoice's PDF as it stands now, for an email: (file name, bytes). Rendered and
    stored when it is not yet (the same stored document the download serves)."""
    invoice = session.get(Invoice, invoice_id)
    if invoice is None or invoice.number is None or invoice.status == InvoiceStatus.DRAFT.value:
        raise LookupError(f"invoice {invoice_id} has no PDF to attach")
    number = invoice.number
    if has_request_context():
        stored = _stored_pdf(session, invoice)
    else:
        with current_app.test_request_context(base_url=current_app.config["BASE_URL"]):
            stored = _stored_pdf(session, invoice)
    content = documents.document_content(session, stored.id)
    commit(session)
    return pdf.invoice_file_name(number), content


def _stored_pdf(session: Session, invoice: Invoice) -> documents.DocumentRef:
    """The stored PDF in the account's language and page size (what its download serves)."""
    account = invoice.account
    pay_url = current_app.config["BASE_URL"] + url_for(
        "billing.invoice_detail", number=invoice.number
    )
    with force_locale(language_for(account.locale)):
        return documents.stored_invoice_pdf(
            session, invoice, pdf.default_page_size(account.country), pay_url=pay_url
        )
