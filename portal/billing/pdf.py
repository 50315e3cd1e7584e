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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from babel.numbers import format_decimal, format_percent
from flask import Response, current_app, render_template, request
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from markupsafe import Markup

from portal.billing.models import Invoice, InvoiceStatus, LineKind
from portal.errors import ValidationFailed
from portal.formatting import DATE_STYLE, money_minor
from portal.formatting import day as format_day

if TYPE_CHECKING:
    from portal.accounts.models import Account
    from portal.billing.statements import StatementView
    from portal.payments.models import Payment
    from portal.payments.queries import Receipt

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
    raise ValidationFailed(
        _("Choose a page size of A4 or Letter."), errors={"size": _("A4 or Letter")}
    )


class DocumentTooLarge(ValidationFailed):
    title = lazy_gettext("This document is too large for a PDF")


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
class PaymentFact:
    """A payment applied to an invoice, as documents.py reads it (plain values, no model)."""

    received_at: datetime
    method: str
    receipt_number: str
    amount_minor: int


@dataclass(frozen=True)
class CreditFact:
    """A credit note against an invoice."""

    number: str
    issued_at: datetime
    amount_minor: int


class InvoiceState(StrEnum):
    """What the PDF says about the invoice now (the web page says the same)."""

    UNPAID = "unpaid"
    PARTLY_PAID = "partly_paid"
    PAID = "paid"
    VOID = "void"


@dataclass(frozen=True)
class InvoiceDocumentView:
    number: str
    issue_date: str
    due_date: str
    state: InvoiceState
    stamp: str  # "PAID", "PARTLY PAID", "VOID", or "" while nothing is paid
    headline: str  # "$75.00 due Dec 11, 2026" or "Paid in full"
    status_note: str  # "Paid on Dec 1, 2026 with Visa ending in 4242 (receipt RCT-2026-00001)."
    meta: tuple[Row, ...]
    seller: Party
    buyer: Party
    lines: tuple[InvoiceLineView, ...]
    totals: tuple[Row, ...]
    settlements: tuple[Row, ...]  # payments and credit notes applied, then what is left
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
    seller: Party
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


def document_thank_you(seller: dict[str, Any] | None) -> str:
    """The closing line of pages and PDFs.

    NOTE: THANK_YOU_NOTE says "Questions? Just reply to this email.": true in an email only, so
    pages and PDFs print their own line and name where to write instead.
    """
    email = str((seller or {}).get("email") or "")
    if email:
        return _("Thank you for your business. Questions? Write to %(email)s.", email=email)
    return _("Thank you for your business.")


# ----------------------------------------------------------------------------------------------
# Formatting in the account's locale: the pages' own formatter (portal.formatting).

MINUS = "\u2212"


class Formatter:
    """Money, dates, quantities and rates in one locale, exactly as the pages print them."""

    def __init__(self, locale: str, timezone: str = "UTC") -> None:
        self.locale = locale or "en_US"
        self.tz = ZoneInfo(timezone or "UTC")

    def money(self, minor: int, currency: str) -> str:
        """An amount; a negative one with a real minus sign (U+2212), as the pages write it."""
        if minor < 0:
            return MINUS + money_minor(-minor, currency, self.locale)
        return money_minor(minor, currency, self.locale)

    def day(self, value: date | datetime | None) -> str:
        if value is None:
            return ""
        if isinstance(value, datetime):
            value = value.astimezone(self.tz).date()
        # NOTE: the pages' one date style (portal.formatting.DATE_STYLE, "medium"): the long
        # forms of some locales need glyphs outside our font anyway.
        return format_day(value, DATE_STYLE, self.locale)

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

    def tax_label(self, name: str, basis_points: int) -> str:
        """ "VAT 19%": the rate once, whether or not the tax's name already carries it."""
        return tax_label(name, basis_points, self.locale)


def tax_label(name: str, basis_points: int, locale: str) -> str:
    """The name of a tax with its rate, printed once ("VAT 19%", never "VAT 19% (19%)").

    One definition for the invoice page and the PDF.
    """
    name = (name or "").strip() or _("Tax")
    if not basis_points:
        return name
    percent = Formatter(locale).rate(basis_points)
    number = "".join(ch for ch in percent if ch.isdigit() or ch in ".,")
    if re.search(r"(?<![\d.,])" + re.escape(number) + r"(?![\d.,])", name):
        return name
    return f"{name} {percent}"


