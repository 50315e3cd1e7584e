"""The account details page: owners and billing contacts edit, with clear messages and an audit."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from tests.conftest import login_as
from tests.factories import make_account, make_user

VALID = {
    "name": "Ada Lovelace Studio",
    "billing_email": "Accounts@Example.com",
    "address_line1": "12 St James's Square",
    "address_line2": "",
    "city": "London",
    "postal_code": "sw1y 4jh",
    "region": "",
    "country": "GB",
    "tax_id": "gb 123 4567 89",
    "locale": "en_GB",
}


def test_the_page_shows_the_details_and_a_sign_out_everywhere_button(
    client: FlaskClient, session: Session
) -> None:
    account = make_account(session, name="Shown & <b>Escaped</b>", tax_id="DE123")
    login_as(client, make_user(session, account=account))
    page = client.get("/account")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "Shown &amp; &lt;b&gt;Escaped&lt;/b&gt;" in body
    assert 'value="DE123"' in body
    assert "Sign out everywhere" in body
    assert "Save details" in body


def test_an_owner_saves_details_and_the_change_is_audited(
    client: FlaskClient, session: Session
) -> None:
    account = make_account(session, name="Old Name")
    user = make_user(session, account=account)
    login_as(client, user)
    response = client.post("/account", data=VALID)
    assert response.status_code == 303
    session.refresh(account)
    assert account.name == "Ada Lovelace Studio"
    assert account.billing_email == "accounts@example.com"
    assert account.tax_id == "GB 123 4567 89"
    assert account.postal_code == "SW1Y 4JH"
    assert account.locale == "en_GB"
    event = session.scalars(
        select(AuditEvent).where(AuditEvent.action == "account.details_updated")
    ).one()
    assert event.actor_user_id == user.id
    assert event.before["name"] == "Old Name"
    assert event.after["name"] == "Ada Lovelace Studio"
    assert "Your billing details are saved." in client.get("/account").get_data(as_text=True)


def test_bad_input_is_explained_and_changes_nothing(client: FlaskClient, session: Session) -> None:
    account = make_account(session, name="Keep Me")
    login_as(client, make_user(session, account=account))
    cases = {
        "name": ("   ", "Please enter the name"),
        "billing_email": ("nope", "name@example.com"),
        "country": ("XX", "choose a country"),
        "locale": ("xx_YY", "choose a language"),
        "tax_id": ("<script>", "Use only letters"),
        "postal_code": ("1" * 21, "at most 20"),
    }
    for field, (value, message) in cases.items():
        response = client.post("/account", data={**VALID, field: value})
        assert response.status_code == 422, field
        assert message in response.get_data(as_text=True), field
        session.refresh(account)
        assert account.name == "Keep Me"
    assert (
        session.scalars(select(AuditEvent.id).where(AuditEvent.action.like("account.%"))).all()
        == []
    )


def test_only_editable_fields_can_change(client: FlaskClient, session: Session) -> None:
    account = make_account(session, currency="USD")
    login_as(client, make_user(session, account=account))
    prefix = account.invoice_prefix
    client.post(
        "/account",
        data={**VALID, "currency": "EUR", "invoice_prefix": "HACK", "stripe_customer_id": "cus_x"},
    )
    session.refresh(account)
    assert (account.currency, account.invoice_prefix, account.stripe_customer_id) == (
        "USD",
        prefix,
        None,
    )


def test_a_viewer_sees_the_details_but_cannot_change_them(
    client: FlaskClient, session: Session
) -> None:
    account = make_account(session, name="Read Only")
    login_as(client, make_user(session, account=account, role="viewer"))
    page = client.get("/account").get_data(as_text=True)
    assert "Only the account" in page
    assert "Save details" not in page
    response = client.post("/account", data=VALID)
    assert response.status_code == 403
    session.refresh(account)
    assert account.name == "Read Only"


def test_a_billing_contact_can_edit(client: FlaskClient, session: Session) -> None:
    account = make_account(session)
    login_as(client, make_user(session, account=account, role="billing"))
    assert client.post("/account", data=VALID).status_code == 303


def test_the_role_comes_with_the_signed_in_user_and_follows_a_change(
    client: FlaskClient, session: Session
) -> None:
    """The role on the account is read with the user (load_user's one statement, no second
    query on the page) and read again on every request: a demoted owner reads, no longer edits."""
    from sqlalchemy import event, update

    from portal.accounts.models import Membership
    from portal.extensions import db

    account = make_account(session, name="Demoted")
    user = make_user(session, account=account)
    login_as(client, user)
    sent: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        sent.append(" ".join(statement.split()))

    event.listen(db.engine, "before_cursor_execute", note)
    try:
        assert "Save details" in client.get("/account").get_data(as_text=True)
    finally:
        event.remove(db.engine, "before_cursor_execute", note)
    assert not [s for s in sent if s.startswith("SELECT memberships.role FROM memberships")]

    session.execute(update(Membership).where(Membership.user_id == user.id).values(role="viewer"))
    session.flush()
    page = client.get("/account").get_data(as_text=True)
    assert "Save details" not in page and "Only the account" in page
    assert client.post("/account", data=VALID).status_code == 403


def test_the_country_select_keeps_the_stored_country_chosen(
    client: FlaskClient, session: Session
) -> None:
    account = make_account(session, country="AT")
    login_as(client, make_user(session, account=account))
    body = client.get("/account").get_data(as_text=True)
    select = body.split('<select class="input select" id="country"', 1)[1].split("</select>", 1)[0]
    assert '\n    <option value="AT" selected>Austria</option>' in select
    assert select.count(" selected>") == 1
    assert '\n    <option value="AX">Åland Islands</option>' in select
    assert (
        select.index(">Afghanistan<") < select.index(">Åland Islands<") < select.index(">Albania<")
    )


def test_countries_are_named_and_sorted_for_a_german_page(app: Flask) -> None:
    from portal.formatting import countries
    from portal.web import select_options

    with app.test_request_context("/account"):
        german = countries("de")
        markup = str(select_options(german, "AT"))
    names = [name for _code, name in german]
    # German order: "Ö" sorts with "O", not after "Z".
    assert names.index("Oman") < names.index("Österreich") < names.index("Pakistan")
    assert '\n    <option value="AT" selected>Österreich</option>' in markup
    assert markup.count(" selected>") == 1
    assert '\n    <option value="DE">Deutschland</option>' in markup


# --- The text fields' markup (performance work of issue 9) -----------------------------------

# NOTE: the account form's text fields were written by this Jinja macro; portal.forms
# text_field_html writes them now (cheaper) and must write the same bytes: the labels, the ids,
# aria-invalid / aria-describedby, the error with its icon and the hint. The macro is kept beside
# this file (text_field_macro.jinja) as the reference, called as the page called it.
REFERENCE_FIELDS = (Path(__file__).parent / "text_field_macro.jinja").read_text(encoding="utf-8")

BAD = {
    **VALID,
    "name": "",
    "billing_email": "not an address",
    "city": 'Say "hi" <b>&amp;</b>',
    "postal_code": "SW1Y_4JH!",
    "tax_id": "-GB 123",
}


def _reference_fields(
    app: Flask, account_id: int, can_edit: bool, formdata: dict[str, str] | None
) -> list[str]:
    """The macro's text fields for the form the page shows (GET: the account; POST: the
    submitted, validated data), one block per field, as the page printed them."""
    from portal.accounts.forms import AccountDetailsForm

    method = "POST" if formdata is not None else "GET"
    with app.test_request_context("/account", method=method, data=formdata):
        if formdata is None:
            from portal.accounts.models import Account
            from portal.extensions import db

            form = AccountDetailsForm(obj=db.session.get(Account, account_id))
        else:
            form = AccountDetailsForm()
            assert not form.validate()
        text = app.jinja_env.from_string(REFERENCE_FIELDS).render(form=form, can_edit=can_edit)
    blocks = [part for part in text.split("\n    ") if part.strip()]
    assert len(blocks) == 9  # eight text fields and where the page has its country select
    return [block for block in blocks if "<div" in block]


def _assert_fields_as_the_macro_wrote_them(body: str, expected: list[str]) -> None:
    for block in expected:
        assert "\n    " + block + "\n    " in body, block


def test_the_text_fields_are_written_as_the_macro_wrote_them(
    app: Flask, client: FlaskClient, session: Session
) -> None:
    from portal.accounts.models import Membership

    account = make_account(session, name='Quote " & <Co>', tax_id="DE123", city="Köln")
    user = make_user(session, account=account)
    login_as(client, user)
    body = client.get("/account").get_data(as_text=True)
    expected = _reference_fields(app, account.id, True, None)
    _assert_fields_as_the_macro_wrote_them(body, expected)
    assert 'for="name">Company or your name</label>' in expected[0]
    assert 'aria-describedby="tax_id-hint"' in expected[-1]

    # A submission with errors: each field with its error, its icon and the ids tied together.
    response = client.post("/account", data=BAD)
    assert response.status_code == 422
    expected = _reference_fields(app, account.id, True, BAD)
    body = response.get_data(as_text=True)
    _assert_fields_as_the_macro_wrote_them(body, expected)
    invalid = [block for block in expected if "field--invalid" in block]
    assert len(invalid) == 4  # name, email, postal code, tax id
    assert 'aria-describedby="tax_id-error tax_id-hint"' in expected[-1]
    assert 'id="name-error"' in expected[0] and 'aria-invalid="true"' in expected[0]
    assert "&lt;b&gt;&amp;amp;&lt;/b&gt;" in expected[4]  # the city's value, escaped

    # A viewer: the same fields, disabled.
    session.execute(update(Membership).where(Membership.user_id == user.id).values(role="viewer"))
    session.flush()
    body = client.get("/account").get_data(as_text=True)
    expected = _reference_fields(app, account.id, False, None)
    assert all(" disabled " in block for block in expected)
    _assert_fields_as_the_macro_wrote_them(body, expected)
