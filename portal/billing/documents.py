"""Stored invoice PDFs: a finalized invoice never changes, so its PDF is rendered once per
template version and page size, stored with its content hash, and served from the row after that.

The hash is the PDF's ETag. Rows are found by (invoice, template version, page size), the table's
unique key; two first requests racing to store the same document both end with the one stored row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.billing.models import InvoiceDocument
from portal.billing.pdf import TEMPLATE_VERSION, PageSize


@dataclass(frozen=True)
class DocumentRef:
    """A stored document without its bytes: enough to answer a conditional request."""

    id: int
    content_hash: str
    size_bytes: int | None = None


def content_hash(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


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
