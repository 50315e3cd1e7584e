"""The only module that sends email. Queueing writes an outbox row in the caller's transaction."""

from __future__ import annotations

from email.utils import parseaddr
from typing import Any

from flask import current_app, render_template
from sqlalchemy import event
from sqlalchemy.orm import Session, scoped_session

from portal.db import after_commit
from portal.notifications.links import absolute_url
from portal.notifications.models import MESSAGE_ID_DOMAIN, OutboxEmail, new_message_id


def render_email(template: str, context: dict[str, Any]) -> tuple[str, str]:
    """The plain-text and HTML bodies of `email/<template>`."""
    context = {"absolute_url": absolute_url, **context}
    return (
        render_template(f"email/{template}.txt", **context),
        render_template(f"email/{template}.html", **context),
    )


def message_id_domain(sender: str) -> str:
    """The domain of the sender's address (Message-IDs name the domain they come from)."""
    _local, at, domain = parseaddr(sender)[1].rpartition("@")
    domain = domain.strip().lower()
    if at and "." in domain and all(c.isascii() and (c.isalnum() or c in ".-") for c in domain):
        return domain
    return MESSAGE_ID_DOMAIN


def queue_email(
    session: Session,
    *,
    to: str,
    subject: str,
    template: str,
    context: dict[str, Any],
    account_id: int | None = None,
    dedupe_key: str | None = None,
    cancel_key: str | None = None,
    is_essential: bool = True,
    attachment_kind: str | None = None,
    attachment_ref: str | None = None,
) -> OutboxEmail:
    """Render `email/<template>.txt` and `.html` and put them in the outbox; sent after commit.

    `cancel_key` (e.g. "invoice:<id>") lets `portal.notifications.delivery.cancel_queued` drop
    the email while it is unsent; `is_essential=False` marks an email the account may opt out
    of; `attachment_kind="invoice_pdf"` with `attachment_ref=str(invoice.id)` attaches that
    invoice's PDF, rendered when the email is sent.
    """
    text_body, html_body = render_email(template, context)
    email = OutboxEmail(
        message_id=new_message_id(message_id_domain(current_app.config.get("MAIL_FROM", ""))),
        cancel_key=cancel_key,
        is_essential=is_essential,
        attachment_kind=attachment_kind,
        attachment_ref=attachment_ref,
        to_address=to,
        subject=subject,
        template=template,
        text_body=text_body,
        html_body=html_body,
        account_id=account_id,
        dedupe_key=dedupe_key,
    )
    session.add(email)
    session.flush()
    deliver_after_commit(session, email.id)
    return email


_QUEUED = "portal.mail.queued"
DELIVER_SOON = "portal.deliver_soon"


def deliver_after_commit(session: Session, email_id: int) -> None:
    """Once this unit of work commits, enqueue one delivery job for every email it queued
    (or made due again, as a staff retry does).

    NOTE: only after the commit: a job that ran before it would find no row, and a unit of work
    that rolls back must send nothing. An unreachable queue loses nothing either: the rows are
    committed and the worker's sweep delivers them.
    """
    plain = session() if isinstance(session, scoped_session) else session
    queued: list[int] | None = plain.info.get(_QUEUED)
    if queued is not None:
        queued.append(email_id)
        return
    queued = plain.info[_QUEUED] = [email_id]
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    # NOTE: set by portal.worker.init_app; without it the worker's sweep delivers.
    deliver_soon = app.extensions.get(DELIVER_SOON)

    def enqueue() -> None:
        plain.info.pop(_QUEUED, None)
        if deliver_soon is not None:
            deliver_soon(queued)

    after_commit(plain, enqueue)


def rehearse_delivery(session: Session) -> None:
    """What queueing an email costs after the commit (one delivery job), for a row that does not
    exist: POST /login for an unknown address must cost what it costs for a known one."""
    plain = session() if isinstance(session, scoped_session) else session
    if plain.info.get(_QUEUED) is not None:
        return
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    deliver_soon = app.extensions.get(DELIVER_SOON)
    if deliver_soon is not None:
        after_commit(plain, lambda: deliver_soon([]))  # an empty list: claims nothing


@event.listens_for(Session, "after_soft_rollback")
def _forget_queued(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:
        session.info.pop(_QUEUED, None)