def _party(snapshot: dict[str, Any] | None, fallback_name: str = "") -> Party:
    snapshot = snapshot or {}
    address = snapshot.get("address") or ()
    if snapshot.get("country"):
        from portal.formatting import postal_address

        address = postal_address(snapshot)
    elif isinstance(address, str):
        address = address.splitlines()
    return Party(
        name=str(snapshot.get("name") or fallback_name),
        address=tuple(str(part) for part in address if str(part).strip()),
        email=str(snapshot.get("email") or ""),
        tax_id=str(snapshot.get("tax_id") or ""),
    )


def invoice_state(invoice: Invoice) -> InvoiceState:
    if invoice.status == InvoiceStatus.VOID:
        return InvoiceState.VOID
    if invoice.status == InvoiceStatus.PAID or (
        invoice.amount_due_minor == 0 and invoice.total_minor > 0
    ):
        return InvoiceState.PAID
    if invoice.amount_paid_minor or invoice.amount_credited_minor:
        return InvoiceState.PARTLY_PAID
    return InvoiceState.UNPAID


def invoice_view(
    invoice: Invoice,
    *,
    locale: str,
    timezone: str,
    thank_you: str = "",
    pay_url: str = "",
    payments: Sequence[PaymentFact] = (),
    credit_notes: Sequence[CreditFact] = (),
) -> InvoiceDocumentView:
    """The invoice as issued (lines, discounts, tax per rate, totals) and as it stands now
    (paid, partly paid or void, with the payments and credit notes applied), pre-formatted.

    NOTE: the stored PDF is keyed by this view (portal/billing/documents.py), so a payment, a
    credit note or a void gives the invoice a new PDF rather than leaving an "amount due" one.
    """
    if invoice.number is None:
        raise ValueError("a draft invoice has no PDF")
    if len(invoice.lines) > MAX_INVOICE_LINES:
        raise DocumentTooLarge(
            _(
                "Invoice %(number)s has %(count)s lines; a PDF holds at most %(limit)s. "
                "Please contact us for a copy.",
                number=invoice.number,
                count=len(invoice.lines),
                limit=MAX_INVOICE_LINES,
            )
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
    totals = [Row(_("Subtotal"), fmt.money(invoice.subtotal_minor, currency))]
    if invoice.discount_minor:
        totals.append(Row(_("Discount"), fmt.money(-invoice.discount_minor, currency)))
    for (name, rate), (base, tax) in _tax_by_rate(invoice).items():
        label = _(
            "%(tax)s on %(amount)s",
            tax=fmt.tax_label(name, rate),
            amount=fmt.money(base, currency),
        )
        totals.append(Row(label, fmt.money(tax, currency)))
    total = fmt.money(invoice.total_minor, currency)
    state = invoice_state(invoice)
    due_minor = invoice.amount_due_minor
    due = fmt.money(due_minor, currency)
    due_date = fmt.day(invoice.due_date)
    totals.append(Row(_("Total"), total))
    if state == InvoiceState.UNPAID:
        totals.append(Row(_("Amount due"), due, strong=True))

    settlements: list[Row] = []
    for payment in payments:
        when = fmt.day(payment.received_at)
        label = (
            _("Paid %(date)s with %(method)s", date=when, method=payment.method)
            if payment.method
            else _("Paid %(date)s", date=when)
        )
        if payment.receipt_number:
            label = _(
                "%(payment)s, receipt %(receipt)s", payment=label, receipt=payment.receipt_number
            )
        settlements.append(Row(label, fmt.money(-payment.amount_minor, currency)))
    for note in credit_notes:
        settlements.append(
            Row(
                _(
                    "Credit note %(number)s, %(date)s",
                    number=note.number,
                    date=fmt.day(note.issued_at),
                ),
                fmt.money(-note.amount_minor, currency),
            )
        )
    if state != InvoiceState.UNPAID:
        settlements.append(Row(_("Amount due"), due, strong=True))

    last_payment = payments[-1] if payments else None
    if state == InvoiceState.PAID:
        stamp = _("PAID")
        headline = _("Paid in full")
        paid_on = fmt.day(invoice.paid_at or (last_payment.received_at if last_payment else None))
        if last_payment and last_payment.method:
            status_note = _(
                "Paid on %(date)s with %(method)s.", date=paid_on, method=last_payment.method
            )
        elif last_payment:
            status_note = _("Paid on %(date)s.", date=paid_on)
        elif credit_notes:
            status_note = _("Settled by credit note on %(date)s.", date=paid_on)
        else:
            status_note = _("Settled on %(date)s.", date=paid_on) if paid_on else ""
        footer = _("%(number)s · paid in full", number=invoice.number)
    elif state == InvoiceState.VOID:
        stamp = _("VOID")
        headline = _("Voided")
        voided = fmt.day(invoice.voided_at)
        status_note = (
            _("This invoice was cancelled on %(date)s. Nothing is owed.", date=voided)
            if voided
            else _("This invoice was cancelled. Nothing is owed.")
        )
        footer = _("%(number)s · void", number=invoice.number)
    else:
        stamp = _("PARTLY PAID") if state == InvoiceState.PARTLY_PAID else ""
        headline = _("%(amount)s due %(date)s", amount=due, date=due_date) if due_date else due
        status_note = (
            _(
                "%(paid)s of %(total)s already paid or credited.",
                paid=fmt.money(invoice.amount_paid_minor + invoice.amount_credited_minor, currency),
                total=total,
            )
            if state == InvoiceState.PARTLY_PAID
            else ""
        )
        footer = (
            _(
                "%(number)s · %(amount)s due %(date)s",
                number=invoice.number,
                amount=due,
                date=due_date,
            )
            if due_date
            else invoice.number
        )
    meta = [
        Row(_("Invoice number"), invoice.number),
        Row(_("Date of issue"), fmt.day(invoice.issue_date)),
        Row(_("Date due"), due_date),
    ]
    if invoice.period_start and invoice.period_end:
        meta.append(Row(_("Service period"), fmt.period(invoice.period_start, invoice.period_end)))
    if stamp:
        meta.append(Row(_("Status"), stamp))
    payable = invoice.status in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE) and due_minor > 0
    return InvoiceDocumentView(
        number=invoice.number,
        issue_date=fmt.day(invoice.issue_date),
        due_date=due_date,
        state=state,
        stamp=stamp,
        headline=headline,
        status_note=status_note,
        meta=tuple(meta),
        seller=_party(invoice.seller),
        buyer=_party(invoice.buyer),
        lines=lines,
        totals=tuple(totals),
        settlements=tuple(settlements),
        memo=invoice.memo or "",
        thank_you=thank_you,
        pay_url=pay_url if payable else "",
        footer=footer,
    )


