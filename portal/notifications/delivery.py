"""Delivering the email outbox: claim due rows safely, send them, retry failures with backoff.

A row is claimed by pushing its `next_attempt_at` one lease into the future and counting the
attempt, in a short transaction (`FOR UPDATE SKIP LOCKED` on PostgreSQL, `BEGIN IMMEDIATE` on
SQLite), so several senders never pick the same row. It is marked sent only after the SMTP server
(or the mail directory) accepted it; a sender that dies mid-way leaves the row to be retried when
its lease runs out. Each row carries its own Message-ID, so a message sent again after a lost SMTP
answer is recognisable as the same one. Nothing is ever deleted: after MAIL_MAX_ATTEMPTS (or a
permanent 5xx refusal) a row is kept as a dead letter, which staff can see and retry at
/staff/outbox; `cancel_queued` drops unsent rows by their cancel key.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Callable, Sequence
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
from portal.errors import N_
from portal.notifications.models import (
    DELIVERABLE_STATUSES,
    AttachmentKind,
    OutboxEmail,
    OutboxStatus,
)
from portal.notifications.queueing import awaits_rendering, render_pending

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryReport:
    sent: int
    failed: int


def build_message(
    email: OutboxEmail, sender: str, attachment: tuple[str, bytes] | None = None
) -> EmailMessage:
    """The MIME message of an outbox row: plain text, with the HTML as an alternative, and the
    attached PDF when the row asks for one."""
    if not email.text_body:
        # NOTE: never an empty email: a row whose bodies are rendered when it is sent is
        # rendered first (_render_first); this refuses one that was not.
        raise ValueError(f"outbox email {email.id} has no body yet")
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
    if attachment is not None:
        filename, content = attachment
        message.add_attachment(content, maintype="application", subtype="pdf", filename=filename)
    return message


def backoff(attempts: int, base_seconds: int) -> timedelta:
    """30 s, 1 min, 2 min, 4 min … capped at 6 hours."""
    return timedelta(seconds=min(base_seconds * 2 ** max(attempts - 1, 0), 6 * 3600))


def claim_due(
    session: Session, *, limit: int, lease: timedelta, ids: Sequence[int] | None = None
) -> list[int]:
    """Claim up to `limit` due rows for this sender (only among `ids` when given) and commit
    the claim; returns their ids."""
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
    if ids is not None:
        query = query.where(OutboxEmail.id.in_(list(ids)))
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = list(session.scalars(query))
    for row in rows:
        row.attempts += 1
        row.next_attempt_at = now + lease
    # NOTE: the ids are read before the commit expires the rows: after it, each `row.id` would
    # load its row again (one SELECT per email, bodies and all, for nothing).
    claimed = [row.id for row in rows]
    # NOTE: the claim is its own unit of work, committed before any SMTP call: no lock is held
    # while a message is sent.
    commit_before_network_call(session)
    return claimed


Transport = Callable[[EmailMessage, OutboxEmail], None]


class PermanentFailure(Exception):
    """The server refused the message for good (a 5xx answer): retrying cannot help."""


class SmtpTransport:
    """Sends over one SMTP connection, kept open across the messages of a delivery round and
    opened again after any error (a half-broken connection is never reused)."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.smtp: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        config = self.config
        timeout = config.get("MAIL_TIMEOUT_SECONDS", 20)
        smtp = smtplib.SMTP(config["MAIL_SERVER"], config["MAIL_PORT"], timeout=timeout)
        try:
            if config.get("MAIL_USE_TLS"):
                smtp.starttls(context=ssl.create_default_context())
            if config.get("MAIL_USERNAME"):
                smtp.login(config["MAIL_USERNAME"], config["MAIL_PASSWORD"])
        except BaseException:
            smtp.close()
            raise
        return smtp

    def __call__(self, message: EmailMessage, _email: OutboxEmail) -> None:
        if self.smtp is None:
            self.smtp = self._connect()
        try:
            self.smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as refused:
            self.close()
            codes = [code for code, _text in refused.recipients.values()]
            if codes and all(code >= 500 for code in codes):
                raise PermanentFailure(f"recipient refused ({codes[0]})") from refused
            raise
        except smtplib.SMTPResponseException as answer:
            self.close()
            if answer.smtp_code >= 500 and not isinstance(answer, smtplib.SMTPSenderRefused):
                raise PermanentFailure(f"refused by the server ({answer.smtp_code})") from answer
            raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


def smtp_transport(config: Any) -> Transport:
    return SmtpTransport(config)


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


def transport_for(config: Any) -> Transport:
    """SMTP when MAIL_SERVER is set, otherwise .eml files in MAIL_DIR."""
    if config.get("MAIL_SERVER"):
        return smtp_transport(config)
    return directory_transport(config["MAIL_DIR"])


Attachment = tuple[str, bytes]  # (file name, PDF bytes)


def load_attachment(session: Session, email: OutboxEmail) -> Attachment | None:
    """The file an outbox row asks to attach, made at send time (None when it asks for none)."""
    if email.attachment_kind is None:
        return None
    if email.attachment_kind == AttachmentKind.INVOICE_PDF.value:
        from portal.billing.prerender import invoice_pdf_attachment

        return invoice_pdf_attachment(session, int(email.attachment_ref or 0))
    raise PermanentFailure(f"unknown attachment kind {email.attachment_kind!r}")


