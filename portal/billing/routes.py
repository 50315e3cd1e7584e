"""Customer billing pages: the dashboard, the invoice list and page, and the statement."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from datetime import date
from typing import Any

from flask import Blueprint, Response, abort, current_app, request, stream_with_context, url_for
from flask_babel import gettext as _
from flask_login import login_required
from sqlalchemy import func, select

from portal import clock
from portal import db as unit_of_work
from portal.auth.sessions import current_account
from portal.billing import documents, pdf, queries, rows
from portal.billing.forms import STATUS_CHOICES, InvoiceFilterForm, StatementPeriodForm
from portal.billing.models import Invoice, InvoiceLine, InvoiceStatus
from portal.billing.queries import Cursor, dashboard_summary
from portal.billing.statements import (
    InvalidPeriod,
    csv_filename,
    statement_csv,
    statement_period,
    statement_view,
)
from portal.errors import NotFound, ValidationFailed
from portal.extensions import db
from portal.web import render_page

bp = Blueprint("billing", __name__)
bp.add_app_template_global(rows.due_phrase, "due_phrase_text")


@bp.get("/")
@login_required
def dashboard() -> Response:
    account = current_account()
    today = clock.today(account.timezone)
    summary = dashboard_summary(db.session, account.id, account.currency, today)
    return render_page("billing/dashboard.html", account=account, summary=summary, today=today)


@bp.get("/invoices")
@login_required
def invoices() -> Response:
    account = current_account()
    today = clock.today(account.timezone)
    form = InvoiceFilterForm(request.args)
    after = None
    error = ""
    raw_after = request.args.get("after", "")
    if raw_after:
        after = Cursor.decode(raw_after)
        if after is None:
            error = _("That page link is broken. Here are your newest invoices.")
    if not form.validate():
        page = queries.InvoicePage([], None)
        error = form.first_error()
    else:
        page = queries.invoice_page(db.session, account.id, form.filters(), today, after)
    filters = form.filters() if not form.errors else queries.InvoiceFilters()
    args = {
        k: v
        for k, v in (("status", filters.status), ("year", filters.year), ("q", filters.search))
        if v
    }
    next_url = (
        url_for("billing.invoices", **args, after=page.next_cursor.encode())
        if page.next_cursor
        else None
    )
    years, payable = queries.invoice_list_header(db.session, account.id)
    response = render_page(
        "billing/invoices.html",
        "billing/_invoice_rows.html",
        account=account,
        today=today,
        form=form,
        status_choices=STATUS_CHOICES,
        results=page,
        rows=rows.invoice_rows(page.invoices, today),
        filters=filters,
        years=years,
        payable_count=payable if "checkout.pay_balance" in current_app.view_functions else 0,
        next_url=next_url,
        is_later_page=after is not None,
        error=error,
        export_year=(
            (filters.year or today.year)
            if "billing.invoice_export" in current_app.view_functions
            else None
        ),
    )
    if form.errors:
        response.status_code = 422
    return response


@bp.get("/invoices/<number>")
@login_required
def invoice_detail(number: str) -> Response:
    account = current_account()
    if not queries.is_invoice_number(number):
        abort(404)
    detail = queries.invoice_detail(db.session, account.id, number)
    if detail is None:
        abort(404)
    today = clock.today(account.timezone)
    views = current_app.view_functions
    return render_page(
        "billing/invoice_detail.html",
        account=account,
        detail=detail,
        invoice=detail.invoice,
        today=today,
        # NOTE: the page prints tax labels as the invoice's PDF does (one definition).
        tax_label=pdf.tax_label,
        can_pay="checkout.pay_invoice" in views,
        has_pdf="billing.invoice_pdf" in views,
        can_dispute="disputes.new" in views,
        card_retries=detail.card_retries,
    )


@bp.get("/statements")
@login_required
def statements() -> Response:
    account = current_account()
    today = clock.today(account.timezone)
    form = StatementPeriodForm(request.args)
    args = request.args
    try:
        asked = statement_period(today, args.get("period"), args.get("start"), args.get("end"))
    except InvalidPeriod as invalid:
        response = render_page(
            "billing/statements.html",
            account=account,
            form=form,
            view=None,
            error=invalid,
            today=today,
        )
        response.status_code = 422
        return response
    view = statement_view(db.session, account, asked)
    period = view.period  # NOTE: the default period may have fallen back to last month
    fmt = args.get("format", "html")
    if fmt == "csv":
        return _download(
            # NOTE: the BOM tells Excel the file is UTF-8; Flask adds "; charset=utf-8" itself.
            statement_csv(view, account.locale, _).encode("utf-8-sig"),
            "text/csv",
            csv_filename(account, period),
        )
    if fmt == "pdf":
        return pdf.statement_pdf_response(account, view)
    if fmt != "html":
        abort(404)
    if not args.get("period") and not args.get("start"):
        form.period.data = period.preset
    if period.preset != "custom":
        form.start.data, form.end.data = period.start.isoformat(), period.end.isoformat()
    download_args = {"period": period.preset}
    if period.preset == "custom":
        download_args |= {"start": period.start.isoformat(), "end": period.end.isoformat()}
    return render_page(
        "billing/statements.html",
        account=account,
        form=form,
        view=view,
        error=None,
        today=today,
        csv_url=url_for("billing.statements", **download_args, format="csv"),
        pdf_url=url_for("billing.statements", **download_args, format="pdf"),
    )


def _download(body: bytes, mimetype: str, filename: str) -> Response:
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


# ----------------------------------------------------------------------------------------------
# Invoice PDFs and the yearly ZIP of them. Rendering lives in portal/billing/pdf.py, storage in
# portal/billing/documents.py; this section only translates requests.


# NOTE: what an invoice's PDF says changes when it is paid, credited or voided, under the same
# URL: browsers revalidate by ETag every time (a 304 costs one query), never show a stale copy.
INVOICE_PDF_MAX_AGE = 0
MAX_EXPORT_INVOICES = 2000


@bp.get("/invoices/<number>/pdf")
@login_required
def invoice_pdf(number: str) -> Response:
    account = current_account()
    if not queries.is_invoice_number(number):
        abort(404)
    found = documents.settled_invoice(db.session, account.id, number)
    if found is None:
        abort(404)
    invoice, settlements = found
    file_name = pdf.invoice_file_name(invoice.number or number)
    size = pdf.parse_page_size(request.args.get("size"), account.country)
    # NOTE: the bytes come with the stored row unless the browser may already have them (a
    # conditional request mostly answers 304): one statement fewer for a plain download.
    stored = _stored_invoice_pdf(
        invoice, size, settlements=settlements, with_content=not request.if_none_match
    )
    if request.if_none_match.contains(stored.content_hash):
        response = Response(status=304)
        response.set_etag(stored.content_hash)
        response.headers["Cache-Control"] = f"private, max-age={INVOICE_PDF_MAX_AGE}"
        return response
    return pdf.pdf_download(
        documents.stored_content(db.session, stored),
        file_name,
        etag=stored.content_hash,
        max_age=INVOICE_PDF_MAX_AGE,
    )


@bp.get("/invoices/export")
@login_required
def invoice_export() -> Response:
    account = current_account()
    year = _export_year(request.args.get("year"), clock.today(account.timezone).year)
    size = pdf.parse_page_size(request.args.get("size"), account.country)
    finalized = (
        Invoice.account_id == account.id,
        Invoice.status != InvoiceStatus.DRAFT.value,
        Invoice.number.is_not(None),
        Invoice.issue_date >= date(year, 1, 1),
        Invoice.issue_date <= date(year, 12, 31),
    )
    invoices = db.session.execute(
        select(Invoice.id, Invoice.number, Invoice.issue_date)
        .where(*finalized)
        .order_by(Invoice.issue_date, Invoice.id)
        .limit(MAX_EXPORT_INVOICES + 1)
    ).all()
    if not invoices:
        raise NotFound(
            _("You have no invoices from %(year)s, so there is nothing to download.", year=year)
        )
    if len(invoices) > MAX_EXPORT_INVOICES:
        raise ValidationFailed(
            _(
                "%(year)s has more than %(count)s invoices, too many for one download. "
                "Please contact us for an export.",
                year=year,
                count=f"{MAX_EXPORT_INVOICES:,}",
            )
        )
    # NOTE: checked before the first byte is sent: once the ZIP streams, an error can no longer
    # reach the person as a page.
    oversized = db.session.scalar(
        select(Invoice.number)
        .join(InvoiceLine, InvoiceLine.invoice_id == Invoice.id)
        .where(*finalized)
        .group_by(Invoice.id, Invoice.number)
        .having(func.count(InvoiceLine.id) > pdf.MAX_INVOICE_LINES)
        .limit(1)
    )
    if oversized is not None:
        raise pdf.DocumentTooLarge(
            _(
                "Invoice %(number)s is too long for a PDF, so %(year)s cannot be exported as one "
                "download. Please contact us for a copy.",
                number=oversized,
                year=year,
            )
        )
    prefix = pdf.safe_file_part(account.invoice_prefix)
    response = Response(
        stream_with_context(_zip_of_invoices(invoices, size)), mimetype="application/zip"
    )
    response.headers["Content-Disposition"] = f'attachment; filename="invoices-{prefix}-{year}.zip"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


def _stored_invoice_pdf(
    invoice: Invoice,
    size: pdf.PageSize,
    *,
    settlements: documents.Settlements | None = None,
    with_content: bool = False,
) -> documents.DocumentRef:
    """The stored PDF of the invoice as it stands (paid, void, …), rendered on first use."""
    pay_url = current_app.config["BASE_URL"] + url_for(
        "billing.invoice_detail", number=invoice.number
    )
    return documents.stored_invoice_pdf(
        db.session,
        invoice,
        size,
        pay_url=pay_url,
        settlements=settlements,
        with_content=with_content,
    )


def _export_year(raw: str | None, this_year: int) -> int:
    text = (raw or "").strip()
    if not text:
        raise ValidationFailed(
            _("Choose the year of invoices to download, for example ?year=2026.")
        )
    # NOTE: ASCII digits only: str.isdigit() also accepts "²" and other digits int() refuses.
    if not (len(text) == 4 and text.isascii() and text.isdigit()) or not (
        2000 <= int(text) <= this_year
    ):
        raise ValidationFailed(
            _(
                "“%(text)s” is not a year we have invoices for. Choose a year from 2000 "
                "to %(this_year)s.",
                text=text[:12],
                this_year=this_year,
            )
        )
    return int(text)


class _ChunkSink:
    """A write-only file for zipfile: it keeps what was written until the stream takes it.

    NOTE: without seek/tell, zipfile writes a streaming archive (sizes after each member), so
    only one PDF at a time is ever held in memory, however many the year has.
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        data, self._chunks = b"".join(self._chunks), []
        return data


def _zip_of_invoices(invoices: Sequence[Any], size: pdf.PageSize) -> Iterator[bytes]:
    sink = _ChunkSink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as archive:  # type: ignore[arg-type]
        for invoice_id, number, issued in invoices:
            invoice = db.session.get(Invoice, invoice_id)
            if invoice is None:
                continue
            stored = _stored_invoice_pdf(invoice, size, with_content=True)
            # NOTE: the archive streams after the request's own unit of work has committed;
            # each PDF stored on the way is a unit of work of its own.
            unit_of_work.commit(db.session)
            member = zipfile.ZipInfo(
                pdf.invoice_file_name(number),
                date_time=(issued.year, issued.month, issued.day, 0, 0, 0),
            )
            archive.writestr(member, documents.stored_content(db.session, stored))
            yield sink.drain()
    yield sink.drain()