def _tax_by_rate(invoice: Invoice) -> dict[tuple[str, int], tuple[int, int]]:
    groups: dict[tuple[str, int], tuple[int, int]] = {}
    for line in invoice.lines:
        if not line.tax_rate_bp and not line.tax_minor:
            continue
        key = (line.tax_name, line.tax_rate_bp)
        base, tax = groups.get(key, (0, 0))
        groups[key] = (base + line.amount_minor, tax + line.tax_minor)
    return groups


def receipt_reference(payment: Payment) -> str:
    """The number a customer quotes: "RCT-2026-00042" (the public id only before it has one)."""
    return payment.receipt_number or payment.public_id


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
        raise DocumentTooLarge(_("This payment covers too many invoices for one PDF receipt."))
    fmt = Formatter(account.locale, account.timezone)
    currency = payment.currency
    paid = fmt.money(payment.amount_minor, currency)
    when = fmt.day(payment.received_at)
    reference = receipt_reference(payment)
    meta = [Row(_("Receipt number"), reference), Row(_("Date paid"), when)]
    if payment.method_description:
        meta.append(Row(_("Payment method"), payment.method_description))
    applied = sum(amount for _number, amount in items)
    rows = [
        ReceiptItemView(_("Invoice %(number)s", number=number), fmt.money(amount, currency))
        for number, amount in items
    ]
    if payment.amount_minor > applied:
        rows.append(
            ReceiptItemView(
                _("Credit on account"), fmt.money(payment.amount_minor - applied, currency)
            )
        )
    totals = [Row(_("Amount paid"), paid, strong=not payment.amount_refunded_minor)]
    if payment.amount_refunded_minor:
        totals.append(Row(_("Refunded"), fmt.money(-payment.amount_refunded_minor, currency)))
        net = payment.amount_minor - payment.amount_refunded_minor
        totals.append(Row(_("Net paid"), fmt.money(net, currency), strong=True))
    from portal.billing.services import buyer_snapshot

    return ReceiptDocumentView(
        reference=reference,
        headline=_("%(amount)s paid on %(date)s", amount=paid, date=when),
        meta=tuple(meta),
        seller=_party(seller),
        buyer=_party(buyer_snapshot(account)),
        items=tuple(rows),
        totals=tuple(totals),
        thank_you=thank_you,
        footer=_(
            "Receipt %(number)s · %(amount)s paid on %(date)s",
            number=reference,
            amount=paid,
            date=when,
        ),
    )