def deliver_due(
    session: Session,
    config: Any,
    transport: Transport | None = None,
    *,
    ids: Sequence[int] | None = None,
) -> DeliveryReport:
    """Send every due outbox row once (only those among `ids` when given: the rows a request
    just queued, ahead of any backlog); failures are rescheduled with backoff."""
    if isinstance(session, scoped_session):
        session = session()
    own_transport = transport is None
    transport = transport or transport_for(config)
    lease = timedelta(seconds=config["MAIL_CLAIM_LEASE_SECONDS"])
    sent = failed = 0
    try:
        while True:
            claimed = claim_due(session, limit=config["MAIL_BATCH_SIZE"], lease=lease, ids=ids)
            if not claimed:
                break
            for email_id in claimed:
                if _deliver_one(session, config, transport, email_id):
                    sent += 1
                else:
                    failed += 1
            if len(claimed) < config["MAIL_BATCH_SIZE"]:
                break
    finally:
        close = getattr(transport, "close", None)
        if own_transport and close is not None:
            close()
    return DeliveryReport(sent=sent, failed=failed)


def _deliver_one(session: Session, config: Any, transport: Transport, email_id: int) -> bool:
    """Send one claimed row; True when it went (or needs no sending any more)."""
    email = session.get(OutboxEmail, email_id)
    # NOTE: read again after the claim committed: a row canceled (an invoice paid meanwhile)
    # or sent by another sender since is left alone.
    if email is None or email.status not in DELIVERABLE_STATUSES:
        session.rollback()
        return True
    if awaits_rendering(email):
        claimed = _snapshot(email)
        try:
            email = _render_first(session, email_id) or email
        except Exception as error:  # noqa: BLE001 - a row that cannot be rendered is retried
            session.rollback()
            _record_outcome(session, claimed, error, config)
            return False
    email = _snapshot(email)
    try:
        attachment = load_attachment(session, email)
        message = build_message(email, config["MAIL_FROM"], attachment)
    except Exception as error:  # noqa: BLE001 - a row that cannot be built is retried, then dead
        session.rollback()
        _record_outcome(session, email, error, config)
        return False
    # NOTE: no transaction stays open during the (slow) send; the row is ours by lease.
    session.rollback()
    try:
        transport(message, email)
    except Exception as error:  # noqa: BLE001 - any failure means "try again later"
        _record_outcome(session, email, error, config)
        return False
    _record_outcome(session, email, None, config)
    return True


def _render_first(session: Session, email_id: int) -> OutboxEmail | None:
    """Render a row queued with its bodies for later (render_pending) and save them before
    anything is sent: every resend then sends the same email, and a deep link's token in it
    exists. Its own short write transaction, committed; the row as saved."""
    begin_write(session)
    email = session.get(OutboxEmail, email_id, populate_existing=True)
    if email is None or not render_pending(session, email):
        session.rollback()
        return email
    commit(session)
    return session.get(OutboxEmail, email_id)


def _snapshot(email: OutboxEmail) -> OutboxEmail:
    """A detached copy of the row, readable after its transaction ended."""
    columns = OutboxEmail.__table__.columns.keys()
    return OutboxEmail(**{name: getattr(email, name) for name in columns})


def _record_outcome(
    session: Session, email: OutboxEmail, error: Exception | None, config: Any
) -> None:
    begin_write(session)
    values: dict[str, Any]
    # NOTE: only a row still deliverable changes (staff may have retried it meanwhile); a row
    # canceled while its send was under way is recorded as sent, which is what happened.
    still = (*DELIVERABLE_STATUSES, OutboxStatus.CANCELED.value)
    if error is None:
        values = {"status": OutboxStatus.SENT.value, "sent_at": clock.now(), "last_error": ""}
        values["ended_at"] = None
    else:
        # NOTE: the error names the failure, never the message body (it may hold a sign-in link).
        values = {"last_error": f"{type(error).__name__}: {error}"[:1000]}
        still = DELIVERABLE_STATUSES
        if isinstance(error, PermanentFailure) or email.attempts >= config["MAIL_MAX_ATTEMPTS"]:
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
        .where(OutboxEmail.id == email.id, OutboxEmail.status.in_(still))
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


# -- dead letters, for staff -------------------------------------------------------------------


def undelivered(session: Session, *, limit: int = 100) -> list[OutboxEmail]:
    """Dead letters and emails whose last try failed, newest first (for /staff/outbox)."""
    return list(
        session.scalars(
            select(OutboxEmail)
            .where(OutboxEmail.status.in_((OutboxStatus.DEAD.value, OutboxStatus.FAILED.value)))
            .order_by(OutboxEmail.status, OutboxEmail.id.desc())
            .limit(limit)
        )
    )


def retry_dead_letter(
    session: Session, email_id: int, *, actor_user_id: int, ip: str | None = None
) -> OutboxEmail:
    """Give a dead letter (or a failing email) a fresh set of attempts, due now; audited.
    The caller's unit of work commits; delivery is asked for after that commit."""
    from portal.audit.services import record
    from portal.errors import NotFound

    email = session.scalar(
        select(OutboxEmail)
        .where(
            OutboxEmail.id == email_id,
            OutboxEmail.status.in_((OutboxStatus.DEAD.value, OutboxStatus.FAILED.value)),
        )
        .with_for_update()
    )
    if email is None:
        raise NotFound(N_("There is no undelivered email with that number."))
    before = {"status": email.status, "attempts": email.attempts}
    email.status = OutboxStatus.PENDING.value
    email.attempts = 0
    email.next_attempt_at = clock.now()
    email.ended_at = None
    record(
        session,
        "outbox.retry",
        actor_kind="staff",
        actor_user_id=actor_user_id,
        account_id=email.account_id,
        target_type="outbox_email",
        target_id=email.id,
        before=before,
        after={"status": email.status, "attempts": 0},
        ip=ip,
    )
    session.flush()
    return email
