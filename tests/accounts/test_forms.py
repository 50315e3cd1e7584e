"""Free text in the account details: NFC, and no control characters or direction overrides."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.accounts.test_routes import VALID
from tests.conftest import login_as
from tests.factories import make_account, make_user

HOSTILE = {
    "\u202e": "U+202E RIGHT-TO-LEFT OVERRIDE",
    "\u2066": "U+2066 LEFT-TO-RIGHT ISOLATE",
    "\x1b": "U+001B",
    "\x00": "U+0000",
    "\u200b": "U+200B ZERO WIDTH SPACE",
    "\n": "U+000A",
}
FIELDS = {
    "name": "Company or your name",
    "address_line1": "Address",
    "address_line2": "Address line 2",
    "city": "City",
    "region": "State or region",
    "billing_email": "Billing email",
    "tax_id": "Tax id",
    "postal_code": "Postal code",
}


def test_control_and_bidi_characters_are_refused_in_every_free_text_field(
    client: FlaskClient, session: Session
) -> None:
    account = make_account(session, name="Keep Me", city="Bristol")
    login_as(client, make_user(session, account=account))
    for field, label in FIELDS.items():
        for char, described in HOSTILE.items():
            value = f"ab{char}cd" if field != "billing_email" else f"a{char}b@example.com"
            response = client.post("/account", data={**VALID, field: value})
            assert response.status_code == 422, (field, described)
            body = " ".join(response.get_data(as_text=True).split())
            assert f"{label}" in body and described in body, (field, described)
            assert "invisible or control character" in body, (field, described)
    session.refresh(account)
    assert (account.name, account.city) == ("Keep Me", "Bristol")


def test_text_is_stored_composed_and_joiners_stay_where_scripts_need_them(
    client: FlaskClient, session: Session
) -> None:
    account = make_account(session)
    login_as(client, make_user(session, account=account))
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # a ZWNJ inside a word
    response = client.post(
        "/account", data={**VALID, "name": "Cafe\u0301 Mu\u0308ller", "city": persian}
    )
    assert response.status_code == 303
    session.refresh(account)
    assert account.name == "Caf\u00e9 M\u00fcller"
    assert account.city == persian
    refused = client.post("/account", data={**VALID, "billing_email": "a\u200cb@example.com"})
    assert refused.status_code == 422
    assert "U+200C ZERO WIDTH NON-JOINER" in refused.get_data(as_text=True)
