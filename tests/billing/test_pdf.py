"""PDF documents: locale formatting of the view model, rendering, page sizes, long invoices, the
URL fetcher that serves only our static files, input bounds, and the statement and receipt PDFs."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pypdf import PdfReader
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import clock as portal_clock
from portal.accounts.models import User
from portal.billing import pdf
from portal.billing.models import Invoice
from portal.clock import FrozenClock
from portal.demo import seed_demo
from portal.payments.models import Payment
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_user

SELLER = {"name": "Seller Ltd.", "address": "1 Street", "tax_id": "X1", "email": "s@example.com"}


def pdf_text(content: bytes) -> list[str]:
    """The text of each page, with non-breaking spaces as plain spaces."""
    reader = PdfReader(io.BytesIO(content))
    return [(page.extract_text() or "").replace("\xa0", " ") for page in reader.pages]


def demo_user(session: Session, email: str) -> User:
    seed_demo(session, SELLER)
    user = session.scalar(select(User).where(User.email == email))
    assert user is not None
    return user


def german(minor: int) -> str:
    """EUR in de_DE, written out by hand (independent of Babel): 123450 -> "1.234,50 €"."""
    euros, cents = divmod(minor, 100)
    return f"{euros:,}".replace(",", ".") + f",{cents:02d} €"


@pytest.fixture()
def in_request(app: Flask, session: Session) -> Iterator[None]:
    with app.test_request_context():
        yield


# --- The view model: plain strings in the account's locale ------------------------------------


def test_view_model_formats_usd_eur_in_german_and_jpy_without_decimals(
    session: Session, clock: FrozenClock
) -> None:
    usd = make_account(session, "USD", locale="en_US")
    eur = make_account(session, "EUR", locale="de_DE", country="DE")
    jpy = make_account(session, "JPY", locale="ja_JP", country="JP")
    cases = [
        (make_invoice(session, usd, [123450]), "$1,234.50"),
        (make_invoice(session, eur, [123450]), "1.234,50\xa0€"),
        # NOTE: the pages' formatter (portal.formatting): CLDR's full-width yen for ja_JP.
        (make_invoice(session, jpy, [12345]), "\uffe512,345"),
    ]
    for invoice, total in cases:
        account = invoice.account
        view = pdf.invoice_view(invoice, locale=account.locale, timezone=account.timezone)
        assert view.totals[-1].value == total
        assert view.headline.startswith(total)
        assert all(isinstance(v, str) for v in (view.issue_date, view.due_date, view.footer))
    eur_view = pdf.invoice_view(cases[1][0], locale="de_DE", timezone="UTC")
    assert eur_view.issue_date == "21.11.2026"
    assert "\u00a5" not in pdf.invoice_view(cases[2][0], locale="ja_JP", timezone="UTC").headline


def test_view_model_shows_tax_per_rate_and_discounts(session: Session, clock: FrozenClock) -> None:
    from portal.billing import services
    from portal.billing.models import LineKind

    account = make_account(session, "EUR", locale="de_DE")
    invoice = services.create_draft_invoice(
        session,
        account,
        [
            services.LineInput("Consulting", 10000, tax_rate_bp=1900, tax_name="VAT 19%"),
            services.LineInput("Books", 5000, tax_rate_bp=700, tax_name="VAT"),
            services.LineInput("Loyalty", 1000, kind=LineKind.DISCOUNT),
        ],
    )
    services.finalize_invoice(session, invoice, seller=SELLER)
    view = pdf.invoice_view(invoice, locale="de_DE", timezone="UTC")
    labels = {row.label: row.value for row in view.totals}
    assert labels["Discount"] == "\u221210,00\xa0€"  # a real minus sign, as on the pages
    assert labels["VAT 19% on 100,00\xa0€"] == "19,00\xa0€"
    assert labels["VAT 7% on 50,00\xa0€"] == "3,50\xa0€"
    assert labels["Amount due"] == "162,50\xa0€"
    assert view.lines[2].is_discount


def test_a_draft_has_no_pdf_view(session: Session, clock: FrozenClock) -> None:
    draft = make_invoice(session, make_account(session), finalize=False)
    with pytest.raises(ValueError):
        pdf.invoice_view(draft, locale="en_US", timezone="UTC")


def test_input_is_bounded_before_rendering(
    session: Session, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pdf, "MAX_INVOICE_LINES", 5)
    invoice = make_invoice(session, make_account(session), [100] * 6)
    with pytest.raises(pdf.DocumentTooLarge, match="at most 5"):
        pdf.invoice_view(invoice, locale="en_US", timezone="UTC")


def test_page_size_parsing() -> None:
    assert pdf.parse_page_size(None, "US") is pdf.PageSize.LETTER
    assert pdf.parse_page_size("", "DE") is pdf.PageSize.A4
    assert pdf.parse_page_size("letter", "DE") is pdf.PageSize.LETTER
    assert pdf.parse_page_size("A4", "US") is pdf.PageSize.A4
    with pytest.raises(pdf.ValidationFailed):
        pdf.parse_page_size("tabloid", "US")


def test_brand_colour_must_be_a_plain_hex_colour() -> None:
    assert pdf.branding_from_config({"BRAND_COLOR": "#0a7"}).color == "#0a7"
    hostile = "red; } @import url(http://example.com/x.css); {"
    assert pdf.branding_from_config({"BRAND_COLOR": hostile}).color == "#4338ca"


# --- The URL fetcher ---------------------------------------------------------------------------


def test_url_fetcher_serves_static_files_and_refuses_everything_else(app: Flask) -> None:
    root = Path(app.static_folder or "").resolve()
    fetcher = pdf.make_url_fetcher(root)
    logo = fetcher.fetch((root / "img" / "logo.svg").as_uri())
    assert logo.read().startswith(b"<svg")
    for url in (
        "http://example.com/x.png",
        "https://example.com/x.css",
        "ftp://example.com/x",
        "data:image/png;base64,AAAA",
        "file:///etc/passwd",
        (root / ".." / "pyproject.toml").as_uri(),
        root.as_uri() + "/../portal/config.py",
        "file://evil.example.com" + (root / "img" / "logo.svg").as_posix(),
    ):
        with pytest.raises(ValueError):
            fetcher.fetch(url)
    assert len(fetcher.refused) == 8


def test_rendering_never_fetches_anything_outside_static(
    app: Flask, in_request: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.request

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("WeasyPrint tried to open a URL")

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", no_network)
    root = Path(app.static_folder or "").resolve()
    fetcher = pdf.make_url_fetcher(root)
    html = (
        '<html><head><link rel="stylesheet" href="https://example.com/x.css"></head><body>'
        '<img src="http://example.com/x.png"><img src="file:///etc/hostname">'
        '<img src="img/logo.svg"><p>Hello</p></body></html>'
    )
    content = pdf.html_to_pdf(html, fetcher=fetcher)
    assert content.startswith(b"%PDF")
    assert set(fetcher.refused) == {
        "https://example.com/x.css",
        "http://example.com/x.png",
        "file:///etc/hostname",
    }
    assert [Path(u).name for u in fetcher.served] == ["logo.svg"]


def test_markup_in_invoice_text_is_printed_not_fetched(
    session: Session, clock: FrozenClock, in_request: None, app: Flask
) -> None:
    account = make_account(session, name='Evil <img src="http://example.com/x.png"> Corp')
    invoice = make_invoice(session, account)
    invoice.lines[0].description = '<img src="http://example.com/y.png"> Consulting'
    view = pdf.invoice_view(invoice, locale="en_US", timezone="UTC")
    fetcher = pdf.make_url_fetcher(Path(app.static_folder or "").resolve())
    content = pdf.render_pdf("invoice.html", page_size=pdf.PageSize.A4, doc=view, fetcher=fetcher)
    assert fetcher.refused == []
    assert '<img src="http://example.com/y.png"> Consulting' in pdf_text(content)[0]


# --- Rendering ---------------------------------------------------------------------------------


def test_invoice_pdf_of_a_german_account(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    login_as(client, demo_user(session, "grace@example.com"))
    invoice = session.scalar(select(Invoice).where(Invoice.number == "HCG-0004"))
    assert invoice is not None
    response = client.get("/invoices/HCG-0004/pdf")
    assert response.status_code == 200
    assert response.mimetype == "application/pdf"
    content = response.get_data()
    assert content.startswith(b"%PDF")
    reader = PdfReader(io.BytesIO(content))
    assert len(reader.pages) == 1
    assert round(float(reader.pages[0].mediabox.width)) == 595  # A4 for a German buyer
    text = pdf_text(content)[0]
    assert "HCG-0004" in text
    assert german(invoice.total_minor) in text
    assert "Page 1 of 1" in text
    assert "Hopper Consulting GmbH" in text


def test_invoice_pdf_in_yen_has_no_decimals(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    login_as(client, demo_user(session, "kenji@example.com"))
    invoice = session.scalar(select(Invoice).where(Invoice.number == "KF-0003"))
    assert invoice is not None
    text = pdf_text(client.get("/invoices/KF-0003/pdf").get_data())[0]
    assert "KF-0003" in text
    # The same sign as the invoice page prints, drawn by the one-glyph Portal Yen font.
    assert f"\uffe5{invoice.total_minor:,}" in text
    page = client.get("/invoices/KF-0003").get_data(as_text=True)
    assert f"\uffe5{invoice.total_minor:,}" in page
    assert not re.search(r"[¥\uffe5][\d,]+\.\d", text)


def test_us_buyers_get_letter_and_anyone_can_ask_for_a4(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    login_as(client, demo_user(session, "ada@example.com"))
    letter = PdfReader(io.BytesIO(client.get("/invoices/ALS-0011/pdf").get_data())).pages[0]
    a4 = PdfReader(io.BytesIO(client.get("/invoices/ALS-0011/pdf?size=a4").get_data())).pages[0]
    assert (round(float(letter.mediabox.width)), round(float(letter.mediabox.height))) == (612, 792)
    assert (round(float(a4.mediabox.width)), round(float(a4.mediabox.height))) == (595, 842)
    bad = client.get("/invoices/ALS-0011/pdf?size=tabloid")
    assert bad.status_code == 422
    assert "A4 or Letter" in bad.get_data(as_text=True)


def test_a_long_invoice_spans_pages_with_the_table_header_on_each(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    account = make_account(session, "USD", country="US")
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, [1000 + n for n in range(60)])
    login_as(client, user)
    pages = pdf_text(client.get(f"/invoices/{invoice.number}/pdf").get_data())
    assert len(pages) >= 2
    for number, text in enumerate(pages, start=1):
        assert "DESCRIPTION" in text and "AMOUNT" in text  # the repeated <thead>
        assert f"Page {number} of {len(pages)}" in text
    everything = "\n".join(pages)
    assert all(f"Item {n}" in everything for n in (1, 30, 60))


def test_a_too_long_invoice_gets_a_clear_message(
    client: FlaskClient, session: Session, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pdf, "MAX_INVOICE_LINES", 3)
    account = make_account(session)
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, [100] * 4)
    login_as(client, user)
    response = client.get(f"/invoices/{invoice.number}/pdf")
    assert response.status_code == 422
    assert "at most 3" in response.get_data(as_text=True)


# --- Statement and receipt ---------------------------------------------------------------------


def test_statement_pdf(client: FlaskClient, session: Session, clock: FrozenClock) -> None:
    login_as(client, demo_user(session, "ada@example.com"))
    response = client.get("/statements?period=this_year&format=pdf")
    assert response.status_code == 200
    assert response.mimetype == "application/pdf"
    disposition = response.headers["Content-Disposition"]
    assert disposition == 'attachment; filename="statement-ALS-2026-01-01-to-2026-11-21.pdf"'
    text = "\n".join(pdf_text(response.get_data()))
    assert "Statement" in text and "Closing balance" in text
    assert "Invoice ALS-0011" in text
    assert "$150.00" in text  # what Ada owes at the end of the period
    assert "1–30 DAYS" in text  # the aging table


def test_statement_pdf_with_a_bad_period_is_a_clear_message(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    login_as(client, demo_user(session, "ada@example.com"))
    response = client.get("/statements?start=2026-05-01&end=2026-01-01&format=pdf")
    assert response.status_code == 422
    assert response.mimetype == "text/html"


def test_receipt_pdf(client: FlaskClient, session: Session, clock: FrozenClock) -> None:
    user = demo_user(session, "grace@example.com")
    login_as(client, user)
    payment = session.scalars(
        select(Payment).where(Payment.currency == "EUR").order_by(Payment.received_at)
    ).first()
    assert payment is not None
    response = client.get(f"/payments/{payment.public_id}/pdf")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"].startswith('attachment; filename="receipt-')
    text = pdf_text(response.get_data())[0]
    assert "Receipt" in text and "Invoice HCG-0001" in text
    assert german(payment.amount_minor) in text
    assert client.get("/payments/not-a-payment/pdf").status_code == 404


def test_a_statement_too_long_for_a_pdf_points_to_the_csv(
    client: FlaskClient, session: Session, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pdf, "MAX_STATEMENT_ENTRIES", 2)
    login_as(client, demo_user(session, "ada@example.com"))
    response = client.get("/statements?period=this_year&format=pdf")
    assert response.status_code == 422
    assert "download it as CSV" in response.get_data(as_text=True)


# --- The invoice as it stands: paid, partly paid, void (issue 9, item 5) -----------------------


def _pay(session: Session, invoice: Invoice, minor: int, method: str = "Visa ·4242") -> None:
    from portal.billing import services
    from portal.billing.money import Money

    services.record_payment(
        session,
        invoice.account,
        Money(minor, invoice.currency),
        [(invoice, Money(minor, invoice.currency))],
        received_at=portal_clock.now(),
        method_description=method,
    )


def test_a_paid_invoice_pdf_says_paid_with_date_and_method_and_no_pay_link(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    from portal.billing.models import InvoiceDocument

    account = make_account(session, "USD", country="US")
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, [7500])
    login_as(client, user)
    before = client.get(f"/invoices/{invoice.number}/pdf")
    unpaid = pdf_text(before.get_data())[0]
    assert "$75.00 due" in unpaid and "Pay online" in unpaid
    assert "PAID" not in unpaid

    _pay(session, invoice, 7500)
    after = client.get(f"/invoices/{invoice.number}/pdf")
    assert after.status_code == 200, after.get_data(as_text=True)[-3000:]
    paid = pdf_text(after.get_data())[0]
    assert "PAID" in paid and "Paid in full" in paid
    assert "Paid on Nov 21, 2026 with Visa ·4242." in paid
    assert "Pay online" not in paid
    assert "$75.00 due" not in paid
    assert re.search(r"Amount due\s*\$0\.00", paid)
    assert re.search(
        r"Paid Nov 21, 2026 with Visa ·4242, receipt\s+RCT-2026-\d{5}\s*−\$75\.00", paid
    ), paid
    # The stored copy is keyed by what it prints: a new key, a new row, a new ETag.
    keys = session.scalars(
        select(InvoiceDocument.template_version).where(InvoiceDocument.invoice_id == invoice.id)
    ).all()
    assert len(keys) == 2 and len(set(keys)) == 2
    assert all(key.startswith(pdf.TEMPLATE_VERSION + "-") and len(key) <= 16 for key in keys)
    assert before.headers["ETag"] != after.headers["ETag"]
    # Browsers revalidate (the same URL now says something else), never keep the unpaid copy.
    assert "max-age=0" in after.headers["Cache-Control"]


def test_a_partly_paid_and_credited_invoice_lists_what_was_applied(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    from portal.billing import services
    from portal.billing.money import Money

    account = make_account(session, "EUR", locale="de_DE", country="DE")
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, [10000])
    services.issue_credit_note(session, invoice, Money(1500, "EUR"), reason="goodwill")
    _pay(session, invoice, 2500, method="Bank transfer")
    login_as(client, user)
    text = pdf_text(client.get(f"/invoices/{invoice.number}/pdf").get_data())[0]
    assert "PARTLY PAID" in text
    assert "60,00 € due" in text and "Pay online" in text
    assert "40,00 € of 100,00 € already paid or credited." in text
    assert "−25,00 €" in text and "−15,00 €" in text
    assert re.search(r"Credit note \S+, 21\.11\.2026", text)


def test_a_void_invoice_pdf_says_void_and_nothing_is_owed(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    from portal.billing import services

    account = make_account(session, "USD", country="US")
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, [7500])
    services.void_invoice(session, invoice)
    login_as(client, user)
    text = pdf_text(client.get(f"/invoices/{invoice.number}/pdf").get_data())[0]
    assert "VOID" in text
    assert "This invoice was cancelled on Nov 21, 2026. Nothing is owed." in text
    assert "Pay online" not in text and "$75.00 due" not in text


# --- One formatting of each thing (issue 9, item 9) --------------------------------------------


def test_the_tax_rate_is_printed_once() -> None:
    assert pdf.tax_label("VAT 19%", 1900, "en_US") == "VAT 19%"
    assert pdf.tax_label("VAT", 1900, "en_US") == "VAT 19%"
    assert pdf.tax_label("", 700, "en_US") == "Tax 7%"
    assert pdf.tax_label("MwSt. 19 %", 1900, "de_DE") == "MwSt. 19 %"
    assert pdf.tax_label("USt", 1900, "de_DE") == "USt 19%"
    assert pdf.tax_label("GST 5%", 1950, "en_US") == "GST 5% 19.5%"  # 5 is not 19.5
    assert pdf.tax_label("VAT 19%", 1950, "en_US") == "VAT 19% 19.5%"


def test_the_invoice_page_prints_the_tax_rate_once(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    from portal.billing import services

    account = make_account(session, "EUR", locale="de_DE")
    user = make_user(session, account=account)
    invoice = services.create_draft_invoice(
        session,
        account,
        [services.LineInput("Consulting", 10000, tax_rate_bp=1900, tax_name="VAT 19%")],
    )
    services.finalize_invoice(session, invoice, seller=SELLER)
    login_as(client, user)
    page = client.get(f"/invoices/{invoice.number}").get_data(as_text=True)
    assert "VAT 19%" in page
    assert "(19%)" not in page and "VAT 19% 19" not in page


def test_questions_reply_to_this_email_is_printed_only_in_emails(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    account = make_account(session, "USD", country="US")
    user = make_user(session, account=account)
    invoice = make_invoice(session, account, [7500])
    login_as(client, user)
    page = client.get(f"/invoices/{invoice.number}").get_data(as_text=True)
    text = pdf_text(client.get(f"/invoices/{invoice.number}/pdf").get_data())[0]
    for printed in (page, text):
        assert "reply to this email" not in printed
        assert "Thank you for your business." in printed
    assert "Questions? Write to billing@example.com." in text  # a PDF has no page footer


def test_the_yen_sign_is_drawn_by_a_font_that_has_it(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    login_as(client, demo_user(session, "kenji@example.com"))
    reader = PdfReader(io.BytesIO(client.get("/invoices/KF-0003/pdf").get_data()))
    fonts = {
        str(font.get_object()["/BaseFont"])
        for font in reader.pages[0]["/Resources"]["/Font"].values()
    }
    assert any("Portal-Yen" in name for name in fonts), fonts


def test_statement_pdf_has_the_seller_and_real_minus_signs(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    login_as(client, demo_user(session, "ada@example.com"))
    text = "\n".join(pdf_text(client.get("/statements?period=this_year&format=pdf").get_data()))
    assert "FROM" in text and "Northwind Cloud Ltd." in text
    assert re.search(r"Payments and credits\s*−\$\d", text)
    assert not re.search(r"(?<![\w])-\$\d", text)


def test_receipt_pdf_carries_the_receipt_number(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    login_as(client, demo_user(session, "grace@example.com"))
    payment = session.scalars(
        select(Payment).where(Payment.currency == "EUR").order_by(Payment.received_at)
    ).first()
    assert payment is not None and payment.receipt_number is not None
    response = client.get(f"/payments/{payment.public_id}/pdf")
    text = pdf_text(response.get_data())[0]
    assert f"Receipt number {payment.receipt_number}" in text
    assert payment.receipt_number in response.headers["Content-Disposition"]
    assert "PAID" in text
