"""PDF documents (invoice, statement, receipt): view models of pre-formatted strings, rendered by
WeasyPrint from the versioned templates in templates/pdf/<version>/.

The templates never see a model or a number: everything they print was formatted here, in the
account's locale, so a template change cannot alter an amount and a PDF cannot run a query.
WeasyPrint is imported inside the functions that use it (importing it costs ~0.4 s).
"""

from __future__ import annotations

import atexit
import mimetypes
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from babel.dates import format_date
from babel.numbers import format_decimal, format_percent
from flask import Response, current_app, render_template, request

from portal.billing.models import Invoice, LineKind
from portal.errors import ValidationFailed
from portal.formatting import money_minor

if TYPE_CHECKING:
    from portal.accounts.models import Account
    from portal.billing.queries import Receipt
    from portal.billing.statements import StatementView
    from portal.payments.models import Payment

# NOTE: bump when a template changes what a PDF looks like: stored invoice PDFs are keyed by it,
# so new downloads get the new look and old rows stay valid for their version.
TEMPLATE_VERSION = "v1"

# NOTE: input is bounded before rendering: layout time grows with rows, and one request must not
# tie up a worker for minutes. The statement's CSV has no such limit.
MAX_INVOICE_LINES = 500
MAX_STATEMENT_ENTRIES = 1000
MAX_RECEIPT_ITEMS = 500


class PageSize(StrEnum):
    A4 = "A4"
    LETTER = "Letter"


# NOTE: ISO 216 (A4) everywhere except where US Letter is the norm (North America and a few
# Latin American countries and the Philippines); `?size=` overrides the guess.
LETTER_COUNTRIES = frozenset({"US", "CA", "MX", "PH", "CL", "CO", "VE", "GT", "CR", "PR", "DO"})


def default_page_size(country: str | None) -> PageSize:
    return PageSize.LETTER if (country or "").upper() in LETTER_COUNTRIES else PageSize.A4


def parse_page_size(raw: str | None, country: str | None) -> PageSize:
    """`?size=a4|letter`; absent means the buyer's country's usual paper."""
    if raw is None or raw == "":
        return default_page_size(country)
    for size in PageSize:
        if raw.strip().lower() == size.value.lower():
            return size
    raise ValidationFailed("Choose a page size of A4 or Letter.", errors={"size": "A4 or Letter"})


class DocumentTooLarge(ValidationFailed):
    title = "This document is too large for a PDF"


# ----------------------------------------------------------------------------------------------
# View models: plain strings only.


@dataclass(frozen=True)
class Party:
    name: str
    address: tuple[str, ...] = ()
    email: str = ""
    tax_id: str = ""


@dataclass(frozen=True)
class Row:
    """A label and a pre-formatted value (meta blocks and totals)."""

    label: str
    value: str
    strong: bool = False


@dataclass(frozen=True)
class InvoiceLineView:
    description: str
    period: str
    quantity: str
    unit_price: str
    tax: str
    amount: str
    is_discount: bool = False


@dataclass(frozen=True)
class InvoiceDocumentView:
    number: str
    issue_date: str
    due_date: str
    headline: str  # "$75.00 due Dec 11, 2026"
    meta: tuple[Row, ...]
    seller: Party
    buyer: Party
    lines: tuple[InvoiceLineView, ...]
    totals: tuple[Row, ...]
    memo: str
    thank_you: str
    pay_url: str
    footer: str


@dataclass(frozen=True)
class StatementEntryView:
    date: str
    description: str
    charges: str
    credits: str
    balance: str


@dataclass(frozen=True)
class StatementDocumentView:
    account: Party
    period: str
    opening_date: str
    opening_balance: str
    meta: tuple[Row, ...]
    summary: tuple[Row, ...]
    entries: tuple[StatementEntryView, ...]
    aging: tuple[Row, ...]
    footer: str


@dataclass(frozen=True)
class ReceiptItemView:
    description: str
    amount: str


@dataclass(frozen=True)
class ReceiptDocumentView:
    reference: str
    headline: str
    meta: tuple[Row, ...]
    seller: Party
    buyer: Party
    items: tuple[ReceiptItemView, ...]
    totals: tuple[Row, ...]
    thank_you: str
    footer: str


