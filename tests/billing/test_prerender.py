"""The worker's PDF pre-rendering: finalized invoices without a stored PDF get one, once."""

from __future__ import annotations

from flask import Flask
from sqlalchemy.orm import Session

from portal.billing import documents
from portal.billing.prerender import invoice_pdf_attachment, prerender_invoice_pdfs
from tests.factories import make_account, make_invoice


def test_finalized_invoices_get_their_pdf_once_and_drafts_none(
    app: Flask, session: Session
) -> None:
    account = make_account(session)
    invoice = make_invoice(session, account, (1200,))
    draft = make_invoice(session, account, (500,), finalize=False)
    session.commit()
    with app.test_request_context(base_url=app.config["BASE_URL"]):
        assert prerender_invoice_pdfs(session) >= 1
        assert documents.count_invoice_documents(session, invoice.id) == 1
        assert documents.count_invoice_documents(session, draft.id) == 0
        assert prerender_invoice_pdfs(session) == 0  # nothing left to render
        # The download (and an email's attachment) is then served from the stored row.
        name, content = invoice_pdf_attachment(session, invoice.id)
        assert content.startswith(b"%PDF") and name.endswith(".pdf")
        assert documents.count_invoice_documents(session, invoice.id) == 1
