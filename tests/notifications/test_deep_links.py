"""Deep links: one tap from the email to exactly that invoice's pay page, that receipt, that
dispute; refused kindly (and saying nothing about the object) when used twice, expired, opened
by another signed-in account, or changed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.accounts.models import Membership
from portal.audit.models import AuditEvent
from portal.auth.models import LoginToken
from portal.auth.sessions import ACCOUNT_KEY
from portal.extensions import db
from portal.notifications import deep_links
from portal.notifications.emails import Target
from tests.conftest import app_with_own_database, login_as
from tests.factories import make_account, make_invoice, make_user
from tests.notifications.email_world import EmailWorld
from tests.test_i18n import (  # noqa: F401  (fixtures)
    _brand_data,
    pseudo_app,
    pseudo_translations,
    unmarked_text,
)


def _link(session: Session, world: EmailWorld, kind: str = "invoice", object_id: int = 0) -> str:
    target = Target(kind, object_id or world.invoice.id)
    url = deep_links.link_for(session, world.account, world.user.email, target)
    session.commit()
    assert "/l/" in url
    return urlsplit(url).path


def _audits(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(AuditEvent)) or 0


def _says_nothing_about(body: str, world: EmailWorld) -> None:
    for secret in (world.invoice.number, world.account.name, world.user.email):
        assert secret not in body


def test_get_shows_a_confirm_page_and_changes_nothing(
    app: Flask, session: Session, client: FlaskClient, clock: Any
) -> None:
    world = EmailWorld(session)
    path = _link(session, world)
    before = _audits(session)
    for _ in range(3):  # a mail scanner, a preview, the person
        page = client.get(path)
        assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert world.invoice.number in body and world.user.email in body
    assert f'action="{path}"' in body and 'method="post"' in body
    token = session.scalars(select(LoginToken).where(LoginToken.target_kind == "invoice")).one()
    assert token.consumed_at is None
    assert _audits(session) == before
    assert client.get("/").status_code == 303  # still signed out


def test_post_signs_in_and_opens_exactly_that_invoices_pay_page(
    app: Flask, session: Session, client: FlaskClient, clock: Any
) -> None:
    world = EmailWorld(session)
    path = _link(session, world)
    response = client.post(path)
    assert response.status_code == 303
    assert response.headers["Location"] == f"/invoices/{world.invoice.number}/pay"
    assert client.get(response.headers["Location"]).status_code == 200
    event = session.scalars(
        select(AuditEvent).where(AuditEvent.action == "auth.deep_link_used")
    ).one()
    assert (event.target_type, event.actor_user_id) == ("invoice", world.user.id)


def test_receipt_dispute_and_cards_open_their_own_page(
    app: Flask, session: Session, client: FlaskClient, clock: Any
) -> None:
    world = EmailWorld(session)
    cases = {
        ("receipt", world.payment.id): f"/payments/{world.payment.public_id}",
        ("payment_methods", world.account.id): "/payment-methods",
    }
    for (kind, object_id), location in cases.items():
        path = _link(session, world, kind, object_id)
        response = app.test_client().post(path)
        assert (response.status_code, response.headers["Location"]) == (303, location)
    # NOTE: the dispute page is issue 11's; until it is merged the link opens the dashboard.
    path = _link(session, world, "dispute", world.dispute.id)
    response = app.test_client().post(path)
    assert response.status_code == 303
    expected = "/" if "disputes.detail" not in app.view_functions else "/disputes/"
    assert response.headers["Location"].startswith(expected)


def test_a_paid_invoice_opens_its_page_instead_of_paying(
    app: Flask, session: Session, client: FlaskClient, clock: Any
) -> None:
    world = EmailWorld(session)
    path = _link(session, world, "invoice", world.paid_invoice.id)
    response = client.post(path)
    assert response.headers["Location"] == f"/invoices/{world.paid_invoice.number}"


def test_used_twice_is_refused_kindly(
    app: Flask, session: Session, client: FlaskClient, clock: Any
) -> None:
    world = EmailWorld(session)
    path = _link(session, world)
    assert client.post(path).status_code == 303
    # The same browser, still signed in as its owner, simply goes on to the invoice.
    again = client.post(path)
    assert (again.status_code, again.headers["Location"]) == (
        303,
        f"/invoices/{world.invoice.number}/pay",
    )
    # Anyone else (a forwarded email, another browser) is refused and told nothing.
    other = app.test_client()
    for response in (other.get(path), other.post(path)):
        assert response.status_code == 410
        body = response.get_data(as_text=True)
        assert "already used" in body
        _says_nothing_about(body, world)
    assert other.get("/").status_code == 303  # not signed in


def test_an_expired_link_is_refused(
    app: Flask, session: Session, client: FlaskClient, clock: Any
) -> None:
    world = EmailWorld(session)
    path = _link(session, world)
    clock.advance(hours=app.config["DEEP_LINK_HOURS"], seconds=1)
    for response in (client.get(path), client.post(path)):
        assert response.status_code == 410
        body = response.get_data(as_text=True)
        assert "expired" in body
        _says_nothing_about(body, world)
    assert client.get("/").status_code == 303


def test_another_signed_in_account_is_refused_and_the_link_still_works_for_its_owner(
    app: Flask, session: Session, client: FlaskClient, clock: Any
) -> None:
    world = EmailWorld(session)
    path = _link(session, world)
    bob_account = make_account(session, name="Bob's Bakery")
    bob = make_user(session, email="bob@example.com", account=bob_account)
    session.commit()
    login_as(client, bob)
    for response in (client.get(path), client.post(path)):
        assert response.status_code == 404
        body = response.get_data(as_text=True)
        assert "sent to someone else" in body
        _says_nothing_about(body, world)
    # Bob is still Bob; the link was not spent.
    assert client.get("/account").status_code == 200
    owner = app.test_client()
    assert owner.post(path).status_code == 303


def test_a_link_with_its_object_changed_opens_nothing(
    app: Flask, session: Session, client: FlaskClient, clock: Any
) -> None:
    world = EmailWorld(session)
    path = _link(session, world)
    token = path.rsplit("/", 1)[1]
    with app.test_request_context():
        raw, kind, object_id = deep_links._serializer().loads(token)
        serializer = deep_links._serializer()
        # Signed with our own key, but naming another invoice or another kind of object: the
        # stored row names the one object the link was made for.
        other_invoice = make_invoice(session, world.account, (100,))
        session.commit()
        forged = [
            serializer.dumps([raw, kind, other_invoice.id]),
            serializer.dumps([raw, "receipt", world.payment.id]),
            serializer.dumps([raw, kind, str(object_id)]),
        ]
    tampered = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
    for candidate in [*forged, tampered, "not-a-token"]:
        for response in (client.get(f"/l/{candidate}"), client.post(f"/l/{candidate}")):
            assert response.status_code == 404
            body = response.get_data(as_text=True)
            assert "does not work" in body
            _says_nothing_about(body, world)
    assert client.get("/").status_code == 303
    assert client.post(path).status_code == 303  # the real link still works


def test_sign_in_links_and_deep_links_do_not_open_each_other(
    app: Flask, session: Session, client: FlaskClient, clock: Any
) -> None:
    from datetime import timedelta

    from portal.auth.services import TokenSigner, issue_login_token

    world = EmailWorld(session)
    path = _link(session, world)
    token = path.rsplit("/", 1)[1]
    assert client.post(f"/login/{token}").status_code == 400
    login_token = issue_login_token(
        session, TokenSigner(app.config["SECRET_KEYS"]), world.user, lifetime=timedelta(minutes=10)
    )
    session.commit()
    assert client.post(f"/l/{login_token}").status_code == 404
    # A sign-in by /login does not retire the links in invoice emails.
    assert client.post(f"/login/{login_token}").status_code == 303
    assert app.test_client().post(path).status_code == 303


def test_a_member_of_another_account_gets_a_plain_link(
    app: Flask, session: Session, clock: Any
) -> None:
    world = EmailWorld(session)
    stranger_account = make_account(session)
    make_user(session, email="stranger@example.com", account=stranger_account)
    url = deep_links.link_for(
        session, world.account, "stranger@example.com", Target("invoice", world.invoice.id)
    )
    assert "/l/" not in url and url.endswith(f"/invoices/{world.invoice.number}/pay")


def test_two_taps_at_once_sign_in_once(backend: str, tmp_path: Path, clock: Any) -> None:
    with app_with_own_database(backend, tmp_path, "deeplink") as app:
        with app.app_context():
            account = make_account(db.session)
            user = make_user(db.session, email=account.billing_email, account=account)
            invoice = make_invoice(db.session, account, (1000,))
            url = deep_links.link_for(
                db.session, account, user.email, Target("invoice", invoice.id)
            )
            db.session.commit()
            db.session.remove()
        path = urlsplit(url).path
        start = threading.Barrier(4)
        statuses: list[int] = []

        def tap() -> None:
            client = app.test_client()
            start.wait()
            statuses.append(client.post(path).status_code)

        threads = [threading.Thread(target=tap) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(statuses) == [303, 410, 410, 410]
        with app.app_context():
            signed_in = db.session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "auth.deep_link_used")
            )
            db.session.remove()
        assert signed_in == 1


def test_every_word_on_the_link_pages_is_marked(
    pseudo_app: Flask,  # noqa: F811
    session: Session,
    client: FlaskClient,
    clock: Any,
) -> None:
    """The confirm page and each refusal, in the (pseudo) German of the account's browser."""
    world = EmailWorld(session, locale="de_DE", currency="EUR")
    path = _link(session, world)
    headers = {"Accept-Language": "de-DE,de;q=0.9"}
    data = _brand_data(pseudo_app) | {
        world.account.name,
        world.user.name,
        world.user.email,
        world.user.name[:1],
        world.invoice.number or "",
    }
    pages = [client.get(path, headers=headers), client.get("/l/broken", headers=headers)]
    assert client.post(path).status_code == 303
    pages.append(app_client(pseudo_app).get(path, headers=headers))
    for page in pages:
        html = page.get_data(as_text=True)
        assert 'lang="de"' in html
        assert unmarked_text(html, data) == [], page.status_code


