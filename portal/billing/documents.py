"""Stored invoice PDFs: rendered once per content and page size, stored with their hash, and
served from the row after that.

A finalized invoice's lines never change, but what its PDF says does: paid, partly paid or void,
with the payments and credit notes applied. So the stored row is keyed by what the PDF is made
of: its `template_version` column holds the template version plus a digest of those inputs
("v1-3f9c2a…"), and a payment, credit note or void (or a new template) gives a new key and a new
render, while an unchanged invoice is served from its row. The content hash is the PDF's ETag.
Rows are found by (invoice, key, page size), the table's unique key; two first requests racing
to store the same document both end with the one stored row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from flask import current_app
from flask_babel import get_locale
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.billing import pdf
from portal.billing.models import CreditNote, Invoice, InvoiceDocument
from portal.billing.pdf import TEMPLATE_VERSION, PageSize
from portal.db import begin_write
from portal.payments.models import Payment, PaymentAllocation

# NOTE: the key column is 16 characters wide: "v1-" and 13 hex digits (52 bits) of the digest;
# a collision would need two states of one invoice with the same digest.
_DIGEST_CHARS = 16 - len(TEMPLATE_VERSION) - 1


@dataclass(frozen=True)
class DocumentRef:
    """A stored document without its bytes: enough to answer a conditional request."""

    id: int
    content_hash: str
    size_bytes: int | None = None


def content_hash(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def document_key(parts: tuple[object, ...]) -> str:
    """The stored row's key: the template version and a digest of what the PDF is made from."""
    digest = hashlib.sha256(repr(parts).encode("utf-8"))
    return f"{TEMPLATE_VERSION}-{digest.hexdigest()[:_DIGEST_CHARS]}"


def invoice_document_inputs(
    invoice: Invoice,
    payments: list[pdf.PaymentFact],
    credits: list[pdf.CreditFact],
    *,
    branding: pdf.Branding,
    pay_url: str,
) -> tuple[object, ...]:
    """Everything an invoice's PDF is made from, apart from what finalization froze.

    NOTE: the lines, seller, buyer and memo never change after finalization, so they need not
    be read (or formatted) to know whether the stored PDF still says the right thing: its
    status, what was paid and credited, the buyer's locale and time zone, the language, the
    brand and the pay link do. Building the whole view model on every download of a 175-line
    invoice cost several times the rest of the request.
    """
    account = invoice.account
    return (
        invoice.id,
        invoice.number,
        invoice.status,
        invoice.total_minor,
        invoice.amount_paid_minor,
        invoice.amount_credited_minor,
        invoice.paid_at,
        invoice.voided_at,
        tuple(payments),
        tuple(credits),
        account.locale,
        account.timezone,
        str(get_locale()),
        branding,
        pay_url,
        pdf.document_thank_you(invoice.seller),
    )


def invoice_settlements(
    session: Session, invoice: Invoice
) -> tuple[list[pdf.PaymentFact], list[pdf.CreditFact]]:
    """The payments and credit notes applied to an invoice, oldest first (two queries)."""
    payments = [
        pdf.PaymentFact(
            received_at=received_at,
            method=method or "",
            receipt_number=receipt or "",
            amount_minor=int(amount),
        )
        for received_at, method, receipt, amount in session.execute(
            select(
                Payment.received_at,
                Payment.method_description,
                Payment.receipt_number,
                PaymentAllocation.amount_minor,
            )
            .join(Payment, Payment.id == PaymentAllocation.payment_id)
            .where(
                PaymentAllocation.invoice_id == invoice.id,
                Payment.account_id == invoice.account_id,
            )
            .order_by(Payment.received_at, Payment.id)
        )
    ]
    credits = [
        pdf.CreditFact(number=number, issued_at=issued_at, amount_minor=int(amount))
        for number, issued_at, amount in session.execute(
            select(CreditNote.number, CreditNote.issued_at, CreditNote.amount_minor)
            .where(
                CreditNote.invoice_id == invoice.id,
                CreditNote.account_id == invoice.account_id,
            )
            .order_by(CreditNote.issued_at, CreditNote.id)
        )
    ]
    return payments, credits


def stored_invoice_pdf(
    session: Session, invoice: Invoice, page_size: PageSize, *, pay_url: str = ""
) -> DocumentRef:
    """The PDF of the invoice as it stands now: the stored row for this content, or a new one.

    NOTE: the key is computed from the same read as the render, so a payment that lands between
    the two can never store an "amount due" PDF under the paid invoice's key.
    """
    payments, credits = invoice_settlements(session, invoice)
    branding = pdf.branding_from_config(current_app.config)
    key = document_key(
        invoice_document_inputs(invoice, payments, credits, branding=branding, pay_url=pay_url)
    )
    stored = find_invoice_document(session, invoice.id, page_size, key)
    if stored is not None:
        return stored
    invoice_id = invoice.id
    view = pdf.invoice_document_view(
        invoice, pay_url=pay_url, payments=payments, credit_notes=credits
    )
    content = pdf.render_pdf("invoice.html", page_size=page_size, branding=branding, doc=view)
    # NOTE: the read transaction ends before the write starts: on SQLite a transaction whose
    # snapshot predates another writer's commit cannot write at all. IMMEDIATE takes the write
    # lock up front; a request that stored the same PDF meanwhile wins and we serve its row.
    begin_write(session)
    return store_invoice_document(session, invoice_id, page_size, content, key)


def find_invoice_document(
    session: Session, invoice_id: int, page_size: PageSize, version: str = TEMPLATE_VERSION
) -> DocumentRef | None:
    """The stored document's id and hash (the bytes stay in the database until asked for)."""
    row = session.execute(
        select(InvoiceDocument.id, InvoiceDocument.content_hash).where(
            InvoiceDocument.invoice_id == invoice_id,
            InvoiceDocument.template_version == version,
            InvoiceDocument.page_size == page_size.value,
        )
    ).first()
    return DocumentRef(row.id, row.content_hash) if row else None


def document_content(session: Session, document_id: int) -> bytes:
    content = session.scalar(
        select(InvoiceDocument.content).where(InvoiceDocument.id == document_id)
    )
    if content is None:
        raise LookupError(f"invoice document {document_id} is gone")
    return bytes(content)


def store_invoice_document(
    session: Session,
    invoice_id: int,
    page_size: PageSize,
    content: bytes,
    version: str = TEMPLATE_VERSION,
) -> DocumentRef:
    """Store a rendered PDF, or return the row a concurrent request stored first.

    NOTE: the insert runs in a savepoint: when another request stored the same (invoice, version,
    size) first, the unique constraint refuses ours, the savepoint rolls back, and we read theirs.
    Both requests then serve identical bytes (rendering is deterministic), so nothing fails.
    """
    if not content.startswith(b"%PDF"):
        raise ValueError("refusing to store something that is not a PDF")
    document = InvoiceDocument(
        invoice_id=invoice_id,
        template_version=version,
        page_size=page_size.value,
        content_hash=content_hash(content),
        content=content,
    )
    try:
        with session.begin_nested():
            session.add(document)
            session.flush()
    except IntegrityError:
        existing = find_invoice_document(session, invoice_id, page_size, version)
        if existing is None:
            raise
        return existing
    return DocumentRef(document.id, document.content_hash, len(content))


def count_invoice_documents(session: Session, invoice_id: int) -> int:
    from sqlalchemy import func

    return int(
        session.scalar(
            select(func.count())
            .select_from(InvoiceDocument)
            .where(InvoiceDocument.invoice_id == invoice_id)
        )
        or 0
    )
