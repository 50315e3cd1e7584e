"""The only module that sends email. Queueing writes an outbox row in the caller's transaction."""

from __future__ import annotations

from email.utils import parseaddr
from typing import Any

from flask import current_app, render_template
from sqlalchemy.orm import Session

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
    domain = parseaddr(sender)[1].rpartition("@")[2].strip().lower()
    return domain if domain and all(c.isalnum() or c in ".-" for c in domain) else MESSAGE_ID_DOMAIN


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
    return email