def app_client(app: Flask) -> FlaskClient:
    return app.test_client()


# -- a person in two accounts ------------------------------------------------------------------


class TwoAccounts:
    """One person who belongs to two accounts (the first one joined first), an invoice in each."""

    def __init__(self, session: Session) -> None:
        self.first = make_account(session, name="First Studio")
        self.user = make_user(session, email="both@example.com", account=self.first)
        self.second = make_account(session, name="Second Works")
        session.add(Membership(user_id=self.user.id, account_id=self.second.id, role="billing"))
        self.first_invoice = make_invoice(session, self.first, (1200,))
        self.second_invoice = make_invoice(session, self.second, (3400,))
        self.stranger = make_account(session, name="Stranger Ltd")
        self.stranger_invoice = make_invoice(session, self.stranger, (5600,))
        session.flush()

    def link(self, session: Session, account: Any, invoice: Any) -> str:
        url = deep_links.link_for(session, account, self.user.email, Target("invoice", invoice.id))
        session.commit()
        assert "/l/" in url
        return urlsplit(url).path


def _switches(session: Session) -> list[tuple[Any, Any, Any]]:
    return [
        (event.account_id, (event.before or {}).get("account"), (event.after or {}).get("account"))
        for event in session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == "auth.account_switched")
            .order_by(AuditEvent.id)
        )
    ]


