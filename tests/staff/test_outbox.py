"""Staff see the emails that could not be delivered and retry them (portal/staff/outbox.py)."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import worker
from portal.audit.models import AuditEvent
from portal.notifications import delivery
from portal.notifications.models import OutboxEmail
from tests.conftest import SmtpServer, login_as
from tests.factories import make_user
from tests.notifications.auth_objects import make_dead_letter


def _staff(client: FlaskClient, session: Session) -> None:
    login_as(client, make_user(session, staff_role="support"))


def test_staff_see_dead_letters_and_failing_emails_but_never_their_bodies(
    client: FlaskClient, session: Session
) -> None:
    make_dead_letter(session, subject="Invoice INV-7 is ready")
    failing = make_dead_letter(session, subject="Your sign-in link", attempts=2)
    failing.status = "failed"
    failing.text_body = "Sign in: http://portal.test/login/SECRET-TOKEN"
    session.commit()
    _staff(client, session)
    page = client.get("/staff/outbox")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Invoice INV-7 is ready" in html and "Dead letter" in html
    assert "Your sign-in link" in html and "Retrying" in html
    assert "ConnectionRefusedError: smtp down" in html
    assert "SECRET-TOKEN" not in html


def test_an_empty_outbox_says_everything_was_delivered(
    client: FlaskClient, session: Session
) -> None:
    _staff(client, session)
    html = client.get("/staff/outbox").get_data(as_text=True)
    assert "Every email was delivered" in html


def test_retry_gives_a_dead_letter_new_attempts_audits_it_and_asks_for_delivery(
    app: Flask, client: FlaskClient, session: Session, smtp_server: SmtpServer
) -> None:
    huey = worker.jobs(app).huey
    huey.flush()
    row = make_dead_letter(session)
    _staff(client, session)
    response = client.post(f"/staff/outbox/{row.id}/retry")
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/staff/outbox")
    session.refresh(row)
    assert (row.status, row.attempts, row.ended_at) == ("pending", 0, None)
    event = session.scalar(select(AuditEvent).where(AuditEvent.action == "outbox.retry"))
    assert event is not None and event.before == {"status": "dead", "attempts": 12}
    [job] = huey.pending()
    assert list(job.args[0]) == [row.id]
    huey.flush()
    report = delivery.deliver_due(session, {**app.config, **smtp_server.config()})
    assert report.sent == 1 and len(smtp_server.messages) == 1
    assert "Email" in client.get("/staff/outbox").get_data(as_text=True)


def test_only_undelivered_emails_can_be_retried(client: FlaskClient, session: Session) -> None:
    sent = make_dead_letter(session)
    sent.status = "sent"
    session.commit()
    _staff(client, session)
    assert client.post(f"/staff/outbox/{sent.id}/retry").status_code == 404
    assert client.post("/staff/outbox/99999999/retry").status_code == 404
    assert client.post("/staff/outbox/not-a-number/retry").status_code == 404
    assert session.get(OutboxEmail, sent.id).status == "sent"


def test_customers_never_learn_the_outbox_exists(client: FlaskClient, session: Session) -> None:
    from tests.factories import make_account

    row = make_dead_letter(session)
    login_as(client, make_user(session, account=make_account(session)))
    assert client.get("/staff/outbox").status_code == 404
    assert client.post(f"/staff/outbox/{row.id}/retry").status_code == 404
    session.refresh(row)
    assert row.status == "dead"
