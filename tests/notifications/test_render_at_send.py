"""An "invoice issued" email is queued with its subject and rendered when it is first sent
(portal.notifications.queueing.render_pending): in the account's language whatever the sender's,
the same email a queue-time rendering gives, saved before it is sent so that a resend is the
same email and its deep link works."""

from __future__ import annotations

from typing import Any

import flask_babel
import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.auth.models import LoginToken
from portal.billing.issuing import queue_invoice_issued
from portal.i18n import language_for
from portal.mail import render_email
from portal.notifications import delivery
from portal.notifications.deep_links import link_for
from portal.notifications.emails import KINDS
from portal.notifications.models import OutboxEmail
from portal.notifications.queueing import RENDERED_AT_SEND, render_pending
from tests.factories import make_account, make_invoice, make_user
from tests.test_i18n import (  # noqa: F401  (fixtures)
    MARKERS,
    pseudo_app,
    pseudo_translations,
)


def _row(session: Session, invoice_id: int) -> OutboxEmail:
    row = session.scalar(
        select(OutboxEmail).where(OutboxEmail.dedupe_key == f"invoice_issued:{invoice_id}")
    )
    assert row is not None
    return row


def _parts(message: Any) -> dict[str, str]:
    return {
        part.get_content_type(): part.get_content()
        for part in message.walk()
        if not part.is_multipart() and part.get_content_type().startswith("text/")
    }


def test_the_invoice_email_is_rendered_when_sent_in_the_accounts_language(
    pseudo_app: Flask,  # noqa: F811
    session: Session,
    clock: Any,
) -> None:
    account = make_account(session, locale="de_DE", currency="EUR")
    invoice = make_invoice(session, account, (1200, 3400))
    queue_invoice_issued(session, invoice)
    session.commit()
    row = _row(session, invoice.id)
    assert (row.text_body, row.html_body) == RENDERED_AT_SEND
    assert MARKERS.intersection(row.subject)  # the subject is made when it is queued
    # What rendering it at queue time gave (no member reads this address: a plain link).
    with flask_babel.force_locale(language_for(account.locale)):
        target = KINDS["invoice_issued"].target({"invoice": invoice})
        assert target is not None
        link = link_for(session, account, row.to_address, target)
        expected = render_email(
            "invoice_issued", {"account": account, "invoice": invoice, "action_url": link}
        )
    session.rollback()

    sent: list[Any] = []

    def refuse_once(message: Any, email: OutboxEmail) -> None:
        sent.append(message)
        if len(sent) == 1:
            raise OSError("the mail server hung up")

    # NOTE: the sender runs in English (a worker); the German account still reads German.
    english = pseudo_app.test_request_context("/", headers={"Accept-Language": "en"})
    with english, flask_babel.force_locale("en"):
        first = delivery.deliver_due(session, dict(pseudo_app.config), transport=refuse_once)
        session.refresh(row)
        assert (first.sent, row.status, row.attempts) == (0, "failed", 1)
        # Saved before the failed send: the retry sends these very bodies.
        assert (row.text_body, row.html_body) == expected
        clock.advance(hours=1)
        second = delivery.deliver_due(session, dict(pseudo_app.config), transport=refuse_once)
    assert second.sent == 1
    assert len(sent) == 2
    assert _parts(sent[0]) == _parts(sent[1])
    text = _parts(sent[1])["text/plain"]
    assert text.strip() == expected[0].strip()
    assert invoice.number in text and MARKERS.intersection(text)
    assert MARKERS.intersection(_parts(sent[1])["text/html"])


def test_a_members_deep_link_is_made_when_sent_and_works(
    app: Flask, session: Session, clock: Any
) -> None:
    account = make_account(session)
    make_user(session, email=account.billing_email, account=account)
    invoice = make_invoice(session, account, (5000,))
    queue_invoice_issued(session, invoice)
    session.commit()
    assert session.scalar(select(func.count()).select_from(LoginToken)) == 0
    sent: list[Any] = []
    report = delivery.deliver_due(session, dict(app.config), transport=lambda m, e: sent.append(m))
    assert report.sent == 1
    text = _parts(sent[0])["text/plain"]
    [link] = [word for word in text.split() if "/l/" in word]
    # The token behind the link was committed before the email went.
    assert session.scalar(select(func.count()).select_from(LoginToken)) == 1
    response = app.test_client().get(link.removeprefix(app.config["BASE_URL"]))
    assert response.status_code in (200, 302, 303), response.status_code


def test_an_email_whose_invoice_is_gone_is_retried_and_nothing_is_sent(
    app: Flask, session: Session, clock: Any
) -> None:
    account = make_account(session)
    session.add(
        OutboxEmail(
            to_address="someone@example.com",
            subject="Invoice",
            template="invoice_issued",
            text_body="",
            html_body="",
            account_id=account.id,
            attachment_kind="invoice_pdf",
            attachment_ref="999999",
        )
    )
    session.commit()
    sent: list[Any] = []
    report = delivery.deliver_due(session, dict(app.config), transport=lambda m, e: sent.append(m))
    assert (report.sent, report.failed, sent) == (0, 1, [])
    row = session.scalar(select(OutboxEmail))
    assert row is not None and (row.status, row.attempts) == ("failed", 1)
    assert "LookupError" in row.last_error


def test_an_email_without_a_body_is_never_built() -> None:
    with pytest.raises(ValueError, match="no body"):
        delivery.build_message(
            OutboxEmail(to_address="a@example.com", subject="s", text_body="", html_body=""),
            "billing@example.com",
        )


def test_render_pending_leaves_a_rendered_email_alone(app: Flask, session: Session) -> None:
    row = OutboxEmail(
        to_address="a@example.com", subject="s", template="invoice_issued", text_body="Hi"
    )
    assert render_pending(session, row) is False
    assert row.text_body == "Hi"
