"""An internal note never reaches the customer: no page, HTMX partial, email, PDF or CSV of
theirs carries its text (nor does the read-only customer view), while a reply does."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.notifications.models import OutboxEmail
from tests.conftest import login_as
from tests.factories import make_account, make_dispute, make_invoice, make_user

MARKER = "INTERNAL-7731-do-not-show"
REPLY = "REPLY-4410-we-are-checking"


def _customer_paths(invoice_number: str, dispute_id: str) -> list[str]:
    return [*_pages(invoice_number), *_dispute_pages(dispute_id)]


def _dispute_pages(dispute_id: str) -> list[str]:
    """The customer's dispute pages (issue 11's customer side), once their templates exist."""
    from flask import current_app

    if "disputes/detail.html" not in current_app.jinja_env.list_templates():
        return []
    return ["/disputes", f"/disputes/{dispute_id}"]


def _pages(invoice_number: str) -> list[str]:
    return [
        "/",
        "/invoices",
        f"/invoices/{invoice_number}",
        f"/invoices/{invoice_number}/pdf",
        "/statements",
        "/statements?format=csv",
        "/statements?format=pdf",
        "/payments",
        "/account",
    ]


def test_an_internal_note_is_on_no_customer_page_partial_email_pdf_or_csv(
    client: FlaskClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered: list[str] = []
    from portal.billing import pdf

    original = pdf.html_to_pdf

    def keep_html(html: str, **kwargs: Any) -> bytes:
        rendered.append(html)
        return original(html, **kwargs)

    monkeypatch.setattr(pdf, "html_to_pdf", keep_html)

    account = make_account(session, name="Ada Lovelace Studio")
    ada = make_user(session, account=account)
    invoice = make_invoice(session, account, (5000, 2500))
    dispute = make_dispute(session, account, invoice, 2500, line_ids=[invoice.lines[1].id])
    support = make_user(session, staff_role="support")
    session.commit()

    staff = client.application.test_client()
    login_as(staff, support)
    base = f"/staff/disputes/{dispute.public_id}"
    assert staff.post(f"{base}/note", data={"note-body": MARKER}).status_code == 303
    assert staff.post(f"{base}/reply", data={"body": REPLY}).status_code == 303
    assert (
        staff.post(f"{base}/note", data={"note-body": f"<script>{MARKER}</script>"}).status_code
        == 303
    )
    staff_page = staff.get(base).get_data(as_text=True)
    assert MARKER in staff_page  # staff see it, clearly marked
    assert "<script>INTERNAL" not in staff_page  # and escaped
    assert (
        staff.post(f"{base}/credit", data={"amount": "10.00", "memo": "Partial credit"}).status_code
        == 303
    )

    login_as(client, ada)
    seen: dict[str, str] = {}
    for path in _customer_paths(invoice.number, dispute.public_id):
        for headers in ({}, {"HX-Request": "true"}):
            response = client.get(path, headers=headers)
            assert response.status_code == 200, (path, response.status_code)
            seen[f"{path} {headers}"] = response.get_data().decode("utf-8", "replace")
    if _dispute_pages(dispute.public_id):
        assert REPLY in seen[f"/disputes/{dispute.public_id} {{}}"]  # the test can see text

    # The customer view staff use shows the same, and no more.
    viewer = client.application.test_client()
    login_as(viewer, support)
    assert viewer.post(f"/staff/customers/{account.public_id}/view-as").status_code == 303
    for path in _customer_paths(invoice.number, dispute.public_id):
        seen[f"view-as {path}"] = viewer.get(path).get_data().decode("utf-8", "replace")

    session.expire_all()
    emails = session.scalars(select(OutboxEmail).where(OutboxEmail.account_id == account.id)).all()
    assert {e.template for e in emails} >= {"dispute_replied", "dispute_resolved"}
    for email in emails:
        seen[f"email {email.template}"] = f"{email.subject}\n{email.text_body}\n{email.html_body}"
    assert any(REPLY in text for where, text in seen.items() if where.startswith("email"))
    assert rendered, "the PDFs were rendered from HTML"
    for number, html in enumerate(rendered):
        seen[f"pdf {number}"] = html

    leaks = [where for where, text in seen.items() if MARKER in text]
    assert leaks == [], f"the internal note reached: {leaks}"