@dataclass(frozen=True)
class Branding:
    name: str
    color: str
    logo: str  # a path under static/, or "" for none


_COLOR = re.compile(r"#[0-9a-fA-F]{3}(?:[0-9a-fA-F]{3})?")


def branding_from_config(config: Any) -> Branding:
    """Brand name, colour and logo from configuration; a malformed colour falls back."""
    color = str(config.get("BRAND_COLOR", "")).strip()
    # NOTE: the colour is written into the PDF stylesheet, so only a plain hex colour passes.
    if not _COLOR.fullmatch(color):
        color = "#4338ca"
    return Branding(
        name=str(config.get("BRAND_NAME", "")),
        color=color,
        logo=str(config.get("BRAND_LOGO", "")).lstrip("/"),
    )


# ----------------------------------------------------------------------------------------------
# Formatting in the account's locale.


class Formatter:
    """Money, dates, quantities and rates in one locale, as text the embedded font can draw."""

    def __init__(self, locale: str, timezone: str = "UTC") -> None:
        self.locale = locale or "en_US"
        self.tz = ZoneInfo(timezone or "UTC")

    def money(self, minor: int, currency: str) -> str:
        # NOTE: CLDR's ja_JP yen sign is the full-width U+FFE5, which DejaVu lacks; U+00A5 is the
        # same sign at normal width.
        return _printable(money_minor(minor, currency, self.locale))

    def day(self, value: date | datetime | None) -> str:
        if value is None:
            return ""
        if isinstance(value, datetime):
            value = value.astimezone(self.tz).date()
        # "medium" everywhere: the long forms of some locales need glyphs outside our font.
        return format_date(value, format="medium", locale=self.locale)

    def period(self, start: date | None, end: date | None) -> str:
        if start is None or end is None:
            return ""
        return f"{self.day(start)} – {self.day(end)}"

    def quantity(self, value: int) -> str:
        return format_decimal(value, locale=self.locale)

    def rate(self, basis_points: int) -> str:
        return format_percent(
            Decimal(basis_points) / Decimal(10_000), format="#,##0.##%", locale=self.locale
        )


def _printable(text: str) -> str:
    return text.replace("\uffe5", "\u00a5")


def _party(snapshot: dict[str, Any] | None, fallback_name: str = "") -> Party:
    snapshot = snapshot or {}
    address = snapshot.get("address") or ()
    if isinstance(address, str):
        address = address.splitlines()
    return Party(
        name=str(snapshot.get("name") or fallback_name),
        address=tuple(str(part) for part in address if str(part).strip()),
        email=str(snapshot.get("email") or ""),
        tax_id=str(snapshot.get("tax_id") or ""),
    )