def test_a_link_for_the_other_account_switches_to_it_and_opens_its_invoice(
    app: Flask, session: Session, client: FlaskClient, clock: Any
) -> None:
    """Signed in (acting for the first account), the person opens a link about their second
    account's invoice: the confirm page says which account the tap switches to, the tap opens
    that invoice (not a 404), the switch is audited, and a link back to the first account
    switches back."""
    two = TwoAccounts(session)
    session.commit()
    login_as(client, two.user)
    second_pay = f"/invoices/{two.second_invoice.number}/pay"
    assert client.get(second_pay).status_code == 404  # acting for the first account
    path = two.link(session, two.second, two.second_invoice)
    page = client.get(path)
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and 'data-testid="deep-link-switch"' in body
    assert "First Studio" in body and "Second Works" in body
    assert _switches(session) == []  # the GET changes nothing
    response = client.post(path)
    assert (response.status_code, response.headers["Location"]) == (303, second_pay)
    assert client.get(second_pay).status_code == 200
    assert client.get(f"/invoices/{two.first_invoice.number}/pay").status_code == 404
    assert _switches(session) == [(two.second.id, two.first.public_id, two.second.public_id)]
    # And back: a link about the first account's invoice switches again.
    back = two.link(session, two.first, two.first_invoice)
    assert 'data-testid="deep-link-switch"' in client.get(back).get_data(as_text=True)
    response = client.post(back)
    assert response.headers["Location"] == f"/invoices/{two.first_invoice.number}/pay"
    assert client.get(response.headers["Location"]).status_code == 200
    assert _switches(session)[-1] == (two.first.id, two.second.public_id, two.first.public_id)
    # A link about the account this browser acts for already: no switch, no notice.
    again = two.link(session, two.first, two.first_invoice)
    assert 'data-testid="deep-link-switch"' not in client.get(again).get_data(as_text=True)
    assert client.post(again).status_code == 303
    assert len(_switches(session)) == 2


