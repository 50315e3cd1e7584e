"""Delivering the email outbox: claim due rows safely, send them, retry failures with backoff.

A row is claimed by pushing its `next_attempt_at` one lease into the future and counting the
attempt, in a short transaction (`FOR UPDATE SKIP LOCKED` on PostgreSQL, `BEGIN IMMEDIATE` on
SQLite), so several senders never pick the same row. It is marked sent only after the SMTP server
(or the mail directory) accepted it; a sender that dies mid-way leaves the row to be retried when
its lease runs out. Nothing is ever deleted: after MAIL_MAX_ATTEMPTS a row is kept as "failed".
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, scoped_session

from portal import clock
from portal.db import begin_write, commit, commit_before_network_call
from portal.notifications.models import DELIVERABLE_STATUSES, OutboxEmail, OutboxStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryReport:
    sent: int
    failed: int


def build_message(email: OutboxEmail, sender: str) -> EmailMessage:
    """The MIME message of an outbox row: plain text, with the HTML as an alternative."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = email.to_address
    message["Subject"] = email.subject
    message["Date"] = format_datetime(email.created_at)
    # NOTE: the row's own Message-ID, the same on every attempt: when an SMTP answer was lost
    # and the row is sent again, the receiver (and our tests) can tell it is the same message.
    message["Message-ID"] = email.message_id
    message.set_content(email.text_body)
    if email.html_body:
        message.add_alternative(email.html_body, subtype="html")
    return message


def backoff(attempts: int, base_seconds: int) -> timedelta:
    """30 s, 1 min, 2 min, 4 min … capped at 6 hours."""
    return timedelta(seconds=min(base_seconds * 2 ** max(attempts - 1, 0), 6 * 3600))


def claim_due(session: Session, *, limit: int, lease: timedelta) -> list[int]:
    """Claim up to `limit` due rows for this sender and commit the claim; returns their ids."""
    if isinstance(session, scoped_session):
        session = session()
    now = clock.now()
    # NOTE: on SQLite the claim takes the write lock up front; PostgreSQL skips rows that
    # another sender has locked instead of waiting for them.
    begin_write(session)
    query = (
        select(OutboxEmail)
        .where(OutboxEmail.status.in_(DELIVERABLE_STATUSES), OutboxEmail.next_attempt_at <= now)
        .order_by(OutboxEmail.next_attempt_at, OutboxEmail.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = list(session.scalars(query))
    for row in rows:
        row.attempts += 1
        row.next_attempt_at = now + lease
    # NOTE: the claim is its own unit of work, committed before any SMTP call: no lock is held
    # while a message is sent.
    commit_before_network_call(session)
    return [row.id for row in rows]


Transport = Callable[[EmailMessage, OutboxEmail], None]


def smtp_transport(config: dict[str, Any]) -> Transport:
    def send(message: EmailMessage, _email: OutboxEmail) -> None:
        timeout = config.get("MAIL_TIMEOUT_SECONDS", 20)
        with smtplib.SMTP(config["MAIL_SERVER"], config["MAIL_PORT"], timeout=timeout) as smtp:
            if config.get("MAIL_USE_TLS"):
                smtp.starttls(context=ssl.create_default_context())
            if config.get("MAIL_USERNAME"):
                smtp.login(config["MAIL_USERNAME"], config["MAIL_PASSWORD"])
            smtp.send_message(message)

    return send


def directory_transport(directory: str) -> Transport:
    def write(message: EmailMessage, email: OutboxEmail) -> None:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = clock.now().strftime("%Y%m%dT%H%M%S")
        final = folder / f"{stamp}-{email.id:08d}.eml"
        partial = final.with_suffix(".eml.part")
        partial.write_bytes(bytes(message))
        partial.replace(final)  # readers never see half a file
        log.info("email %s written to %s", email.id, final.name)

    return write


def transport_for(config: dict[str, Any]) -> Transport:
    """SMTP when MAIL_SERVER is set, otherwise .eml files in MAIL_DIR."""
    if config.get("MAIL_SERVER"):
        return smtp_transport(config)
    return directory_transport(config["MAIL_DIR"])


def deliver_due(
    session: Session, config: dict[str, Any], transport: Transport | None = None
) -> DeliveryReport:
    """Send every due outbox row once; failures are rescheduled with backoff."""
    if isinstance(session, scoped_session):
        session = session()
    transport = transport or transport_for(config)
    lease = timedelta(seconds=config["MAIL_CLAIM_LEASE_SECONDS"])
    sent = failed = 0
    while True:
        ids = claim_due(session, limit=config["MAIL_BATCH_SIZE"], lease=lease)
        if not ids:
            break
        for email_id in ids:
            email = session.get(OutboxEmail, email_id)
            if email is None or email.status not in DELIVERABLE_STATUSES:
                session.rollback()
                continue
            message = build_message(email, config["MAIL_FROM"])
            # NOTE: no transaction stays open during the (slow) send; the row is ours by lease.
            email = _snapshot(email)
            session.rollback()
            try:
                transport(message, email)
            except Exception as error:  # noqa: BLE001 - any failure means "try again later"
                failed += 1
                _record_outcome(session, email, error, config)
            else:
                sent += 1
                _record_outcome(session, email, None, config)
        if len(ids) < config["MAIL_BATCH_SIZE"]:
            break
    return DeliveryReport(sent=sent, failed=failed)


def _snapshot(email: OutboxEmail) -> OutboxEmail:
    """A detached copy of the row, readable after its transaction ended."""
    columns = OutboxEmail.__table__.columns.keys()
    return OutboxEmail(**{name: getattr(email, name) for name in columns})


def _record_outcome(
    session: Session, email: OutboxEmail, error: Exception | None, config: dict[str, Any]
) -> None:
    begin_write(session)
    values: dict[str, Any]
    if error is None:
        values = {"status": OutboxStatus.SENT.value, "sent_at": clock.now(), "last_error": ""}
    else:
        # NOTE: the error names the failure, never the message body (it may hold a sign-in link).
        values = {"last_error": f"{type(error).__name__}: {error}"[:1000]}
        if email.attempts >= config["MAIL_MAX_ATTEMPTS"]:
            values.update(status=OutboxStatus.DEAD.value, ended_at=clock.now())
            log.error("email %s failed %s times; kept as a dead letter", email.id, email.attempts)
        else:
            values["status"] = OutboxStatus.FAILED.value
            delay = backoff(email.attempts, config["MAIL_RETRY_BASE_SECONDS"])
            values["next_attempt_at"] = clock.now() + delay
            log.warning(
                "email %s not delivered (attempt %s): %s",
                email.id,
                email.attempts,
                type(error).__name__,
            )
    session.execute(
        update(OutboxEmail)
        .where(OutboxEmail.id == email.id, OutboxEmail.status.in_(DELIVERABLE_STATUSES))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    commit(session)


def cancel_queued(session: Session, cancel_key: str) -> int:
    """Cancel every unsent email queued with `cancel_key` (e.g. "invoice:<id>" once it is
    paid) in the caller's unit of work; returns how many were canceled. An email whose send
    has already begun cannot be called back; every other one is never sent."""
    result = session.execute(
        update(OutboxEmail)
        .where(
            OutboxEmail.cancel_key == cancel_key,
            OutboxEmail.status.in_(DELIVERABLE_STATUSES),
        )
        .values(status=OutboxStatus.CANCELED.value, ended_at=clock.now())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
