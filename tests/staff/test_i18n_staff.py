"""Every word of the staff console is marked for translation (the pseudo catalog of
tests/test_i18n.py, with the staff member's browser asking for German)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask, current_app
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.audit.services import Actor
from portal.disputes import services as disputes
from portal.disputes.evidence import EvidenceStore
from portal.formatting import countries
from tests.conftest import login_as
from tests.factories import (
    make_account,
    make_dispute,
    make_invoice,
    make_user,
    pdf_bytes,
    png_bytes,
)
from tests.test_i18n import (  # noqa: F401  (fixtures, used by name)
    _brand_data,
    pseudo_app,
    pseudo_translations,
    unmarked_text,
)

GERMAN = {"Accept-Language": "de-DE,de;q=0.9"}
PAGES = [
    "/staff/",
    "/staff/?status=all&sort=amount",
    "/staff/?amount_min=abc",
    "dispute",
    "/staff/customers",
    "/staff/customers?q=Lovelace",
    "/staff/customers?q=nobody-at-all",
    "customer",
    "/staff/audit",
    "/staff/approvals",
    "view-as",
]


@pytest.mark.parametrize("page", PAGES)
def test_every_word_of_the_staff_console_is_marked(
    pseudo_app: Flask,  # noqa: F811
    client: FlaskClient,
    session: Session,
    clock: Any,
    page: str,
) -> None:
    account = make_account(
        session, name="Ada Lovelace Studio", billing_email="ada@example.com", locale="de_DE"
    )
    make_user(session, "ada-i18n@example.com", account)
    invoice = make_invoice(session, account, (5000, 2500))
    dispute = make_dispute(session, account, invoice, 2500, line_ids=[invoice.lines[1].id])
    support = make_user(session, "support-i18n@example.com", staff_role="support")
    session.commit()
    _evidence(session, dispute, Actor("staff", support.id))
    login_as(client, support)
    base = f"/staff/disputes/{dispute.public_id}"
    client.post(f"{base}/note", data={"note-body": "Seat used"}, headers=GERMAN)
    client.post(f"{base}/reply", data={"body": "Checking"}, headers=GERMAN)
    path = {
        "dispute": base,
        "customer": f"/staff/customers/{account.public_id}",
    }.get(page, page)
    if page == "view-as":
        client.post(f"/staff/customers/{account.public_id}/view-as", headers=GERMAN)
        path = "/"
    response = client.get(path, headers=GERMAN)
    assert response.status_code == 200, path
    html = response.get_data(as_text=True)
    session.expire_all()
    # Data a person typed or the system names: accounts, emails, numbers, actions and the JSON
    # of the audit log's before/after values.
    data = (
        _brand_data(pseudo_app)
        | {name for _, name in countries("de")}
        | {
            account.name,
            account.billing_email,
            account.public_id,
            account.timezone,
            "ada-i18n@example.com",
            support.email,
            invoice.number,
            "Item 1",
            "Item 2",
            "Seat used",
            "Checking",
            "photo.png",
            "bank.pdf",
            "The second seat was never used.",
            "This is not what we agreed.",
            "USD",
            "Test User",
            "127.0.0.1",
        }
    )
    for event in session.scalars(select(AuditEvent)):
        data |= {event.action, event.target_type, event.target_id}
    data |= {
        " ".join(found.split())
        for found in re.findall(r'<pre class="staff-diff">(.*?)</pre>', html, flags=re.S)
    }
    assert 'lang="de"' in html
    assert unmarked_text(html, data) == [], f"unmarked text on {page}"


def _evidence(session: Session, dispute: Any, staff: Actor) -> None:
    """A customer's file sent with the question and an internal one: the staff page lists both
    (type, size and the internal mark are words too)."""
    store = EvidenceStore(current_app.config["ATTACHMENTS_DIR"])
    for data, name, internal, actor in (
        (png_bytes(), "photo.png", False, Actor("customer", None)),
        (pdf_bytes(), "bank.pdf", True, staff),
    ):
        disputes.add_attachment(
            session,
            dispute,
            data=data,
            filename=name,
            actor=actor,
            store=store,
            max_bytes=10**6,
            internal=internal,
        )
    session.commit()
