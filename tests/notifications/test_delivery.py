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
from tests.notifications.smtp_faults import FaultySmtp


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


# --- issue 12: faults, stable Message-IDs, dead letters, cancel, attachments -----------------


@pytest.fixture()
def faulty_smtp() -> Iterator[FaultySmtp]:
    server = FaultySmtp(stall_seconds=1.5)
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("fault", ["refuse", "stall", "drop_after_data"])
def test_a_misbehaving_smtp_server_loses_nothing_and_each_message_keeps_its_message_id(
    app: Flask, session: Session, clock: FrozenClock, faulty_smtp: FaultySmtp, fault: str
) -> None:
    rows = _queue(session, 3)
    config = _config(app, **faulty_smtp.config(timeout=0.5))
    faulty_smtp.mode = fault
    assert delivery.deliver_due(session, config) == delivery.DeliveryReport(sent=0, failed=3)
    for row in rows:
        session.refresh(row)
        assert (row.status, row.attempts) == ("failed", 1)

    faulty_smtp.mode = "ok"  # the server recovers
    clock.advance(seconds=31)
    assert delivery.deliver_due(session, config) == delivery.DeliveryReport(sent=3, failed=0)
    for row in rows:
        session.refresh(row)
        assert row.status == "sent"
    received = faulty_smtp.message_ids()
    # Nothing lost, nothing new: every message that arrived carries its row's Message-ID.
    assert set(received) == {row.message_id for row in rows}
    if fault == "refuse":
        assert set(received.values()) == {1}  # refused means not taken: each arrived once
    else:
        # The server kept the first copy but its answer was lost: the resend is the same
        # message, recognisable by its Message-ID (receivers and our tests drop it).
        assert set(received.values()) == {2}


def test_smtp_down_for_an_hour_loses_nothing_and_sends_nothing_twice(
    app: Flask, session: Session, clock: FrozenClock
) -> None:
    rows = _queue(session, 3)
    server = FaultySmtp()  # its port is reserved but nothing listens yet: connection refused
    config = _config(app, **server.config(timeout=0.5))
    for _minute in range(60):  # the worker's sweep, once a minute, for an hour
        assert delivery.deliver_due(session, config).sent == 0
        clock.advance(minutes=1)
    for row in rows:
        session.refresh(row)
        assert row.status == "failed"
        assert 5 <= row.attempts <= 8  # backing off: 30 s, 1, 2, 4, 8, 16, 32 min
    server.start()
    try:
        for _minute in range(60):
            delivery.deliver_due(session, config)
            clock.advance(minutes=1)
    finally:
        server.stop()
    for row in rows:
        session.refresh(row)
        assert row.status == "sent"
    assert server.message_ids() == {row.message_id: 1 for row in rows}


def test_a_permanent_refusal_is_a_dead_letter_at_once(
    app: Flask, session: Session, faulty_smtp: FaultySmtp
) -> None:
    [row] = _queue(session)
    faulty_smtp.mode = "refuse_permanently"
    delivery.deliver_due(session, _config(app, **faulty_smtp.config()))
    session.refresh(row)
    assert (row.status, row.attempts) == ("dead", 1)
    assert "550" in row.last_error


def test_the_message_id_is_the_rows_and_the_same_on_every_attempt(
    app: Flask, session: Session, clock: FrozenClock
) -> None:
    [row] = _queue(session)
    seen: list[str] = []

    def flaky(message: Any, outbox: OutboxEmail) -> None:
        seen.append(str(message["Message-ID"]))
        if len(seen) < 3:
            raise TimeoutError("no answer")

    for _ in range(3):
        delivery.deliver_due(session, _config(app), transport=flaky)
        clock.advance(hours=1)
    session.refresh(row)
    assert row.status == "sent"
    assert seen == [row.message_id] * 3
    assert row.message_id.startswith("<") and row.message_id.endswith(">")


def test_queue_email_gives_each_row_its_own_message_id_from_the_senders_domain(
    app: Flask, session: Session
) -> None:
    from portal.mail import message_id_domain, queue_email

    with app.test_request_context():
        first, second = (
            queue_email(
                session,
                to="a@example.com",
                subject="Hi",
                template="login_link",
                context={"link": "http://x/login/t", "minutes": 10, "user": None},
            )
            for _ in range(2)
        )
    assert first.message_id != second.message_id
    assert first.message_id.endswith("@example.com>")
    assert message_id_domain("Billing <billing@Example.COM>") == "example.com"
    assert message_id_domain("nonsense") == "billing-portal.invalid"