def statement_document_view(
    account: Account, view: StatementView, *, seller: dict[str, Any] | None = None
) -> StatementDocumentView:
    """The statement page's view model (portal/billing/statements.py) as PDF strings."""
    if len(view.rows) > MAX_STATEMENT_ENTRIES:
        raise DocumentTooLarge(
            _(
                "This statement has %(count)s entries; a PDF holds at most %(limit)s. "
                "Choose a shorter period, or download it as CSV.",
                count=format_decimal(len(view.rows), locale="en_US"),
                limit=format_decimal(MAX_STATEMENT_ENTRIES, locale="en_US"),
            )
        )
    fmt = Formatter(account.locale, account.timezone)
    currency = view.currency
    rows = tuple(
        StatementEntryView(
            date=fmt.day(row.on),
            description=row.description or _(row.kind_label),
            charges=fmt.money(row.amount.minor, currency) if row.amount.minor > 0 else "",
            credits=fmt.money(row.amount.minor, currency) if row.amount.minor < 0 else "",
            balance=fmt.money(row.balance.minor, currency),
        )
        for row in view.rows
    )
    span = fmt.period(view.period.start, view.period.end)
    summary = (
        Row(_("Opening balance"), fmt.money(view.opening.minor, currency)),
        Row(_("Charges"), fmt.money(view.charges.minor, currency)),
        Row(_("Payments and credits"), fmt.money(-view.credits.minor, currency)),
        Row(_("Closing balance"), fmt.money(view.closing.minor, currency), strong=True),
    )
    aging = tuple(
        Row(_(bucket.label), fmt.money(bucket.amount.minor, currency))
        for bucket in view.aging.buckets
    )
    from portal.billing.services import buyer_snapshot

    return StatementDocumentView(
        seller=_party(seller),
        account=_party(buyer_snapshot(account)),
        period=span,
        opening_date=fmt.day(view.period.start),
        opening_balance=fmt.money(view.opening.minor, currency),
        meta=(
            Row(_("Period"), span),
            Row(_("Currency"), currency),
            Row(_("Aging as of"), fmt.day(view.aging.as_of)),
        ),
        summary=summary,
        entries=rows,
        aging=aging,
        footer=_("Statement %(period)s · %(name)s", period=span, name=account.name),
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
        page_counter=page_counter_css(),
        **context,
    )
    return html_to_pdf(html, fetcher=fetcher)


def _css_string(text: str) -> str:
    """A CSS string literal: everything but plain letters, digits and spaces escaped."""
    escaped = "".join(ch if ch.isalnum() or ch == " " else f"\\{ord(ch):x} " for ch in text)
    return f'"{escaped}"'


def page_counter_css() -> Markup:
    """The translated "Page 1 of 2" as a CSS `content` value with the page counters in it."""
    marker = "\x00"
    page, pages = marker + "page" + marker, marker + "pages" + marker
    text = _("Page %(page)s of %(pages)s", page=page, pages=pages)
    parts = []
    for index, piece in enumerate(text.split(marker)):
        if index % 2:
            parts.append("counter(pages)" if piece == "pages" else "counter(page)")
        elif piece:
            parts.append(_css_string(piece))
    return Markup(" ".join(parts))


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


def invoice_document_view(
    invoice: Invoice,
    *,
    pay_url: str = "",
    payments: Sequence[PaymentFact] = (),
    credit_notes: Sequence[CreditFact] = (),
) -> InvoiceDocumentView:
    """The invoice's PDF view model in the buyer's locale and time zone."""
    account = invoice.account
    return invoice_view(
        invoice,
        locale=account.locale,
        timezone=account.timezone,
        thank_you=document_thank_you(invoice.seller),
        pay_url=pay_url,
        payments=payments,
        credit_notes=credit_notes,
    )


def render_invoice(view: InvoiceDocumentView, *, page_size: PageSize) -> bytes:
    return render_pdf("invoice.html", page_size=page_size, doc=view)


def invoice_pdf(
    invoice: Invoice,
    *,
    page_size: PageSize,
    pay_url: str = "",
    payments: Sequence[PaymentFact] = (),
    credit_notes: Sequence[CreditFact] = (),
) -> bytes:
    """The invoice PDF as it stands, in the buyer's locale."""
    view = invoice_document_view(
        invoice, pay_url=pay_url, payments=payments, credit_notes=credit_notes
    )
    return render_invoice(view, page_size=page_size)


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
        thank_you=document_thank_you(current_app.config.get("SELLER")),
    )
    return render_pdf("receipt.html", page_size=page_size, doc=view)


def statement_pdf(account: Account, view: StatementView, *, page_size: PageSize) -> bytes:
    doc = statement_document_view(account, view, seller=current_app.config.get("SELLER"))
    return render_pdf("statement.html", page_size=page_size, doc=doc)


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
    reference = safe_file_part(receipt_reference(receipt.payment))
    return pdf_download(content, f"receipt-{paid_on.isoformat()}-{reference}.pdf")