def test_signing_in_by_a_link_for_the_second_account_acts_for_it(
    app: Flask, session: Session, client: FlaskClient, clock: Any
) -> None:
    """Signed out, the person taps a link about their second account: the fresh session acts
    for that account (audited: the sign-in would otherwise act for the first), and the page
    opens; nothing of a stranger's account opens, whatever is chosen."""
    two = TwoAccounts(session)
    path = two.link(session, two.second, two.second_invoice)
    page = client.get(path)
    assert 'data-testid="deep-link-switch"' not in page.get_data(as_text=True)
    response = client.post(path)
    assert response.headers["Location"] == f"/invoices/{two.second_invoice.number}/pay"
    assert client.get(response.headers["Location"]).status_code == 200
    assert _switches(session) == [(two.second.id, two.first.public_id, two.second.public_id)]
    assert client.get(f"/invoices/{two.stranger_invoice.number}").status_code == 404
    # The session's choice counts only through a membership: a forged choice of a stranger's
    # account acts for the first account again, never for the stranger's.
    with client.session_transaction() as cookie:
        cookie[ACCOUNT_KEY] = two.stranger.public_id
    assert client.get(f"/invoices/{two.stranger_invoice.number}").status_code == 404
    assert client.get(f"/invoices/{two.first_invoice.number}").status_code == 200


def test_a_used_link_of_the_other_account_says_so_instead_of_a_404(
    app: Flask, session: Session, client: FlaskClient, clock: Any
) -> None:
    """Opening an already used link again leads on to its object only within the account
    this browser acts for; for the other account it shows the kind "already used" page."""
    two = TwoAccounts(session)
    session.commit()
    login_as(client, two.user)
    path = two.link(session, two.second, two.second_invoice)
    assert client.post(path).status_code == 303  # now acting for the second account
    assert client.get(path).headers["Location"] == f"/invoices/{two.second_invoice.number}/pay"
    back = two.link(session, two.first, two.first_invoice)
    assert client.post(back).status_code == 303  # acting for the first again
    page = client.get(path)
    assert page.status_code == 410
    assert two.second_invoice.number not in page.get_data(as_text=True)


def test_the_switch_notice_is_marked_for_translation(
    pseudo_app: Flask,  # noqa: F811
    session: Session,
    clock: Any,
) -> None:
    two = TwoAccounts(session)
    for account in (two.first, two.second):
        account.locale = "de_DE"
    session.commit()
    client = app_client(pseudo_app)
    login_as(client, two.user)
    path = two.link(session, two.second, two.second_invoice)
    html = client.get(path, headers={"Accept-Language": "de"}).get_data(as_text=True)
    assert 'data-testid="deep-link-switch"' in html
    data = _brand_data(pseudo_app) | {
        two.first.name,
        two.second.name,
        two.user.email,
        two.user.name,
        two.user.name[:1],
        two.second_invoice.number or "",
    }
    assert unmarked_text(html, data) == []