def test_cancel_queued_drops_unsent_emails_and_leaves_the_rest(
    app: Flask, session: Session, clock: FrozenClock
) -> None:
    reminder, other = _queue(session, 2)
    reminder.cancel_key = "invoice:7"
    sent_before = OutboxEmail(
        to_address="x@example.com", subject="Old", text_body="t", cancel_key="invoice:7"
    )
    sent_before.status = "sent"
    session.add(sent_before)
    session.commit()

    assert delivery.cancel_queued(session, "invoice:7") == 1
    session.commit()
    delivered: list[int] = []
    delivery.deliver_due(session, _config(app), transport=lambda m, e: delivered.append(e.id))
    assert delivered == [other.id]
    session.refresh(reminder)
    session.refresh(sent_before)
    assert (reminder.status, sent_before.status) == ("canceled", "sent")
    assert reminder.ended_at is not None


def test_an_email_canceled_after_its_claim_is_not_sent(
    app: Flask, session: Session, clock: FrozenClock
) -> None:
    [row] = _queue(session)
    row.cancel_key = "invoice:9"
    session.commit()
    [claimed] = delivery.claim_due(session, limit=10, lease=timedelta(minutes=5))
    # The invoice is paid while the sender holds the row: the reminder must not go.
    assert delivery.cancel_queued(session, "invoice:9") == 1
    session.commit()
    delivered: list[int] = []
    delivery._deliver_one(session, _config(app), lambda m, e: delivered.append(e.id), claimed)
    assert delivered == []
    session.refresh(row)
    assert row.status == "canceled"


def test_an_invoice_pdf_is_attached_when_the_email_is_sent(
    app: Flask, session: Session, clock: FrozenClock
) -> None:
    from tests.factories import make_account, make_invoice

    account = make_account(session)
    invoice = make_invoice(session, account, (1200,))
    session.commit()
    assert invoice.number
    _queue(session, attachment_kind="invoice_pdf", attachment_ref=str(invoice.id))
    messages: list[Any] = []
    report = delivery.deliver_due(session, _config(app), transport=lambda m, e: messages.append(m))
    assert report.sent == 1
    [message] = messages
    [attached] = list(message.iter_attachments())
    assert attached.get_content_type() == "application/pdf"
    assert attached.get_filename().endswith(".pdf")
    assert attached.get_content().startswith(b"%PDF")


def test_an_attachment_that_cannot_be_made_is_retried_then_dead(
    app: Flask, session: Session, clock: FrozenClock
) -> None:
    [row] = _queue(session, attachment_kind="invoice_pdf", attachment_ref="999999")
    config = _config(app, MAIL_MAX_ATTEMPTS=2)
    for _ in range(3):
        delivery.deliver_due(session, config, transport=lambda m, e: None)
        clock.advance(hours=7)
    session.refresh(row)
    assert (row.status, row.attempts) == ("dead", 2)
    assert "LookupError" in row.last_error


def test_a_row_another_sender_holds_is_skipped_not_waited_for(
    committed_app: Flask, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("row locks are PostgreSQL's; on SQLite a claim takes the one writer lock")
    from sqlalchemy import text

    with committed_app.app_context():
        ids = [row.id for row in _queue(db.session, 3)]
        db.session.remove()
        holder = db.engine.connect()
        held = holder.begin()
        # Another sender is mid-claim on the first row (its transaction holds the row lock).
        holder.execute(
            text("SELECT id FROM outbox_emails WHERE id = :id FOR UPDATE"), {"id": ids[0]}
        )
        claimed: list[int] = []

        def claim() -> None:
            with committed_app.app_context():
                try:
                    claimed.extend(
                        delivery.claim_due(db.session, limit=10, lease=timedelta(minutes=5))
                    )
                finally:
                    db.session.remove()

        thread = threading.Thread(target=claim)
        thread.start()
        thread.join(timeout=5)
        finished = not thread.is_alive()
        held.rollback()
        holder.close()
        thread.join(timeout=30)
    assert finished, "the claim waited for a row another sender holds"
    assert sorted(claimed) == ids[1:]


def test_each_email_costs_one_read_and_one_write(app: Flask, session: Session) -> None:
    """Per email: the read just before its send (the cancel check) and the write of its
    outcome; per batch: the claim. The claim's own rows are not loaded again one by one."""
    from sqlalchemy import event

    _queue(session, 12)
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.lstrip().split(None, 1)[0].upper())

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", note)
    try:
        report = delivery.deliver_due(
            session, _config(app, MAIL_BATCH_SIZE=5), transport=lambda m, e: None
        )
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert report.sent == 12
    # 3 claims (5 + 5 + 2) and 12 reads; 3 claim updates and 12 outcomes.
    assert statements.count("SELECT") == 3 + 12
    assert statements.count("UPDATE") == 3 + 12
