"""The only module that sends email. Queueing writes an outbox row in the caller's transaction.

`queue_email` looks the template up in the catalog (portal.notifications.emails): the subject is
written there and translated into the account's language (subject and bodies are rendered in
it, whatever the language of the request or job that queues the email); an essential email
always goes, a non-essential one (reminders before the due date, an expiring card) not to an
account that opted out; billing emails go to the account's extra recipients too, one row each
(each gets its own deep link, bound to that person, or a plain link when the address has no
sign-in of its own).
"""

from __future__ import annotations

from email.utils import parseaddr
from typing import Any

from flask import current_app, render_template
from sqlalchemy import event
from sqlalchemy.orm import Session, scoped_session

from portal.db import after_commit
from portal.notifications.emails import brand, kind_of
from portal.notifications.links import absolute_url
from portal.notifications.models import MESSAGE_ID_DOMAIN, OutboxEmail


def email_globals(template: str) -> dict[str, Any]:
    """What every email template may use: links, the brand, its kind, the preferences page."""
    return {
        "absolute_url": absolute_url,
        "brand": brand(current_app.config),
        "email_kind": kind_of(template),
        "preferences_url": absolute_url("accounts.details") + "#email-preferences",
        "action_url": "",
    }


def render_email(template: str, context: dict[str, Any]) -> tuple[str, str]:
    """The plain-text and HTML bodies of `email/<template>`."""
    return render_bodies(template, {**email_globals(template), **context})


def render_bodies(template: str, context: dict[str, Any]) -> tuple[str, str]:
    """The bodies of `email/<template>` from a context that already holds `email_globals`."""
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
    subject: str | None = None,
    template: str,
    context: dict[str, Any],
    account_id: int | None = None,
    dedupe_key: str | None = None,
    cancel_key: str | None = None,
    is_essential: bool | None = None,
    attachment_kind: str | None = None,
    attachment_ref: str | None = None,
) -> OutboxEmail | None:
    """Render `email/<template>.txt` and `.html` and put them in the outbox; sent after commit.
    (A catalog kind with `context_at_send`, "invoice issued", is rendered when it is first
    sent instead, from what its row names: portal.notifications.queueing.render_pending.)

    Returns the row for `to`, or None when the account opted out of this (non-essential) email.
    The subject and both bodies are in the recipient account's language, whatever language the
    caller runs in: a template in the catalog always gets the catalog's subject (`subject` is
    used only for a template the catalog does not know). `is_essential` defaults to the
    catalog's answer. `cancel_key` (e.g. "invoice:<id>") lets
    `portal.notifications.delivery.cancel_queued` drop the email while it is unsent;
    `attachment_kind="invoice_pdf"` with `attachment_ref=str(invoice.id)` attaches that
    invoice's PDF, rendered when the email is sent. Many at once:
    `portal.notifications.queueing.queue_many`.
    """
    from portal.notifications.queueing import EmailRequest, queue_many

    request = EmailRequest(
        to=to,
        template=template,
        context=context,
        account_id=account_id,
        subject=subject,
        dedupe_key=dedupe_key,
        cancel_key=cancel_key,
        is_essential=is_essential,
        attachment_kind=attachment_kind,
        attachment_ref=attachment_ref,
    )
    return queue_many(session, [request])[0]


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
