"""The whole sign-in, for real: a running server, the outbox delivered by `portal send-mail` to a
real SMTP server, the link read from the message, confirmed, and the dashboard. No token in logs."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.serving import make_server

from portal import create_app
from portal.accounts.models import Account, Membership, User
from portal.extensions import db
from tests.auth.conftest import LINK, Browser
from tests.conftest import SmtpServer, drop_database, fresh_database, make_config, migrate_to_head


@pytest.fixture()
def served_app(backend: str, tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Flask]:
    """The portal on a real werkzeug server over its own committed database, mailing to SMTP."""
    url = fresh_database(backend, tmp_path, "e2e")
    application = create_app(
        make_config(url, WTF_CSRF_ENABLED=True, TESTING=False, **smtp_server.config())
    )
    migrate_to_head(application)
    with application.app_context():
        user = User(email="e2e@example.com", name="Eve Example")
        account = Account(
            name="Eve's Shop", billing_email="e2e@example.com", currency="EUR", invoice_prefix="E2E"
        )
        db.session.add_all([user, account])
        db.session.flush()
        db.session.add(Membership(user_id=user.id, account_id=account.id, role="owner"))
        db.session.commit()
        db.session.remove()
    server = make_server("127.0.0.1", 0, application, threaded=False)
    application.config["BASE_URL"] = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield application
    server.shutdown()
    with application.app_context():
        db.session.remove()
        db.engine.dispose()
    drop_database(url)


def _text_part(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode(part.get_content_charset() or "utf-8")
    raise AssertionError("no text part")


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert match
    return match.group(1)


def test_sign_in_through_a_real_smtp_server_with_no_token_in_the_logs(
    served_app: Flask, smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    base = served_app.config["BASE_URL"]
    browser = Browser()

    # 1. Ask for a link.
    status, page = browser.get(f"{base}/login")
    assert status == 200
    status, page = browser.post(
        f"{base}/login", {"email": "e2e@example.com", "csrf_token": _csrf(page)}
    )
    assert status == 200
    assert "Check your inbox" in page
    assert smtp_server.messages == []  # the request only wrote the outbox

    # 2. The operator's command delivers the outbox over SMTP.
    result = served_app.test_cli_runner().invoke(args=["portal", "send-mail"])
    assert result.exit_code == 0, result.output
    assert "sent 1" in result.output
    assert len(smtp_server.messages) == 1
    message = smtp_server.messages[0]
    assert message["To"] == "e2e@example.com"
    assert message["Subject"] == "Your sign-in link"
    assert message.is_multipart()  # plain text and HTML
    text = _text_part(message)
    assert "expires in 10 minutes" in text
    link = LINK.search(text)
    assert link is not None
    assert link.group(0).startswith(base)
    token = link.group(0).rsplit("/", 1)[1]

    # 3. Open the link: the confirm page names the account and changes nothing.
    status, page = browser.get(link.group(0))
    assert status == 200
    assert "Sign in as e2e@example.com" in page
    assert 'data-testid="other-browser"' not in page  # the same browser that asked

    # 4. Confirm: the dashboard.
    status, page = browser.post(link.group(0), {"csrf_token": _csrf(page)})
    assert status == 200
    assert "Billing overview" in page
    assert "Eve&#39;s Shop" in page or "Eve's Shop" in page

    # 5. A second delivery run sends nothing twice.
    again = served_app.test_cli_runner().invoke(args=["portal", "send-mail"])
    assert "sent 0" in again.output
    assert len(smtp_server.messages) == 1

    # The request log saw every step (werkzeug logs each path), but never the token. (The test's
    # SMTP server logs the message it received: it stands for the recipient's mail system.)
    ours = "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith("mail.log")
    )
    assert "/login/[redacted]" in ours
    assert token not in ours
    assert token[:20] not in ours
