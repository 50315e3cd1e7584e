"""Customer lookup and "view as customer": read-only, marked on every page, audited, staff only."""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.billing import services as billing
from portal.billing.money import Money
from tests.conftest import login_as
from tests.factories import make_account, make_invoice, make_user
from tests.staff.helpers import make_dispute


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


@dataclass(frozen=True)
class Control:
    form: str  # the form's action
    method: str
    tag: str
    name: str
    disabled: bool
    kept: bool  # a form that stays usable while viewing (leave the view, sign out)


def _controls(html: str) -> list[Control]:
    """Every control of every form of the page, with its form's method and whether it is
    disabled, as a browser's parser sees them."""

    class Forms(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.form: dict[str, str] | None = None
            self.found: list[Control] = []
            self.fieldsets: list[bool] = []  # whether each enclosing fieldset is disabled

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            values = {k: v or "" for k, v in attrs}
            if tag == "fieldset":
                self.fieldsets.append("disabled" in values)
            elif tag == "form":
                self.form = values
            elif tag in ("button", "input", "select", "textarea") and self.form is not None:
                action = self.form.get("action", "")
                self.found.append(
                    Control(
                        form=action,
                        method=(self.form.get("method") or "get").lower(),
                        tag=tag,
                        name=values.get("name", ""),
                        # NOTE: a control inside a disabled fieldset is disabled too.
                        disabled="disabled" in values or any(self.fieldsets),
                        kept=action in ("/staff/view-as/end", "/logout"),
                    )
                )

        def handle_endtag(self, tag: str) -> None:
            if tag == "form":
                self.form = None
            elif tag == "fieldset" and self.fieldsets:
                self.fieldsets.pop()

    parser = Forms()
    parser.feed(html)
    return parser.found


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
        # Every control of a state-changing form is disabled (see the test below).
        assert not [
            c for c in _controls(html) if c.method == "post" and not c.disabled and not c.kept
        ], path
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


def test_view_as_keeps_get_filters_usable_and_every_change_disabled_and_refused(
    client: FlaskClient, session: Session
) -> None:
    """The invoice filters and the statement's period are reads: usable while viewing, as the
    customer would use them. Every control of a POST form is disabled, and refused if sent."""
    w = _world(session)
    paid = make_invoice(session, w["account"], (1500,))
    billing.record_payment(
        session,
        w["account"],
        Money(1500, "USD"),
        [(paid, Money(1500, "USD"))],
        received_at=paid.finalized_at,
    )
    session.commit()
    login_as(client, w["support"])
    client.post(f"/staff/customers/{w['account'].public_id}/view-as")

    pages = {
        "/invoices": "/invoices",
        "/statements": "/statements",
        f"/invoices/{w['invoice'].number}": None,
        "/account": None,
        "/payment-methods": None,
    }
    seen_post = 0
    for path, get_form in pages.items():
        response = client.get(path)
        assert response.status_code == 200, path
        controls = _controls(response.get_data(as_text=True))
        gets = [c for c in controls if c.method == "get"]
        posts = [c for c in controls if c.method == "post"]
        if get_form is not None:
            mine = [c for c in gets if c.form == get_form]
            assert mine, f"{path}: its filter form is missing"
            assert not [c for c in mine if c.disabled], f"{path}: a filter is disabled: {mine}"
        for control in posts:
            assert control.disabled != control.kept, f"{path}: {control}"
        seen_post += sum(1 for c in posts if not c.kept)
        # Leaving the view and signing out stay possible.
        assert any(c.kept and c.form == "/staff/view-as/end" for c in posts), path
    assert seen_post >= 3, "the pages have forms that change things, all shown disabled"

    # The filters work while viewing: the customer's list, filtered, as they would see it.
    filtered = client.get("/invoices", query_string={"status": "paid"})
    assert filtered.status_code == 200
    html = filtered.get_data(as_text=True)
    assert paid.number in html and w["invoice"].number not in html
    period = client.get("/statements", query_string={"start": "2026-01-01", "end": "2026-12-31"})
    assert period.status_code == 200
    # A request that would change something is refused whatever the page showed.
    assert client.post("/account", data={"name": "Changed"}).status_code == 403
    assert client.post("/payment-methods/setup").status_code == 403
    session.refresh(w["account"])
    assert w["account"].name == "Ada Lovelace Studio"


def test_only_forms_that_change_something_are_disabled() -> None:
    from portal.staff.view_as import disable_changing_forms

    html = (
        '<form method="get" action="/invoices"><select name="status"></select>'
        "<button>Filter</button></form>"
        '<form action="/search"><input name="q"></form>'
        '<form method="POST" action="/account" data-x="a>b"><input name="name">'
        '<textarea name="n"></textarea><button type="submit">Save</button>'
        '<input type="checkbox" disabled></form>'
        '<form method="post" action="/staff/view-as/end"><button>Leave</button></form>'
    )
    out = disable_changing_forms(html, frozenset({"/staff/view-as/end"}))
    controls = _controls(out)
    state = {(c.form, c.tag, c.name or c.tag): c.disabled for c in controls}
    assert state == {
        ("/invoices", "select", "status"): False,
        ("/invoices", "button", "button"): False,
        ("/search", "input", "q"): False,
        ("/account", "input", "name"): True,
        ("/account", "textarea", "n"): True,
        ("/account", "button", "button"): True,
        ("/account", "input", "input"): True,
        ("/staff/view-as/end", "button", "button"): False,
    }
    assert out.count("disabled") == 4  # the one already disabled is not disabled twice


def test_the_customer_page_names_the_invoice_of_each_dispute(
    client: FlaskClient, session: Session
) -> None:
    w = _world(session)
    make_dispute(session, w["account"], w["invoice"])
    session.commit()
    login_as(client, w["support"])
    page = client.get(f"/staff/customers/{w['account'].public_id}")
    assert page.status_code == 200
    section = page.text.split('id="ctx-disputes"', 1)[1].split("</section>", 1)[0]
    assert w["invoice"].number in section
