"""Delivering the outbox: SMTP or a mail directory, retries with backoff, nothing ever lost, and
rows claimed by one sender only."""

from __future__ import annotations

import email
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.clock import FrozenClock
from portal.extensions import db
from portal.notifications import delivery
from portal.notifications.models import OutboxEmail
from tests.conftest import SmtpServer, app_with_own_database


def _queue(session: Session, n: int = 1, **fields: Any) -> list[OutboxEmail]:
    rows = [
        OutboxEmail(
            to_address=f"to{i}@example.com",
            subject=f"Hello {i}",
            text_body=f"Plain {i}",
            html_body=f"<p>Html {i}</p>",
            **fields,
        )
        for i in range(n)
    ]
    session.add_all(rows)
    # NOTE: deliver_due owns its unit of work (it begins its own writes): what the test
    # queued is committed first, as the request that queued it would have.
    session.commit()
    return rows


def _config(app: Flask, **overrides: Any) -> dict[str, Any]:
    return {**app.config, **overrides}


def test_smtp_delivery_sends_text_and_html(
    app: Flask, session: Session, smtp_server: SmtpServer
) -> None:
    [row] = _queue(session)
    report = delivery.deliver_due(session, _config(app, **smtp_server.config()))
    assert report == delivery.DeliveryReport(sent=1, failed=0)
    [message] = smtp_server.messages
    assert message["To"] == "to0@example.com"
    assert message["Subject"] == "Hello 0"
    types = {part.get_content_type() for part in message.walk()}
    assert {"text/plain", "text/html"} <= types
    session.refresh(row)
    assert (row.status, row.attempts) == ("sent", 1)
    assert row.sent_at is not None


def test_without_mail_server_mail_goes_to_the_mail_directory(
    app: Flask, session: Session, tmp_path: Path
) -> None:
    [row] = _queue(session)
    report = delivery.deliver_due(session, _config(app, MAIL_SERVER="", MAIL_DIR=str(tmp_path)))
    assert report.sent == 1
    [path] = tmp_path.glob("*.eml")
    parsed = email.message_from_bytes(path.read_bytes())
    assert parsed["Subject"] == "Hello 0"
    assert not list(tmp_path.glob("*.part"))
    session.refresh(row)
    assert row.status == "sent"


def test_smtp_down_keeps_the_mail_and_retries_with_backoff(
    app: Flask, session: Session, clock: FrozenClock, smtp_server: SmtpServer
) -> None:
    [row] = _queue(session)
    down = _config(app, MAIL_SERVER="127.0.0.1", MAIL_PORT=1, MAIL_TIMEOUT_SECONDS=2)
    assert delivery.deliver_due(session, down) == delivery.DeliveryReport(sent=0, failed=1)
    session.refresh(row)
    assert (row.status, row.attempts) == ("failed", 1)
    assert row.last_error
    assert row.next_attempt_at == clock() + timedelta(seconds=30)

    # Not due yet: nothing is tried.
    assert delivery.deliver_due(session, down) == delivery.DeliveryReport(sent=0, failed=0)
    clock.advance(seconds=31)
    delivery.deliver_due(session, down)
    session.refresh(row)
    assert row.attempts == 2
    assert row.next_attempt_at == clock() + timedelta(seconds=60)  # backoff doubles

    # The server is back: the same message goes out, once.
    clock.advance(seconds=61)
    up = _config(app, **smtp_server.config())
    assert delivery.deliver_due(session, up).sent == 1
    assert len(smtp_server.messages) == 1
    session.refresh(row)
    assert row.status == "sent"


def test_after_max_attempts_a_mail_is_kept_as_a_dead_letter_not_deleted(
    app: Flask, session: Session, clock: FrozenClock
) -> None:
    [row] = _queue(session)

    def broken(message: Any, outbox: OutboxEmail) -> None:
        raise ConnectionRefusedError("smtp down")

    config = _config(app, MAIL_MAX_ATTEMPTS=3)
    for _ in range(5):
        delivery.deliver_due(session, config, transport=broken)
        clock.advance(hours=7)
    session.refresh(row)
    assert (row.status, row.attempts) == ("dead", 3)
    assert "smtp down" in row.last_error
    assert session.get(OutboxEmail, row.id) is not None


def test_a_claimed_row_is_not_claimed_again_until_its_lease_ends(
    session: Session, clock: FrozenClock
) -> None:
    _queue(session, 3)
    first = delivery.claim_due(session, limit=10, lease=timedelta(minutes=5))
    assert len(first) == 3
    assert delivery.claim_due(session, limit=10, lease=timedelta(minutes=5)) == []
    clock.advance(minutes=6)  # the sender died: the rows come back
    assert sorted(delivery.claim_due(session, limit=10, lease=timedelta(minutes=5))) == sorted(
        first
    )


def test_send_mail_command(app: Flask, session: Session, smtp_server: SmtpServer) -> None:
    _queue(session, 2)
    original = dict(app.config)
    app.config.update(smtp_server.config())
    try:
        result = app.test_cli_runner().invoke(args=["portal", "send-mail"])
    finally:
        app.config.clear()
        app.config.update(original)
    assert result.exit_code == 0, result.output
    assert "sent 2" in result.output
    assert len(smtp_server.messages) == 2


# --- several senders at once, with real commits -------------------------------------------


@pytest.fixture()
def committed_app(backend: str, tmp_path: Path) -> Iterator[Flask]:
    with app_with_own_database(backend, tmp_path, "outbox") as application:
        yield application


def test_concurrent_senders_deliver_each_mail_exactly_once(committed_app: Flask) -> None:
    with committed_app.app_context():
        _queue(db.session, 40)
        db.session.commit()
        db.session.remove()

    delivered: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def record(message: Any, outbox: OutboxEmail) -> None:
        with lock:
            delivered.append(outbox.id)

    errors: list[BaseException] = []

    def sender() -> None:
        with committed_app.app_context():
            barrier.wait()
            config = _config(committed_app, MAIL_BATCH_SIZE=5)
            try:
                delivery.deliver_due(db.session, config, transport=record)
            except Exception as error:  # noqa: BLE001 - collected and asserted below
                errors.append(error)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []  # no sender tripped over another (locks, not luck)
    assert sorted(delivered) == sorted(set(delivered))  # nobody sent a mail twice
    assert len(delivered) == 40
    with committed_app.app_context():
        statuses = set(db.session.scalars(select(OutboxEmail.status)))
        assert statuses == {"sent"}
        db.session.remove()
