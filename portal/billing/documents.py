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

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import current_app
from flask_babel import get_locale
from sqlalchemy import Select, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.billing import pdf
from portal.billing.models import CreditNote, Invoice, InvoiceDocument, InvoiceStatus
from portal.billing.pdf import TEMPLATE_VERSION, PageSize
from portal.billing.queries import with_settlements
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
    # The PDF itself when it was read (or rendered) with the row; None: ask document_content.
    content: bytes | None = None


@dataclass(frozen=True)
class Settlements:
    """The payments and credit notes applied to an invoice, oldest first."""

    payments: list[pdf.PaymentFact]
    credits: list[pdf.CreditFact]


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


@functools.cache
def _settled_invoice_statement(by_number: bool) -> Select[Any]:
    """The invoice's payments and credit notes, outer-joined to its one row, with bound
    parameters, built once: by (account_id, number) with the invoice itself (found as
    queries.issued_invoice finds it: issued, of this account), or by (account_id, invoice_id)
    without it.

    NOTE: one statement where there were three (the invoice, its payments, its credit notes):
    each is a round trip on PostgreSQL. The rows are the product of the two lists (an invoice
    has a few of each at most); each is taken once by its id and ordered in Python.
    """
    account_id = bindparam("account_id")
    found = (
        (Invoice.number == bindparam("number"), Invoice.status != InvoiceStatus.DRAFT.value)
        if by_number
        else (Invoice.id == bindparam("invoice_id"),)
    )
    return with_settlements(
        select(
            Invoice if by_number else Invoice.id,
            PaymentAllocation.id,
            PaymentAllocation.amount_minor,
            Payment.id,
            Payment.received_at,
            Payment.method_description,
            Payment.receipt_number,
            CreditNote.id,
            CreditNote.number,
            CreditNote.issued_at,
            CreditNote.amount_minor,
        ).select_from(Invoice),
        account_id,
    ).where(Invoice.account_id == account_id, *found)


def _settlements(rows: Iterable[Sequence[Any]]) -> Settlements:
    payments: dict[int, tuple[tuple[Any, int], pdf.PaymentFact]] = {}
    credits: dict[int, tuple[tuple[Any, int], pdf.CreditFact]] = {}
    for row in rows:
        alloc_id, amount, payment_id, received_at, method, receipt = row[1:7]
        if alloc_id is not None and payment_id is not None:
            payments[alloc_id] = (
                (received_at, payment_id),
                pdf.PaymentFact(
                    received_at=received_at,
                    method=method or "",
                    receipt_number=receipt or "",
                    amount_minor=int(amount),
                ),
            )
        note_id, note_number, issued_at, note_amount = row[7:11]
        if note_id is not None:
            credits[note_id] = (
                (issued_at, note_id),
                pdf.CreditFact(
                    number=note_number, issued_at=issued_at, amount_minor=int(note_amount)
                ),
            )
    return Settlements(
        payments=[fact for _, fact in sorted(payments.values(), key=lambda item: item[0])],
        credits=[fact for _, fact in sorted(credits.values(), key=lambda item: item[0])],
    )


def settled_invoice(
    session: Session, account_id: int, number: str
) -> tuple[Invoice, Settlements] | None:
    """The account's issued invoice by number with its payments and credit notes (one query);
    None when the account has no such invoice."""
    rows = session.execute(
        _settled_invoice_statement(True), {"account_id": account_id, "number": number}
    ).all()
    if not rows:
        return None
    return rows[0][0], _settlements(rows)


def invoice_settlements(
    session: Session, invoice: Invoice
) -> tuple[list[pdf.PaymentFact], list[pdf.CreditFact]]:
    """The payments and credit notes applied to an invoice, oldest first (one query)."""
    found = _settlements(
        session.execute(
            _settled_invoice_statement(False),
            {"account_id": invoice.account_id, "invoice_id": invoice.id},
        )
    )
    return found.payments, found.credits


def stored_invoice_pdf(
    session: Session,
    invoice: Invoice,
    page_size: PageSize,
    *,
    pay_url: str = "",
    settlements: Settlements | None = None,
    with_content: bool = False,
) -> DocumentRef:
    """The PDF of the invoice as it stands now: the stored row for this content, or a new one.
    `settlements` are the invoice's as settled_invoice read them with it (read here when not
    given); `with_content` reads the stored bytes with the row (the caller will send them).

    NOTE: the key is computed from the same read as the render, so a payment that lands between
    the two can never store an "amount due" PDF under the paid invoice's key.
    """
    if settlements is None:
        payments, credits = invoice_settlements(session, invoice)
    else:
        payments, credits = settlements.payments, settlements.credits
    branding = pdf.branding_from_config(current_app.config)
    key = document_key(
        invoice_document_inputs(invoice, payments, credits, branding=branding, pay_url=pay_url)
    )
    stored = find_invoice_document(session, invoice.id, page_size, key, with_content=with_content)
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


@functools.cache
def _document_statement(with_content: bool) -> Select[Any]:
    """find_invoice_document's statement with bound parameters, built once."""
    columns = [InvoiceDocument.id, InvoiceDocument.content_hash]
    if with_content:
        columns.append(InvoiceDocument.content)
    return select(*columns).where(
        InvoiceDocument.invoice_id == bindparam("invoice_id"),
        InvoiceDocument.template_version == bindparam("version"),
        InvoiceDocument.page_size == bindparam("page_size"),
    )


def find_invoice_document(
    session: Session,
    invoice_id: int,
    page_size: PageSize,
    version: str = TEMPLATE_VERSION,
    *,
    with_content: bool = False,
) -> DocumentRef | None:
    """The stored document's id and hash; its bytes too when asked for (otherwise they stay in
    the database until document_content asks: a conditional request that answers 304 never
    needs them)."""
    row = session.execute(
        _document_statement(with_content),
        {"invoice_id": invoice_id, "version": version, "page_size": page_size.value},
    ).first()
    if row is None:
        return None
    content = bytes(row[2]) if with_content and row[2] is not None else None
    return DocumentRef(row[0], row[1], content=content)


def document_content(session: Session, document_id: int) -> bytes:
    content = session.scalar(
        select(InvoiceDocument.content).where(InvoiceDocument.id == document_id)
    )
    if content is None:
        raise LookupError(f"invoice document {document_id} is gone")
    return bytes(content)


def stored_content(session: Session, stored: DocumentRef) -> bytes:
    """The stored PDF's bytes: those read or rendered with the row, else read now."""
    if stored.content is not None:
        return stored.content
    return document_content(session, stored.id)


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
    return DocumentRef(document.id, document.content_hash, len(content), content)


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
