"""Putting emails in the outbox, one or many at a time (portal.mail.queue_email is one request).

Each email is rendered in its recipient account's language: subject (always the catalog's, see
portal.notifications.emails) and both bodies, whatever the language of the request or job that
queues it. A batch (the reminder run) pays once for what its emails share: one query for the
accounts' preferences, one for the members the deep links are bound to, one switch of the
language per language, the brand and the links every email shows per (template, language), and
one flush for all rows. The bodies themselves differ per email (number, amount, date, link) and
are rendered for each; for a kind with `context_at_send` ("invoice issued", one per invoice of a
billing run) they are rendered when the email is first sent (render_pending), in the same
language, and saved on the row before it goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import flask_babel
from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.accounts.models import Account, Membership, User
from portal.db import insert_rows
from portal.i18n import language_for
from portal.notifications import deep_links
from portal.notifications.emails import EmailKind, kind_of, subject_for
from portal.notifications.models import EmailPreference, OutboxEmail, new_message_id
from portal.notifications.preferences import extra_recipients


@dataclass
class EmailRequest:
    """One email to queue: what queue_email takes (see portal.mail.queue_email)."""

    to: str
    template: str
    context: dict[str, Any]
    account_id: int | None = None
    # Used only for a template the catalog does not know: a catalog email's subject is always
    # the catalog's, in the account's language (a subject a caller translated would be in the
    # caller's language: the worker's, or another person's request).
    subject: str | None = None
    dedupe_key: str | None = None
    cancel_key: str | None = None
    is_essential: bool | None = None
    attachment_kind: str | None = None
    attachment_ref: str | None = None
    account: Account | None = field(default=None, repr=False)


@dataclass
class _Recipient:
    request: EmailRequest
    kind: EmailKind | None
    address: str
    dedupe_key: str | None
    essential: bool
    attachment: tuple[str | None, str | None]
    context: dict[str, Any]
    language: str | None


_NOT_LOOKED_UP = object()


def _preferences(session: Session, account_ids: set[int]) -> dict[int, EmailPreference]:
    if not account_ids:
        return {}
    return {
        prefs.account_id: prefs
        for prefs in session.scalars(
            select(EmailPreference).where(EmailPreference.account_id.in_(sorted(account_ids)))
        )
    }


def _members(session: Session, pairs: set[tuple[int, str]]) -> dict[tuple[int, str], User]:
    """The customers who read mail at these addresses and belong to these accounts (the same
    rule as deep_links' own lookup, for many at once)."""
    if not pairs:
        return {}
    account_ids = sorted({account_id for account_id, _ in pairs})
    addresses = sorted({address for _, address in pairs})
    found: dict[tuple[int, str], User] = {}
    for start in range(0, len(addresses), 500):
        rows = session.execute(
            select(User, Membership.account_id)
            .join(Membership, Membership.user_id == User.id)
            .where(
                User.email.in_(addresses[start : start + 500]),
                Membership.account_id.in_(account_ids),
                User.disabled_at.is_(None),
                User.staff_role.is_(None),
            )
        )
        for user, account_id in rows:
            if (account_id, user.email) in pairs:
                found[(account_id, user.email)] = user
    return found


def _recipients(
    session: Session, requests: Sequence[EmailRequest]
) -> list[list[_Recipient] | None]:
    """Each request's recipients (None: opted out), with what each of their rows needs."""
    accounts: list[Account | None] = []
    for request in requests:
        account = request.account or request.context.get("account")
        if account is None and request.account_id is not None:
            account = session.get(Account, request.account_id)
        accounts.append(account)
    prefs = _preferences(session, {a.id for a in accounts if a is not None})
    # NOTE: the language per locale once per batch (finding the catalogs walks the disk).
    languages = {
        locale: language_for(locale) for locale in {a.locale for a in accounts if a is not None}
    }
    planned: list[list[_Recipient] | None] = []
    for request, account in zip(requests, accounts, strict=True):
        kind = kind_of(request.template)
        essential = (
            request.is_essential
            if request.is_essential is not None
            else (kind.essential if kind else True)
        )
        account_prefs = prefs.get(account.id) if account is not None else None
        # NOTE: the opt-out guard: only a non-essential email can be silenced; receipts, sign-in
        # links, dispute replies and failed payments always go.
        opted_out = (
            kind is not None and kind.opt_out and getattr(account_prefs, kind.opt_out, False)
        )
        if not essential and opted_out:
            planned.append(None)
            continue
        addresses = [request.to]
        if kind is not None and kind.billing and account_prefs is not None:
            addresses += extra_recipients(account_prefs)
        attachment: tuple[str | None, str | None] = (
            request.attachment_kind,
            request.attachment_ref,
        )
        if attachment[0] is None and kind is not None:
            attachment = kind.attachment(request.context) or (None, None)
        context = deep_links.enrich(session, request.context)
        if account is not None:
            context.setdefault("account", account)
        language = languages[account.locale] if account is not None else None
        rows: list[_Recipient] = []
        seen: set[str] = set()
        for address in addresses:
            key = address.strip().lower()
            if key in seen:
                continue
            seen.add(key)
            dedupe = request.dedupe_key
            if rows and dedupe is not None:
                dedupe = f"{dedupe}/{len(seen)}"
            rows.append(
                _Recipient(request, kind, address, dedupe, essential, attachment, context, language)
            )
        planned.append(rows)
    return planned


# NOTE: the bodies of a row whose kind renders them when it is first sent (see render_pending).
# A real email always has a plain-text body, so empty bodies say "not rendered yet".
RENDERED_AT_SEND = ("", "")


def awaits_rendering(email: OutboxEmail) -> bool:
    """The row was queued with RENDERED_AT_SEND and not rendered yet."""
    return (email.text_body, email.html_body) == RENDERED_AT_SEND


def _at_send(row: _Recipient) -> bool:
    return (
        row.kind is not None
        and row.kind.context_at_send is not None
        and row.attachment[1] is not None
        and "action_url" not in row.context
    )


def _bodies(
    session: Session,
    row: _Recipient,
    own: dict[str, Any],
    members: dict[tuple[int, str], User] | None,
    shared: dict[str, dict[str, Any]],
) -> tuple[str, str]:
    """The row's bodies in the active language, with its button's link for this recipient
    (`members`: the batch's members looked up at once; None: look this recipient up)."""
    from portal.mail import email_globals, render_bodies

    account = own.get("account")
    target = row.kind.target(own) if row.kind is not None else None
    if target is not None and "action_url" not in own and account is not None:
        key = (account.id, row.address.strip().lower())
        looked_up = {} if members is None else {"member": members.get(key)}
        own["action_url"] = deep_links.link_for(session, account, row.address, target, **looked_up)
    if row.request.template not in shared:
        shared[row.request.template] = email_globals(row.request.template)
    return render_bodies(row.request.template, {**shared[row.request.template], **own})


def render_pending(session: Session, email: OutboxEmail) -> bool:
    """Render the bodies of a row queued with RENDERED_AT_SEND, in its account's language, from
    what its kind reads again (the invoice), and store them on the row (so every resend sends
    the same email); a deep link's token row is added too. True when it rendered: the caller
    commits before it sends. Raises LookupError when what the email is about is gone.

    NOTE: why not at queue time: a billing run queues one such email per invoice, and their
    rendering was a fifth of the run's time; the mail worker renders them beside the run.
    """
    if not awaits_rendering(email):
        return False
    kind = kind_of(email.template)
    if kind is None or kind.context_at_send is None:
        return False
    context = kind.context_at_send(session, email)
    if context is None:
        raise LookupError(f"what outbox email {email.id} is about is gone")
    account = context["account"]
    request = EmailRequest(to=email.to_address, template=email.template, context=context)
    row = _Recipient(
        request,
        kind,
        email.to_address,
        email.dedupe_key,
        email.is_essential,
        (email.attachment_kind, email.attachment_ref),
        deep_links.enrich(session, context),
        language_for(account.locale),
    )
    with flask_babel.force_locale(row.language):
        # NOTE: the member is looked up here, one row at a time (link_for): this runs once
        # per email, in the sender.
        email.text_body, email.html_body = _bodies(session, row, dict(row.context), None, {})
    return True


def queue_many(session: Session, requests: Sequence[EmailRequest]) -> list[OutboxEmail | None]:
    """Queue every request's email (and its extra recipients' copies) in the caller's unit of
    work; returns, per request, the row for its `to` (None when the account opted out)."""
    from portal.mail import deliver_after_commit

    fields, firsts = _outbox_fields(session, requests)
    every = [OutboxEmail(**row) for row in fields]
    session.add_all(every)
    # NOTE: one flush for the batch (the rows and their deep links' tokens go in together).
    session.flush()
    for email in every:
        deliver_after_commit(session, email.id)
    return [every[first] if first is not None else None for first in firsts]


def queue_many_as_rows(session: Session, requests: Sequence[EmailRequest]) -> list[int | None]:
    """queue_many with the same rows, inserted as plain rows in one statement (no unit-of-work
    objects; the billing run's "invoice issued" emails, one per invoice); returns, per request,
    the id of the row for its `to` (None when the account opted out).

    NOTE: only for emails whose bodies are rendered when they are sent (RENDERED_AT_SEND): a
    body rendered now may make deep-link token objects, which a flush must write first."""
    from portal.mail import deliver_after_commit

    fields, firsts = _outbox_fields(session, requests)
    if any(not _unrendered(row) for row in fields):
        raise ValueError("queue_many_as_rows takes only emails rendered when they are sent")
    ids = insert_rows(session, OutboxEmail.__table__, fields, ids=True)
    for email_id in ids:
        deliver_after_commit(session, email_id)
    return [ids[first] if first is not None else None for first in firsts]


def _unrendered(row: dict[str, Any]) -> bool:
    return (row["text_body"], row["html_body"]) == RENDERED_AT_SEND


def _outbox_fields(
    session: Session, requests: Sequence[EmailRequest]
) -> tuple[list[dict[str, Any]], list[int | None]]:
    """The outbox rows of the requests, as column values in the order they go in, and per
    request the index of the row for its `to` (None when the account opted out)."""
    from portal.mail import message_id_domain

    planned = _recipients(session, requests)
    wanted: set[tuple[int, str]] = set()
    for rows in planned:
        for row in rows or ():
            account = row.context.get("account")
            if (
                row.kind is not None
                and account is not None
                and "action_url" not in row.context
                and not _at_send(row)
            ):
                wanted.add((account.id, row.address.strip().lower()))
    members = _members(session, wanted)
    domain = message_id_domain(current_app.config.get("MAIL_FROM", ""))
    by_language: dict[str | None, list[_Recipient]] = {}
    for rows in planned:
        for row in rows or ():
            by_language.setdefault(row.language, []).append(row)
    made: dict[int, int] = {}
    every: list[dict[str, Any]] = []
    for language, rows in by_language.items():
        shared: dict[str, dict[str, Any]] = {}
        # NOTE: one switch of the language for all its emails (entering it costs a catalog
        # lookup); everything in it, subject and bodies, is in the recipient account's language.
        with flask_babel.force_locale(language) if language else nullcontext():
            for row in rows:
                own = dict(row.context)
                account = own.get("account")
                if row.kind is not None:
                    subject = subject_for(row.kind, own)
                else:
                    subject = row.request.subject or ""
                if _at_send(row):
                    text_body, html_body = RENDERED_AT_SEND
                else:
                    text_body, html_body = _bodies(session, row, own, members, shared)
                made.setdefault(id(row.request), len(every))
                every.append(
                    {
                        "message_id": new_message_id(domain),
                        "cancel_key": row.request.cancel_key,
                        "is_essential": row.essential,
                        "attachment_kind": row.attachment[0],
                        "attachment_ref": row.attachment[1],
                        "to_address": row.address,
                        "subject": subject,
                        "template": row.request.template,
                        "text_body": text_body,
                        "html_body": html_body,
                        "account_id": (
                            row.request.account_id
                            if row.request.account_id is not None
                            else getattr(account, "id", None)
                        ),
                        "dedupe_key": row.dedupe_key,
                    }
                )
    firsts = [
        made.get(id(request)) if rows else None
        for request, rows in zip(requests, planned, strict=True)
    ]
    return every, firsts
