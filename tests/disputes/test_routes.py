"""The customer's dispute pages: question a charge with evidence, follow it, answer, withdraw;
abuse of every field and file; another account's dispute or file is a 404."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.audit.services import Actor
from portal.disputes import services
from portal.disputes.evidence import EvidenceStore
from portal.disputes.models import Attachment, Dispute
from portal.notifications.models import OutboxEmail
from tests.conftest import login_as
from tests.factories import (
    jpeg_bytes,
    make_account,
    make_dispute,
    make_invoice,
    make_user,
    pdf_bytes,
    png_bytes,
)

SCRIPT = '<script>alert("x")</script>'


@pytest.fixture(autouse=True)
def _attachments_dir(app: Flask, tmp_path: Path) -> Any:
    previous = app.config.get("ATTACHMENTS_DIR")
    app.config["ATTACHMENTS_DIR"] = str(tmp_path / "attachments")
    yield
    app.config["ATTACHMENTS_DIR"] = previous


def customer(client: FlaskClient, session: Session, role: str = "owner") -> tuple[Any, Any, Any]:
    account = make_account(session)
    user = make_user(session, account=account, role=role)
    invoice = make_invoice(session, account, [1500, 500])
    session.commit()
    login_as(client, user)
    return account, user, invoice


def form(invoice: Any, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "scope": "lines",
        "lines": ["2"],
        "amount": "5.00",
        "reason": "service_not_received",
        "description": "The second item never arrived.",
    }
    data.update(fields)
    return data


def post_new(client: FlaskClient, invoice: Any, files: list[tuple[bytes, str]] = (), **fields: Any):
    data = form(invoice, **fields)
    if files:
        data["evidence"] = [(io.BytesIO(content), name) for content, name in files]
    return client.post(
        f"/disputes/new?invoice={invoice.number}", data=data, content_type="multipart/form-data"
    )


def disputes_of(session: Session, invoice: Any) -> list[Dispute]:
    session.expire_all()
    return list(session.scalars(select(Dispute).where(Dispute.invoice_id == invoice.id)))


def test_the_form_says_what_happens_next_and_when_we_answer(
    client: FlaskClient, session: Session, clock: Any
) -> None:
    _account, _user, invoice = customer(client, session)
    response = client.get(f"/disputes/new?invoice={invoice.number}&line=2")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "What happens next" in body and "on hold" in body
    # Saturday 21 November 2026, noon: two business days is Tuesday at 17:00
    assert "within 2 business days: by Tuesday" in body
    assert re.search(r'value="2" checked', body)
    assert "Item 1" in body and "Item 2" in body


def test_the_invoice_page_offers_to_question_the_invoice_and_each_line(
    client: FlaskClient, session: Session
) -> None:
    _account, _user, invoice = customer(client, session)
    body = client.get(f"/invoices/{invoice.number}").get_data(as_text=True)
    assert f"/disputes/new?invoice={invoice.number}&amp;line=1" in body
    assert f"/disputes/new?invoice={invoice.number}&amp;line=2" in body
    assert body.count("Question this charge") >= 3


def test_ada_disputes_one_line_with_a_photo_and_follows_it(
    client: FlaskClient, session: Session
) -> None:
    account, _user, invoice = customer(client, session)
    response = post_new(client, invoice, files=[(png_bytes(), "photo.png")])
    assert response.status_code == 303, response.get_data(as_text=True)
    [dispute] = disputes_of(session, invoice)
    assert response.headers["Location"].endswith(f"/disputes/{dispute.public_id}")
    assert (dispute.amount_minor, [line.amount_minor for line in dispute.lines]) == (500, [500])
    [photo] = session.scalars(select(Attachment).where(Attachment.dispute_id == dispute.id))
    assert photo.content_type == "image/png" and photo.visibility == "customer"
    page = client.get(f"/disputes/{dispute.public_id}").get_data(as_text=True)
    assert "photo.png" in page and "Submitted" in page and "The second item never arrived." in page
    assert "We answer within 2 business days; due" in page
    listing = client.get("/disputes").get_data(as_text=True)
    assert f"/disputes/{dispute.public_id}" in listing
    download = client.get(f"/disputes/{dispute.public_id}/files/{photo.public_id}")
    assert download.status_code == 200 and download.data == png_bytes()
    assert download.headers["X-Content-Type-Options"] == "nosniff"
    assert download.headers["Content-Type"] == "image/png"
    disposition = download.headers["Content-Disposition"]
    assert (
        disposition.startswith("attachment;") and f"evidence-{photo.public_id}.png" in disposition
    )
    dashboard = client.get("/").get_data(as_text=True)
    assert 'href="/disputes"' in dashboard
    [email] = session.scalars(select(OutboxEmail).where(OutboxEmail.account_id == account.id))
    assert email.template == "dispute_received"


def test_the_whole_invoice_can_be_questioned(client: FlaskClient, session: Session) -> None:
    _account, _user, invoice = customer(client, session)
    response = post_new(client, invoice, scope="whole", lines=[], amount="20")
    assert response.status_code == 303
    [dispute] = disputes_of(session, invoice)
    assert (dispute.amount_minor, dispute.lines) == (2000, [])


@pytest.mark.parametrize(
    "amount", ["5.01", "-5", "0", "0.00", "abc", "1e9999", "NaN", "12.345", "99999999999999999999"]
)
def test_amounts_above_the_charge_negative_zero_or_absurd_are_refused(
    client: FlaskClient, session: Session, amount: str
) -> None:
    _account, _user, invoice = customer(client, session)
    response = post_new(client, invoice, amount=amount)
    assert response.status_code == 422, (amount, response.status_code)
    assert disputes_of(session, invoice) == []


def test_a_second_open_dispute_on_the_same_line_is_refused(
    client: FlaskClient, session: Session
) -> None:
    _account, _user, invoice = customer(client, session)
    assert post_new(client, invoice).status_code == 303
    again = post_new(client, invoice)
    assert again.status_code in (409, 422)
    assert "already being looked at" in again.get_data(as_text=True)
    assert len(disputes_of(session, invoice)) == 1


@pytest.mark.parametrize(
    ("content", "name"),
    [
        (b"#!/bin/sh\necho pwned\n", "photo.png"),
        (b"<svg onload=alert(1)>", "photo.png"),
        (pdf_bytes(b"/OpenAction << /S /JavaScript /JS (app.alert(1)) >> "), "contract.pdf"),
        (None, "archive.pdf"),
    ],
)
def test_files_of_the_wrong_type_or_pretending_are_refused_and_nothing_is_kept(
    client: FlaskClient, session: Session, content: bytes | None, name: str
) -> None:
    if content is None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("big.txt", b"0" * 2_000_000)
        content = buffer.getvalue()
    _account, _user, invoice = customer(client, session)
    response = post_new(client, invoice, files=[(content, name)])
    assert response.status_code == 422
    assert "Nothing was sent yet" in response.get_data(as_text=True)
    assert disputes_of(session, invoice) == []


def test_a_file_over_the_limit_is_refused(
    client: FlaskClient, session: Session, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(app.config, "EVIDENCE_MAX_BYTES", 1024 * 1024)
    _account, _user, invoice = customer(client, session)
    big = png_bytes(1200, 1200)  # noise-free but still well over a few KB
    big = big if len(big) > 1024 * 1024 else big + b"\x00" * (1024 * 1024)
    response = post_new(client, invoice, files=[(big, "huge.png")])
    assert response.status_code == 422
    assert "larger than 1 MB" in response.get_data(as_text=True)
    assert disputes_of(session, invoice) == []


def test_a_request_over_the_upload_limit_gets_a_friendly_413(
    client: FlaskClient, session: Session, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 64 * 1024)
    _account, _user, invoice = customer(client, session)
    response = post_new(client, invoice, files=[(b"\x89PNG" + b"\x00" * 100_000, "big.png")])
    assert response.status_code == 413
    assert "too large" in response.get_data(as_text=True)
    assert disputes_of(session, invoice) == []


def test_script_in_every_text_field_is_escaped_in_pages_and_emails(
    client: FlaskClient, session: Session
) -> None:
    account, _user, invoice = customer(client, session)
    response = post_new(
        client, invoice, files=[(jpeg_bytes(), SCRIPT + ".jpg")], description=SCRIPT
    )
    assert response.status_code == 303
    [dispute] = disputes_of(session, invoice)
    client.post(f"/disputes/{dispute.public_id}/messages", data={"body": SCRIPT})
    staff = Actor("staff", make_user(session, staff_role="support").id)
    services.add_message(session, dispute, body=SCRIPT, actor=staff)
    session.commit()
    for path in (f"/disputes/{dispute.public_id}", "/disputes"):
        body = client.get(path).get_data(as_text=True)
        assert "<script>alert" not in body
    page = client.get(f"/disputes/{dispute.public_id}").get_data(as_text=True)
    assert page.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") >= 3
    emails = session.scalars(select(OutboxEmail).where(OutboxEmail.account_id == account.id))
    for email in emails:
        assert "<script>alert" not in email.html_body


def test_internal_notes_and_their_files_never_reach_the_customer(
    client: FlaskClient, session: Session, tmp_path: Path, app: Flask
) -> None:
    account, _user, invoice = customer(client, session)
    dispute = make_dispute(session, account, invoice, 500)
    staff = Actor("staff", make_user(session, staff_role="support").id)
    note = services.add_message(
        session,
        dispute,
        body="Internal: customer is a known chargeback risk",
        actor=staff,
        is_internal=True,
    )
    secret = services.add_attachment(
        session,
        dispute,
        data=pdf_bytes(),
        filename="risk-report.pdf",
        actor=staff,
        store=EvidenceStore(app.config["ATTACHMENTS_DIR"]),
        max_bytes=10**6,
        message=note,
    )
    services.delete_message(session, dispute, note, actor=staff)
    session.commit()
    page = client.get(f"/disputes/{dispute.public_id}").get_data(as_text=True)
    assert "chargeback risk" not in page and "risk-report" not in page
    assert client.get(f"/disputes/{dispute.public_id}/files/{secret.public_id}").status_code == 404


def test_another_accounts_dispute_and_file_answer_404(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    owner = make_account(session)
    invoice = make_invoice(session, owner, [1000])
    dispute = make_dispute(session, owner, invoice, 500)
    photo = services.add_attachment(
        session,
        dispute,
        data=png_bytes(),
        filename="p.png",
        actor=Actor("customer", None),
        store=EvidenceStore(app.config["ATTACHMENTS_DIR"]),
        max_bytes=10**6,
    )
    session.commit()
    customer(client, session)
    for path in (
        f"/disputes/{dispute.public_id}",
        f"/disputes/{dispute.public_id}/files/{photo.public_id}",
        f"/disputes/new?invoice={invoice.number}",
        "/disputes/" + "x" * 200,
        f"/disputes/{dispute.public_id}/files/" + "y" * 300,
    ):
        assert client.get(path).status_code == 404, path
    for path in (
        f"/disputes/{dispute.public_id}/messages",
        f"/disputes/{dispute.public_id}/withdraw",
    ):
        assert client.post(path, data={"body": "hi"}).status_code == 404, path
    session.expire_all()
    assert session.get(Dispute, dispute.id).status == "open"


def test_answering_with_a_file_and_withdrawing(client: FlaskClient, session: Session) -> None:
    _account, _user, invoice = customer(client, session)
    post_new(client, invoice)
    [dispute] = disputes_of(session, invoice)
    response = client.post(
        f"/disputes/{dispute.public_id}/messages",
        data={"body": "", "evidence": [(io.BytesIO(pdf_bytes()), "receipt.pdf")]},
        content_type="multipart/form-data",
    )
    assert response.status_code == 303
    page = client.get(f"/disputes/{dispute.public_id}").get_data(as_text=True)
    assert "receipt.pdf" in page and "Files attached." in page
    assert client.post(f"/disputes/{dispute.public_id}/withdraw").status_code == 303
    session.expire_all()
    assert session.get(Dispute, dispute.id).status == "withdrawn"
    page = client.get(f"/disputes/{dispute.public_id}").get_data(as_text=True)
    assert "Withdrawn" in page and "Withdraw my question" not in page
    # withdrawing again changes nothing
    assert client.post(f"/disputes/{dispute.public_id}/withdraw").status_code == 303


def test_a_viewer_may_read_but_not_question_charges(client: FlaskClient, session: Session) -> None:
    _account, _user, invoice = customer(client, session, role="viewer")
    assert client.get(f"/disputes/new?invoice={invoice.number}").status_code == 200
    assert post_new(client, invoice).status_code == 403
    assert disputes_of(session, invoice) == []


def test_a_refused_second_file_takes_the_first_one_with_it(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    _account, _user, invoice = customer(client, session)
    root = Path(app.config["ATTACHMENTS_DIR"])
    before = set(root.iterdir()) if root.exists() else set()
    response = post_new(
        client, invoice, files=[(png_bytes(), "good.png"), (b"#!/bin/sh\n", "bad.png")]
    )
    assert response.status_code == 422
    assert disputes_of(session, invoice) == []
    assert (set(root.iterdir()) if root.exists() else set()) == before