def invoice_view(
    invoice: Invoice, *, locale: str, timezone: str, thank_you: str = "", pay_url: str = ""
) -> InvoiceDocumentView:
    """The invoice as issued: lines, discounts, tax per rate and totals, all pre-formatted.

    NOTE: the stored PDF must not change after it is rendered, so it shows only what is fixed at
    finalization (payments and credit notes have their own receipts and pages).
    """
    if invoice.number is None:
        raise ValueError("a draft invoice has no PDF")
    if len(invoice.lines) > MAX_INVOICE_LINES:
        raise DocumentTooLarge(
            f"Invoice {invoice.number} has {len(invoice.lines)} lines; a PDF holds at most "
            f"{MAX_INVOICE_LINES}. Please contact us for a copy."
        )
    fmt = Formatter(locale, timezone)
    currency = invoice.currency
    lines = tuple(
        InvoiceLineView(
            description=line.description,
            period=fmt.period(line.period_start, line.period_end),
            quantity=fmt.quantity(line.quantity),
            unit_price=fmt.money(line.unit_amount_minor, currency),
            tax=fmt.rate(line.tax_rate_bp) if line.tax_rate_bp else "",
            amount=fmt.money(line.amount_minor, currency),
            is_discount=line.kind == LineKind.DISCOUNT,
        )
        for line in invoice.lines
    )
    totals = [Row("Subtotal", fmt.money(invoice.subtotal_minor, currency))]
    if invoice.discount_minor:
        totals.append(Row("Discount", fmt.money(-invoice.discount_minor, currency)))
    for (name, rate), (base, tax) in _tax_by_rate(invoice).items():
        percent = fmt.rate(rate)
        name = name or "Tax"
        label = name if _digits(percent) in _digits(name) else f"{name} {percent}"
        label = f"{label} on {fmt.money(base, currency)}"
        totals.append(Row(label, fmt.money(tax, currency)))
    total = fmt.money(invoice.total_minor, currency)
    totals.append(Row("Total", total))
    totals.append(Row("Amount due", total, strong=True))
    due = fmt.day(invoice.due_date)
    meta = [
        Row("Invoice number", invoice.number),
        Row("Date of issue", fmt.day(invoice.issue_date)),
        Row("Date due", due),
    ]
    if invoice.period_start and invoice.period_end:
        meta.append(Row("Service period", fmt.period(invoice.period_start, invoice.period_end)))
    return InvoiceDocumentView(
        number=invoice.number,
        issue_date=fmt.day(invoice.issue_date),
        due_date=due,
        headline=f"{total} due {due}" if due else total,
        meta=tuple(meta),
        seller=_party(invoice.seller),
        buyer=_party(invoice.buyer),
        lines=lines,
        totals=tuple(totals),
        memo=invoice.memo or "",
        thank_you=thank_you,
        pay_url=pay_url,
        footer=f"{invoice.number} · {total} due {due}" if due else invoice.number,
    )


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _tax_by_rate(invoice: Invoice) -> dict[tuple[str, int], tuple[int, int]]:
    groups: dict[tuple[str, int], tuple[int, int]] = {}
    for line in invoice.lines:
        if not line.tax_rate_bp and not line.tax_minor:
            continue
        key = (line.tax_name, line.tax_rate_bp)
        base, tax = groups.get(key, (0, 0))
        groups[key] = (base + line.amount_minor, tax + line.tax_minor)
    return groups


def receipt_view(
    payment: Payment,
    account: Account,
    items: Iterable[tuple[str, int]],
    *,
    seller: dict[str, Any],
    thank_you: str = "",
) -> ReceiptDocumentView:
    """A receipt for a received payment; `items` are (invoice number, amount applied)."""
    items = list(items)
    if len(items) > MAX_RECEIPT_ITEMS:
        raise DocumentTooLarge("This payment covers too many invoices for one PDF receipt.")
    fmt = Formatter(account.locale, account.timezone)
    currency = payment.currency
    paid = fmt.money(payment.amount_minor, currency)
    when = fmt.day(payment.received_at)
    reference = payment.public_id
    meta = [Row("Receipt", reference), Row("Date paid", when)]
    if payment.method_description:
        meta.append(Row("Payment method", payment.method_description))
    applied = sum(amount for _, amount in items)
    rows = [
        ReceiptItemView(f"Invoice {number}", fmt.money(amount, currency))
        for number, amount in items
    ]
    if payment.amount_minor > applied:
        rows.append(
            ReceiptItemView(
                "Credit on account", fmt.money(payment.amount_minor - applied, currency)
            )
        )
    totals = [Row("Amount paid", paid, strong=not payment.amount_refunded_minor)]
    if payment.amount_refunded_minor:
        totals.append(Row("Refunded", fmt.money(-payment.amount_refunded_minor, currency)))
        net = payment.amount_minor - payment.amount_refunded_minor
        totals.append(Row("Net paid", fmt.money(net, currency), strong=True))
    from portal.billing.services import buyer_snapshot

    return ReceiptDocumentView(
        reference=reference,
        headline=f"{paid} paid on {when}",
        meta=tuple(meta),
        seller=_party(seller),
        buyer=_party(buyer_snapshot(account)),
        items=tuple(rows),
        totals=tuple(totals),
        thank_you=thank_you,
        footer=f"Receipt {reference} · {paid} paid on {when}",
    )


