"""Customer lookup and "view as customer": read-only, marked on every page, audited, staff only."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.billing import services as billing
from portal.billing.money import Money
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_user


def _world(session: Session) -> dict:
    account = make_account(session, name="Ada Lovelace Studio", billing_email="ada@example.com")
    ada = make_user(session, "ada-v@example.com", account)
    other = make_account(session, name="Grace Hopper GmbH")
    make_user(session, "grace-v@example.com", other)
    invoice = make_invoice(session, account, (4200,))
    payment = billing.record_payment(
        session, account, Money(500, "USD"), [], received_at=invoice.finalized_at
    )
    support = make_user(session, "support-v@example.com", staff_role="support")
    session.commit()
    return {
        "account": account,
        "ada": ada,
        "other": other,
        "invoice": invoice,
        "payment": payment,
        "support": support,
    }


def _actions(session: Session) -> list[str]:
    session.expire_all()
    return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def test_lookup_finds_by_name_email_invoice_number_and_payment_reference(
    client: FlaskClient, session: Session
) -> None:
    w = _world(session)
    login_as(client, w["support"])
    for q in ("lovelace", "ADA@EXAMPLE", "ada-v@", w["invoice"].number, w["payment"].public_id):
        html = client.get("/staff/customers", query_string={"q": q}).get_data(as_text=True)
        assert "Ada Lovelace Studio" in html, q
        assert "Grace Hopper GmbH" not in html, q
    # A part of an invoice number is not a match (numbers are whole), and LIKE is escaped.
    html = client.get("/staff/customers", query_string={"q": "%"}).get_data(as_text=True)
    assert "Ada Lovelace Studio" not in html
    # Too long: a message, not an error page.
    response = client.get("/staff/customers", query_string={"q": "x" * 300})
    assert response.status_code == 200
    assert "at most 200" in response.get_data(as_text=True)


def test_view_as_shows_the_customer_portal_read_only_with_a_banner_and_audits_each_page(
    client: FlaskClient, session: Session
) -> None:
    w = _world(session)
    login_as(client, w["support"])
    start = client.post(f"/staff/customers/{w['account'].public_id}/view-as")
    assert start.status_code == 303 and start.headers["Location"] == "/"
    for path in ("/", "/invoices", f"/invoices/{w['invoice'].number}", "/payments", "/account"):
        response = client.get(path)
        assert response.status_code == 200, path
        html = response.get_data(as_text=True)
        assert 'data-testid="view-as-banner"' in html, path
        assert "Ada Lovelace Studio" in html
        # Every control of the page sits in a disabled fieldset.
        assert '<fieldset class="view-as-frame" disabled>' in html, path
    # Another account's invoice stays a 404 while viewing Ada's.
    other_invoice = make_invoice(session, w["other"], (100,))
    session.commit()
    assert client.get(f"/invoices/{other_invoice.number}").status_code == 404
    # Nothing can change: every state-changing request is refused, and changes nothing.
    before = w["account"].name
    refused = client.post("/account", data={"name": "Hacked", "billing_email": "x@example.com"})
    assert refused.status_code == 403
    assert "nothing can be changed" in refused.get_data(as_text=True)
    assert client.post(f"/invoices/{w['invoice'].number}/pay").status_code == 403
    assert client.post("/account/sign-out-everywhere").status_code == 403
    session.refresh(w["account"])
    assert w["account"].name == before
    actions = _actions(session)
    assert actions.count("staff.view_as_started") == 1
    # NOTE: five pages seen; the 404 showed nothing (its unit of work, audit included, rolled back).
    assert actions.count("staff.view_as_page") == 5
    # Leaving returns to the staff page of that customer; the portal is no longer shown.
    left = client.post("/staff/view-as/end")
    assert left.status_code == 303
    assert left.headers["Location"] == f"/staff/customers/{w['account'].public_id}"
    assert "staff.view_as_ended" in _actions(session)
    home = client.get("/")
    assert home.status_code == 303 and home.headers["Location"].endswith("/staff/")
    assert 'data-testid="view-as-banner"' not in client.get("/staff/").get_data(as_text=True)


def test_a_customer_can_never_enter_view_as(client: FlaskClient, session: Session) -> None:
    w = _world(session)
    login_as(client, w["ada"])
    assert client.post(f"/staff/customers/{w['other'].public_id}/view-as").status_code == 404
    # Even a session cookie carrying the key (as if forged) is ignored for a customer.
    with client.session_transaction() as cookie:
        cookie["view_as"] = {"account": w["other"].public_id, "by": cookie["_user_id"]}
    html = client.get("/").get_data(as_text=True)
    assert "Grace Hopper GmbH" not in html
    assert "Ada Lovelace Studio" in html
    with client.session_transaction() as cookie:
        assert "view_as" not in cookie


def test_a_view_as_claim_does_not_survive_a_new_sign_in(
    client: FlaskClient, session: Session, app: Flask
) -> None:
    w = _world(session)
    login_as(client, w["support"])
    client.post(f"/staff/customers/{w['account'].public_id}/view-as")
    with client.session_transaction() as cookie:
        claim = cookie["view_as"]
    login_as(client, w["support"])  # a new sign-in clears the session
    with client.session_transaction() as cookie:
        cookie["view_as"] = {**claim, "by": "someone-else:0"}
    assert client.get("/").status_code == 303  # staff home again, not Ada's portal


def test_the_audit_log_filters_and_pages(client: FlaskClient, session: Session) -> None:
    w = _world(session)
    login_as(client, w["support"])
    client.post(f"/staff/customers/{w['account'].public_id}/view-as")
    client.post("/staff/view-as/end")
    page = client.get("/staff/audit", query_string={"action": "staff.view_as"})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "staff.view_as_started" in html and "staff.view_as_ended" in html
    assert "payment.recorded" not in html
    html = client.get(
        "/staff/audit", query_string={"actor": "support-v@", "account": "Lovelace"}
    ).get_data(as_text=True)
    assert "staff.view_as_started" in html
    html = client.get("/staff/audit", query_string={"actor": "nobody@"}).get_data(as_text=True)
    assert "No events match" in html
    bad = client.get("/staff/audit", query_string={"start": "2026-13-01", "page": "x"})
    assert bad.status_code == 200
    assert "date like" in bad.get_data(as_text=True)
    html = client.get(
        "/staff/audit", query_string={"start": "2026-12-02", "end": "2026-12-01"}
    ).get_data(as_text=True)
    assert "before the start date" in html
