"""Stored invoice PDFs: rendered once, served by content hash (ETag, 304), never for drafts or
other accounts; a lost race to store the same PDF ends with the stored row; the yearly ZIP."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pypdf import PdfReader
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import create_app
from portal.accounts.models import Account, User
from portal.billing import documents, pdf
from portal.billing.models import Invoice, InvoiceDocument
from portal.clock import FrozenClock
from portal.demo import seed_demo
from portal.extensions import db
from tests.conftest import drop_database, fresh_database, login_as, make_config, migrate_to_head
from tests.factories import make_account, make_invoice, make_user

SELLER = {"name": "Seller Ltd.", "address": "1 Street", "tax_id": "X1", "email": "s@example.com"}


def ada(session: Session) -> User:
    seed_demo(session, SELLER)
    user = session.scalar(select(User).where(User.email == "ada@example.com"))
    assert user is not None
    return user


def invoice_numbered(session: Session, number: str) -> Invoice:
    invoice = session.scalar(select(Invoice).where(Invoice.number == number))
    assert invoice is not None
    return invoice


def stored_rows(session: Session, invoice_id: int) -> int:
    return documents.count_invoice_documents(session, invoice_id)


def test_first_download_renders_and_stores_then_serves_the_stored_pdf(
    client: FlaskClient, session: Session, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    login_as(client, ada(session))
    invoice = invoice_numbered(session, "ALS-0011")
    assert stored_rows(session, invoice.id) == 0
    first = client.get("/invoices/ALS-0011/pdf")
    assert first.status_code == 200
    assert first.get_data().startswith(b"%PDF")
    assert stored_rows(session, invoice.id) == 1

    def must_not_render(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("a stored PDF was rendered again")

    monkeypatch.setattr(pdf, "invoice_pdf", must_not_render)
    second = client.get("/invoices/ALS-0011/pdf")
    assert second.status_code == 200
    assert second.get_data() == first.get_data()
    assert stored_rows(session, invoice.id) == 1


def test_etag_cache_control_304_and_file_name(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    login_as(client, ada(session))
    response = client.get("/invoices/ALS-0011/pdf")
    body = response.get_data()
    digest = hashlib.sha256(body).hexdigest()
    assert response.headers["ETag"] == f'"{digest}"'
    assert response.headers["Cache-Control"].startswith("private, max-age=")
    assert "no-store" not in response.headers["Cache-Control"]
    assert response.headers["Content-Disposition"] == (
        'attachment; filename="invoice-ALS-0011.pdf"'
    )
    stored = session.scalar(select(InvoiceDocument.content_hash))
    assert stored == digest

    again = client.get("/invoices/ALS-0011/pdf", headers={"If-None-Match": f'"{digest}"'})
    assert again.status_code == 304
    assert again.get_data() == b""
    assert again.headers["ETag"] == f'"{digest}"'
    stale = client.get("/invoices/ALS-0011/pdf", headers={"If-None-Match": '"something-else"'})
    assert stale.status_code == 200 and stale.get_data() == body


def test_each_page_size_is_stored_once(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    login_as(client, ada(session))
    invoice = invoice_numbered(session, "ALS-0012")
    letter = client.get("/invoices/ALS-0012/pdf?size=letter")
    a4 = client.get("/invoices/ALS-0012/pdf?size=a4")
    default = client.get("/invoices/ALS-0012/pdf")  # a US buyer: Letter
    assert letter.headers["ETag"] != a4.headers["ETag"]
    assert default.headers["ETag"] == letter.headers["ETag"]
    assert stored_rows(session, invoice.id) == 2


def test_drafts_and_other_accounts_invoices_have_no_pdf(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    mine = make_account(session)
    theirs = make_account(session)
    user = make_user(session, account=mine)
    draft = make_invoice(session, mine, finalize=False)
    foreign = make_invoice(session, theirs)
    login_as(client, user)
    assert client.get(f"/invoices/{foreign.number}/pdf").status_code == 404
    assert client.get(f"/invoices/{draft.public_id}/pdf").status_code == 404
    assert client.get("/invoices/NOPE-0001/pdf").status_code == 404
    assert client.get("/invoices/" + "X" * 60 + "/pdf").status_code == 404
    assert session.scalar(select(func.count()).select_from(InvoiceDocument)) == 0


def test_storing_a_document_someone_else_stored_first_returns_theirs(
    session: Session, clock: FrozenClock
) -> None:
    """The race of two first requests: both rendered, the second insert meets the unique key."""
    invoice = make_invoice(session, make_account(session))
    theirs = documents.store_invoice_document(
        session, invoice.id, pdf.PageSize.A4, b"%PDF-1.7 first"
    )
    ours = documents.store_invoice_document(session, invoice.id, pdf.PageSize.A4, b"%PDF-1.7 2nd")
    assert ours.id == theirs.id
    assert ours.content_hash == documents.content_hash(b"%PDF-1.7 first")
    assert documents.document_content(session, ours.id) == b"%PDF-1.7 first"
    assert stored_rows(session, invoice.id) == 1
    # The session is still usable: only the savepoint was rolled back.
    assert session.get(Invoice, invoice.id) is invoice


def test_a_request_that_loses_the_race_serves_the_stored_pdf(
    client: FlaskClient, session: Session, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    login_as(client, ada(session))
    invoice = invoice_numbered(session, "ALS-0011")
    first = client.get("/invoices/ALS-0011/pdf")
    # Another request has not seen the stored row yet when it looked, so it renders and stores.
    real_find = documents.find_invoice_document
    calls = {"n": 0}

    def stale_find(*args: object, **kwargs: object) -> documents.DocumentRef | None:
        calls["n"] += 1
        return None if calls["n"] == 1 else real_find(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(documents, "find_invoice_document", stale_find)
    second = client.get("/invoices/ALS-0011/pdf")
    assert second.status_code == 200
    assert second.headers["ETag"] == first.headers["ETag"]
    assert stored_rows(session, invoice.id) == 1


def test_refuses_to_store_what_is_not_a_pdf(session: Session, clock: FrozenClock) -> None:
    invoice = make_invoice(session, make_account(session))
    with pytest.raises(ValueError):
        documents.store_invoice_document(session, invoice.id, pdf.PageSize.A4, b"<html>")


# --- The yearly ZIP ----------------------------------------------------------------------------


def test_export_streams_a_zip_of_the_years_invoice_pdfs(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    login_as(client, ada(session))
    account = session.scalar(select(Account).where(Account.invoice_prefix == "ALS"))
    assert account is not None
    expected = sorted(
        f"invoice-{number}.pdf"
        for number in session.scalars(
            select(Invoice.number).where(
                Invoice.account_id == account.id,
                Invoice.number.is_not(None),
                func.extract("year", Invoice.issue_date) == 2026,
            )
        )
    )
    assert expected  # the demo has invoices this year
    response = client.get("/invoices/export?year=2026")
    assert response.status_code == 200
    assert response.is_streamed
    assert response.mimetype == "application/zip"
    assert response.headers["Content-Disposition"] == 'attachment; filename="invoices-ALS-2026.zip"'
    archive = zipfile.ZipFile(io.BytesIO(response.get_data()))
    assert archive.testzip() is None
    assert sorted(archive.namelist()) == expected
    for name in archive.namelist():
        content = archive.read(name)
        assert content.startswith(b"%PDF")
        assert name.removeprefix("invoice-").removesuffix(".pdf") in (
            PdfReader(io.BytesIO(content)).pages[0].extract_text()
        )
    # The export stored what it rendered: a later download serves the same bytes.
    single = client.get(f"/invoices/{expected[0][8:-4]}/pdf").get_data()
    assert single == archive.read(expected[0])


def test_export_of_a_year_without_invoices_says_so(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    login_as(client, ada(session))
    response = client.get("/invoices/export?year=2003")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "no invoices from 2003" in response.get_data(as_text=True)


@pytest.mark.parametrize("year", ["", "26", "twenty", "1999", "2999", "2026-01", "-2026"])
def test_export_with_a_bad_year_is_a_clear_message(
    client: FlaskClient, session: Session, clock: FrozenClock, year: str
) -> None:
    account = make_account(session)
    login_as(client, make_user(session, account=account))
    response = client.get(f"/invoices/export?year={year}")
    assert response.status_code == 422
    assert response.mimetype == "text/html"
    assert "year" in response.get_data(as_text=True)


# --- Real concurrency: first requests at the same moment ---------------------------------------

RACERS = 6


@pytest.mark.concurrency
def test_concurrent_first_downloads_all_succeed_and_store_one_row(
    backend: str, tmp_path: Path
) -> None:
    """Several people open a new invoice's PDF at once: every request gets the PDF, one row."""
    url = fresh_database(backend, tmp_path, "pdfrace")
    app = create_app(make_config(url))
    migrate_to_head(app)
    try:
        with app.app_context():
            account = make_account(db.session, "USD", country="US")
            user = make_user(db.session, account=account)
            invoice = make_invoice(db.session, account, [4200, 1300])
            db.session.commit()
            user_id, invoice_id, number = user.id, invoice.id, invoice.number
        # Sign in one after the other; only the downloads race.
        clients = []
        for _ in range(RACERS):
            with app.app_context():
                client = app.test_client()
                login_as(client, db.session.get(User, user_id))
                db.session.commit()
                db.session.remove()
            clients.append(client)
        start = threading.Barrier(RACERS, timeout=60)
        results: list[tuple[int, str]] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def download(client: FlaskClient) -> None:
            try:
                start.wait()
                response = client.get(f"/invoices/{number}/pdf")
                with lock:
                    results.append((response.status_code, response.headers.get("ETag", "")))
            except BaseException as error:  # noqa: BLE001 - reported by the assertion below
                with lock:
                    errors.append(error)

        threads = [threading.Thread(target=download, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        assert [status for status, _ in results] == [200] * RACERS
        assert len({etag for _, etag in results}) == 1
        with app.app_context():
            assert documents.count_invoice_documents(db.session, invoice_id) == 1
            db.session.remove()
            db.engine.dispose()
    finally:
        drop_database(url)


def test_export_sends_one_chunk_per_invoice_not_one_archive(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    account = make_account(session)
    login_as(client, make_user(session, account=account))
    for amount in (1000, 2000, 3000):
        make_invoice(session, account, [amount])
    response = client.get("/invoices/export?year=2026", buffered=False)
    chunks = [chunk for chunk in response.response if chunk]  # type: ignore[union-attr]
    response.close()
    assert len(chunks) >= 3
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert len(archive.namelist()) == 3


def test_export_refuses_before_streaming_when_an_invoice_is_too_long(
    client: FlaskClient, session: Session, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pdf, "MAX_INVOICE_LINES", 2)
    account = make_account(session)
    login_as(client, make_user(session, account=account))
    make_invoice(session, account, [100])
    long = make_invoice(session, account, [100, 200, 300])
    response = client.get("/invoices/export?year=2026")
    assert response.status_code == 422
    assert f"Invoice {long.number} is too long" in response.get_data(as_text=True)


def test_the_stored_pdf_is_keyed_by_what_it_prints(
    app: Flask, session: Session, clock: FrozenClock
) -> None:
    from portal.billing import services
    from portal.billing.money import Money
    from portal.billing.pdf import PageSize

    invoice = make_invoice(session, make_account(session), [7500])
    with app.test_request_context():
        session.commit()
        first = documents.stored_invoice_pdf(session, invoice, PageSize.A4)
        session.commit()
        again = documents.stored_invoice_pdf(session, invoice, PageSize.A4)
        session.commit()
        assert again.id == first.id  # unchanged: served from its row, not rendered again
        assert documents.count_invoice_documents(session, invoice.id) == 1
        services.record_payment(
            session,
            invoice.account,
            Money(7500, "USD"),
            [(invoice, Money(7500, "USD"))],
            received_at=clock(),
            method_description="Visa ·4242",
        )
        session.commit()
        paid = documents.stored_invoice_pdf(session, invoice, PageSize.A4)
        session.commit()
    assert paid.id != first.id and paid.content_hash != first.content_hash
    assert documents.count_invoice_documents(session, invoice.id) == 2


def _selects_of(client: FlaskClient, url: str, **headers: str) -> tuple[int, list[str]]:
    from tests.billing.test_routes import count_statements

    with count_statements() as statements:
        status = client.get(url, headers=headers).status_code
    return status, [s for s in statements if s.lstrip().upper().startswith("SELECT")]


def test_a_stored_pdf_download_sends_three_selects(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    # NOTE: performance work of issue 9: the signed-in user, the invoice with its payments and
    # credit notes joined to it, and the stored row with its bytes (a plain download); a
    # conditional request reads the row without the bytes and answers 304. It was six: the
    # invoice, its payments, its credit notes, the row and its bytes, one statement each.
    from portal.billing import services
    from portal.billing.money import Money

    account = make_account(session)
    login_as(client, make_user(session, account=account))
    invoice = make_invoice(session, account, [7500])
    for amount in (2000, 1000):
        services.record_payment(
            session,
            account,
            Money(amount, "USD"),
            [(invoice, Money(amount, "USD"))],
            received_at=clock(),
            method_description="Visa ·4242",
        )
    services.issue_credit_note(session, invoice, Money(500, "USD"), reason="goodwill")
    url = f"/invoices/{invoice.number}/pdf"
    first = client.get(url)
    assert first.status_code == 200
    status, selects = _selects_of(client, url)
    assert status == 200
    assert len(selects) == 3, selects
    assert "invoice_documents.content" in " ".join(selects[-1].split()), selects
    status, selects = _selects_of(client, url, **{"If-None-Match": first.headers["ETag"]})
    assert status == 304
    assert len(selects) == 3, selects
    assert "invoice_documents.content " not in " ".join(selects[-1].split()) + " ", selects
    assert stored_rows(session, invoice.id) == 1


def test_the_settled_invoice_lists_each_payment_and_credit_once_oldest_first(
    session: Session, clock: FrozenClock
) -> None:
    # NOTE: the payments and credit notes come outer-joined to the invoice (their product):
    # each must still be listed once, in order, and the key must be what the two-query read
    # gave (payments, then credit notes, oldest first).
    from datetime import timedelta

    from portal.billing import services
    from portal.billing.money import Money

    account = make_account(session)
    invoice = make_invoice(session, account, [9000])
    for n, amount in enumerate((3000, 1000, 2000)):
        services.record_payment(
            session,
            account,
            Money(amount, "USD"),
            [(invoice, Money(amount, "USD"))],
            received_at=clock() - timedelta(days=3 - n),
            method_description=f"Visa ·424{n}",
        )
    services.issue_credit_note(session, invoice, Money(700, "USD"), reason="goodwill")
    services.issue_credit_note(session, invoice, Money(300, "USD"), reason="goodwill")
    other = make_account(session)
    make_invoice(session, other, [100])
    found = documents.settled_invoice(session, account.id, str(invoice.number))
    assert found is not None
    read, settled = found
    assert read is invoice
    assert [p.amount_minor for p in settled.payments] == [3000, 1000, 2000]
    assert [c.amount_minor for c in settled.credits] == [700, 300]
    assert documents.invoice_settlements(session, invoice) == (settled.payments, settled.credits)
    assert documents.settled_invoice(session, other.id, str(invoice.number)) is None


def test_a_payment_changes_the_downloaded_pdf(
    client: FlaskClient, session: Session, clock: FrozenClock
) -> None:
    # The content-keyed cache through the route: a payment (or a credit note) read in the
    # invoice's one statement changes the key, so the next download is a new render.
    from portal.billing import services
    from portal.billing.money import Money

    account = make_account(session)
    login_as(client, make_user(session, account=account))
    invoice = make_invoice(session, account, [7500])
    url = f"/invoices/{invoice.number}/pdf"
    unpaid = client.get(url)
    services.record_payment(
        session,
        account,
        Money(7500, "USD"),
        [(invoice, Money(7500, "USD"))],
        received_at=clock(),
        method_description="Visa ·4242",
    )
    paid = client.get(url, headers={"If-None-Match": unpaid.headers["ETag"]})
    assert paid.status_code == 200
    assert paid.headers["ETag"] != unpaid.headers["ETag"]
    assert stored_rows(session, invoice.id) == 2
    credited = make_invoice(session, account, [4000])
    url = f"/invoices/{credited.number}/pdf"
    before = client.get(url)
    services.issue_credit_note(session, credited, Money(1000, "USD"), reason="goodwill")
    after = client.get(url)
    assert after.status_code == 200 and after.headers["ETag"] != before.headers["ETag"]