def statement_document_view(account: Account, view: StatementView) -> StatementDocumentView:
    """The statement page's view model (portal/billing/statements.py) as PDF strings."""
    if len(view.rows) > MAX_STATEMENT_ENTRIES:
        raise DocumentTooLarge(
            f"This statement has {len(view.rows):,} entries; a PDF holds at most "
            f"{MAX_STATEMENT_ENTRIES:,}. Choose a shorter period, or download it as CSV."
        )
    fmt = Formatter(account.locale, account.timezone)
    currency = view.currency
    rows = tuple(
        StatementEntryView(
            date=fmt.day(row.on),
            description=row.description or row.kind_label,
            charges=fmt.money(row.amount.minor, currency) if row.amount.minor > 0 else "",
            credits=fmt.money(-row.amount.minor, currency) if row.amount.minor < 0 else "",
            balance=fmt.money(row.balance.minor, currency),
        )
        for row in view.rows
    )
    span = fmt.period(view.period.start, view.period.end)
    summary = (
        Row("Opening balance", fmt.money(view.opening.minor, currency)),
        Row("Charges", fmt.money(view.charges.minor, currency)),
        Row("Payments and credits", fmt.money(-view.credits.minor, currency)),
        Row("Closing balance", fmt.money(view.closing.minor, currency), strong=True),
    )
    aging = tuple(
        Row(bucket.label, fmt.money(bucket.amount.minor, currency)) for bucket in view.aging.buckets
    )
    from portal.billing.services import buyer_snapshot

    return StatementDocumentView(
        account=_party(buyer_snapshot(account)),
        period=span,
        opening_date=fmt.day(view.period.start),
        opening_balance=fmt.money(view.opening.minor, currency),
        meta=(
            Row("Period", span),
            Row("Currency", currency),
            Row("Aging as of", fmt.day(view.aging.as_of)),
        ),
        summary=summary,
        entries=rows,
        aging=aging,
        footer=f"Statement {span} · {account.name}",
    )


# ----------------------------------------------------------------------------------------------
# Rendering.


def static_root() -> Path:
    return Path(current_app.static_folder or "static").resolve()


def make_url_fetcher(root: Path) -> Any:
    """A WeasyPrint URL fetcher that reads files under `root` (our static/) and nothing else.

    NOTE: everything else (http, https, data, ftp, file paths outside static/, `..` tricks) is
    refused, so text that ends up in a PDF can never make the server fetch a URL or read a file.
    """
    from weasyprint.urls import URLFetcher, URLFetcherResponse

    class StaticFilesOnly(URLFetcher):
        def __init__(self) -> None:
            super().__init__(allowed_protocols=("file",), allow_redirects=False)
            self.refused: list[str] = []
            self.served: list[str] = []

        def fetch(self, url: str, headers: Any = None) -> Any:
            path = _static_path(root, url)
            if path is None:
                self.refused.append(url)
                raise ValueError(f"refused to fetch {url[:200]!r}: not one of our static files")
            self.served.append(url)
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return URLFetcherResponse(
                path.as_uri(), body=path.read_bytes(), headers={"Content-Type": content_type}
            )

    return StaticFilesOnly()


def _static_path(root: Path, url: str) -> Path | None:
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    path = Path(unquote(parts.path)).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def render_pdf(
    template: str,
    *,
    page_size: PageSize,
    branding: Branding | None = None,
    fetcher: Any = None,
    **context: Any,
) -> bytes:
    """Render `templates/pdf/<version>/<template>` with pre-formatted context into PDF bytes."""
    html = render_template(
        f"pdf/{TEMPLATE_VERSION}/{template}",
        page_size="letter" if page_size == PageSize.LETTER else "A4",
        brand=branding or branding_from_config(current_app.config),
        **context,
    )
    return html_to_pdf(html, fetcher=fetcher)


def html_to_pdf(html: str, *, fetcher: Any = None) -> bytes:
    """HTML to PDF bytes; relative URLs resolve inside static/, and only there."""
    from weasyprint import HTML

    root = static_root()
    font_config, stylesheet = _compiled_stylesheet(root)
    document = HTML(
        string=html, base_url=root.as_uri() + "/", url_fetcher=fetcher or make_url_fetcher(root)
    )
    return document.write_pdf(stylesheets=[stylesheet], font_config=font_config)


_compiled = threading.local()
# NOTE: drop the cached fonts before the interpreter tears down the modules their finaliser uses.
atexit.register(lambda: _compiled.__dict__.clear())


def _compiled_stylesheet(root: Path) -> tuple[Any, Any]:
    """The shared PDF stylesheet and its fonts, parsed once per thread.

    NOTE: parsing the stylesheet and loading the @font-face files took about a third of each
    render; a FontConfiguration is not thread-safe, hence one per thread (one per sync worker).
    """
    source = Path(current_app.template_folder or "templates") / "pdf" / TEMPLATE_VERSION / "pdf.css"
    key = (str(root), str(source), source.stat().st_mtime_ns)
    cached = getattr(_compiled, "stylesheet", None)
    if cached is None or cached[0] != key:
        from weasyprint import CSS
        from weasyprint.text.fonts import FontConfiguration

        font_config = FontConfiguration()
        stylesheet = CSS(
            string=source.read_text(encoding="utf-8"),
            base_url=root.as_uri() + "/",
            url_fetcher=make_url_fetcher(root),
            font_config=font_config,
        )
        cached = (key, font_config, stylesheet)
        _compiled.stylesheet = cached
    return cached[1], cached[2]


def invoice_pdf(invoice: Invoice, *, page_size: PageSize, pay_url: str = "") -> bytes:
    """The invoice PDF as issued, in the buyer's locale (the account's at finalization)."""
    account = invoice.account
    view = invoice_view(
        invoice,
        locale=account.locale,
        timezone=account.timezone,
        thank_you=current_app.config.get("THANK_YOU_NOTE", ""),
        pay_url=pay_url,
    )
    return render_pdf("invoice.html", page_size=page_size, doc=view)


def invoice_file_name(number: str) -> str:
    """A server-built download name: only letters, digits and dashes survive."""
    return f"invoice-{safe_file_part(number)}.pdf"


def safe_file_part(text: str) -> str:
    """Only letters, digits, dashes and underscores go into a download's file name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "document"


def receipt_pdf(account: Account, receipt: Receipt, *, page_size: PageSize) -> bytes:
    view = receipt_view(
        receipt.payment,
        account,
        [(number, amount.minor) for number, amount in receipt.invoices],
        seller=current_app.config.get("SELLER", {}),
        thank_you=current_app.config.get("THANK_YOU_NOTE", ""),
    )
    return render_pdf("receipt.html", page_size=page_size, doc=view)


def statement_pdf(account: Account, view: StatementView, *, page_size: PageSize) -> bytes:
    return render_pdf(
        "statement.html", page_size=page_size, doc=statement_document_view(account, view)
    )


def pdf_download(
    content: bytes, file_name: str, *, etag: str | None = None, max_age: int = 0
) -> Response:
    """A PDF as an attachment under a server-built name; cacheable only by the person's browser."""
    response = Response(content, mimetype="application/pdf")
    response.headers["Content-Disposition"] = f'attachment; filename="{file_name}"'
    if etag:
        response.set_etag(etag)
        response.headers["Cache-Control"] = f"private, max-age={max_age}"
    else:
        response.headers["Cache-Control"] = "private, no-store"
    return response


def statement_pdf_response(account: Account, view: StatementView) -> Response:
    """`GET /statements?format=pdf`: the statements route calls this with its view model."""
    size = parse_page_size(request.args.get("size"), account.country)
    content = statement_pdf(account, view, page_size=size)
    prefix = safe_file_part(account.invoice_prefix)
    name = f"statement-{prefix}-{view.period.start.isoformat()}-to-{view.period.end.isoformat()}"
    return pdf_download(content, f"{name}.pdf")


def receipt_pdf_response(account: Account, receipt: Receipt) -> Response:
    """`GET /payments/<public_id>/pdf` for a payment already loaded through the account."""
    size = parse_page_size(request.args.get("size"), account.country)
    content = receipt_pdf(account, receipt, page_size=size)
    paid_on = receipt.payment.received_at.astimezone(ZoneInfo(account.timezone)).date()
    return pdf_download(
        content, f"receipt-{paid_on.isoformat()}-{safe_file_part(receipt.payment.public_id)}.pdf"
    )
