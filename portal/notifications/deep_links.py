"""Deep links: an email's main button signs its reader in and opens exactly one object.

A link is `/l/<token>`; the token is signed (itsdangerous, a salt of its own, so a sign-in link
is never a deep link and the other way round) and carries a random value, the object's kind and
its id. Only the value's hash is stored, in login_tokens with target_kind/target_id, bound to
the user the email went to. It expires (DEEP_LINK_HOURS) and works once. `GET` shows a confirm
page and changes nothing (mail scanners prefetch links); `POST` consumes it with a conditional
UPDATE (of two tries exactly one wins), signs in and goes to the object.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug.routing import BuildError

from portal import clock
from portal.accounts.models import Account, Membership, User
from portal.auth.models import LoginToken
from portal.billing.models import Invoice
from portal.disputes.models import Dispute
from portal.errors import N_, DomainError
from portal.notifications.emails import Target
from portal.notifications.links import absolute_url
from portal.payments.models import Payment
from portal.subscriptions.models import Subscription

SALT = "portal.deep_link"
PURPOSE = "login"  # a sign-in by another door: the row is told apart by its target


class LinkInvalid(DomainError):
    status = 404
    title = N_("This link is not valid")


class LinkExpired(DomainError):
    status = 410
    title = N_("This link has expired")


class LinkUsed(DomainError):
    status = 410
    title = N_("This link was already used")


class LinkNotYours(DomainError):
    # NOTE: 404 as for another account's object anywhere (the page's words stay kind).
    status = 404
    title = N_("This link was sent to someone else")


@dataclass(frozen=True)
class Opened:
    """A usable link: whose it is, what it opens, and where that lives."""

    token: LoginToken
    user: User
    account: Account
    kind: str
    label: str  # e.g. the invoice number, for the confirm page
    url: str  # absolute, from BASE_URL


def _serializer() -> URLSafeSerializer:
    return _serializer_for(tuple(current_app.config["SECRET_KEYS"]))


@functools.lru_cache(maxsize=8)
def _serializer_for(keys: tuple[str, ...]) -> URLSafeSerializer:
    # NOTE: itsdangerous signs with the *last* key and verifies with all (key rotation); one
    # serializer per set of keys (a batch of reminders signs hundreds of links).
    return URLSafeSerializer(list(reversed(keys)), salt=SALT)


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _lifetime() -> timedelta:
    return timedelta(hours=int(current_app.config.get("DEEP_LINK_HOURS", 72)))


def _member(session: Session, account_id: int, address: str) -> User | None:
    """The customer who reads mail at this address and belongs to the account, if any."""
    return session.scalar(
        select(User)
        .join(Membership, Membership.user_id == User.id)
        .where(
            User.email == address.strip().lower(),
            Membership.account_id == account_id,
            User.disabled_at.is_(None),
            User.staff_role.is_(None),
        )
    )


def issue(session: Session, user: User, target: Target, *, flush: bool = True) -> str:
    """A new single-use token for this user and object (its hash stored, the token returned).
    `flush=False` leaves the row for the caller's flush (a batch of emails flushes once)."""
    now = clock.now()
    raw = secrets.token_urlsafe(32)
    session.add(
        LoginToken(
            user_id=user.id,
            token_hash=_hash(raw),
            purpose=PURPOSE,
            created_at=now,
            expires_at=now + _lifetime(),
            target_kind=target.kind,
            target_id=target.object_id,
        )
    )
    if flush:
        session.flush()
    return _serializer().dumps([raw, target.kind, target.object_id])


_LOOK_UP: Any = object()


def link_for(
    session: Session, account: Account, address: str, target: Target, *, member: Any = _LOOK_UP
) -> str:
    """The main button's address for this recipient: a deep link when the address belongs to a
    member of the account, else the plain page (which asks them to sign in). `member`: that
    member (or None for nobody) when the caller looked it up already, for many at once."""
    user = _member(session, account.id, address) if member is _LOOK_UP else member
    if user is None:
        resolved = _resolve(session, target.kind, target.object_id)
        if resolved is None or resolved[0].id != account.id:
            return absolute_url("billing.dashboard")
        return resolved[2]
    token = issue(session, user, target, flush=member is _LOOK_UP)
    return absolute_url("links.confirm", token=token)


def _url(endpoint: str, fallback: str = "billing.dashboard", **values: Any) -> str:
    """The page's absolute address from BASE_URL (buildable without a request: the worker)."""
    try:
        return absolute_url(endpoint, **values)
    except BuildError:
        return absolute_url(fallback)


def _resolve(session: Session, kind: str, object_id: int) -> tuple[Account, str, str] | None:
    """The object's account, a short label and its page's address (None when it is gone)."""
    if kind == "invoice":
        invoice = session.get(Invoice, object_id)
        if invoice is None or invoice.number is None:
            return None
        endpoint = "checkout.pay_invoice" if invoice.is_payable else "billing.invoice_detail"
        return invoice.account, invoice.number, _url(endpoint, number=invoice.number)
    if kind == "receipt":
        payment = session.get(Payment, object_id)
        if payment is None:
            return None
        account = session.get(Account, payment.account_id)
        label = payment.receipt_number or payment.public_id
        return account, label, _url("payments.receipt", public_id=payment.public_id)  # type: ignore[return-value]
    if kind == "dispute":
        dispute = session.get(Dispute, object_id)
        if dispute is None:
            return None
        account = session.get(Account, dispute.account_id)
        path = _url("disputes.detail", "billing.dashboard", public_id=dispute.public_id)
        return account, dispute.public_id, path  # type: ignore[return-value]
    if kind == "subscription":
        subscription = session.get(Subscription, object_id)
        if subscription is None:
            return None
        path = _url("subscriptions.detail", "billing.dashboard", public_id=subscription.public_id)
        return subscription.account, subscription.price.plan.name, path
    if kind == "payment_methods":
        account = session.get(Account, object_id)
        if account is None:
            return None
        return account, "", _url("checkout.payment_methods")
    return None


def _unsign(token: str) -> tuple[str, str, int]:
    try:
        payload = _serializer().loads(token)
    except BadSignature as error:
        raise LinkInvalid() from error
    if (
        not isinstance(payload, list)
        or len(payload) != 3
        or not isinstance(payload[0], str)
        or not isinstance(payload[1], str)
        or not isinstance(payload[2], int)
        or isinstance(payload[2], bool)
    ):
        raise LinkInvalid()
    return payload[0], payload[1], payload[2]


def open_link(session: Session, token: str) -> Opened:
    """The link's user and object if it can still be used; raises a named error otherwise."""
    raw, kind, object_id = _unsign(token)
    stored = session.scalar(select(LoginToken).where(LoginToken.token_hash == _hash(raw)))
    # NOTE: the binding guard: the row names the one object the link was made for; a token
    # whose kind or id differs from it (even one signed with our key) opens nothing.
    if (
        stored is None
        or stored.purpose != PURPOSE
        or stored.target_kind != kind
        or stored.target_id != object_id
        or stored.user.is_disabled
    ):
        raise LinkInvalid()
    if stored.consumed_at is not None:
        raise LinkUsed(user_id=stored.user_id, kind=kind, object_id=object_id)
    if stored.retired_at is not None or stored.expires_at <= clock.now():
        raise LinkExpired(user_id=stored.user_id)
    resolved = _resolve(session, kind, object_id)
    if resolved is None:
        raise LinkInvalid()
    account, label, path = resolved
    is_member = session.scalar(
        select(Membership.id).where(
            Membership.user_id == stored.user_id, Membership.account_id == account.id
        )
    )
    if is_member is None:
        raise LinkInvalid()
    return Opened(stored, stored.user, account, kind, label, path)


def consume(session: Session, opened: Opened) -> None:
    """Use the link exactly once: of any number of concurrent tries, one wins."""
    now = clock.now()
    claimed = session.execute(
        update(LoginToken)
        .where(
            LoginToken.id == opened.token.id,
            LoginToken.consumed_at.is_(None),
            LoginToken.expires_at > now,
        )
        .values(consumed_at=now)
        .execution_options(synchronize_session=False)
    )
    # NOTE: the single-use guard: the conditional UPDATE changes the row for one caller only.
    if claimed.rowcount != 1:
        raise LinkUsed(user_id=opened.user.id)


def after_use(session: Session, user_id: int, kind: str, object_id: int) -> tuple[int, str] | None:
    """The account id and page a used link still leads its own, signed-in owner to (None if
    nowhere, or when the object is no longer in one of the user's accounts)."""
    resolved = _resolve(session, kind, object_id)
    if resolved is None:
        return None
    account, _label, url = resolved
    is_member = session.scalar(
        select(Membership.id).where(
            Membership.user_id == user_id, Membership.account_id == account.id
        )
    )
    return (account.id, url) if is_member is not None else None


def enrich(session: Session, context: Mapping[str, Any]) -> dict[str, Any]:
    """Objects the templates show that a producer need not pass (a dispute's invoice)."""
    context = dict(context)
    dispute = context.get("dispute")
    if dispute is not None and "invoice" not in context:
        invoice_id = getattr(dispute, "invoice_id", None)
        context["invoice"] = session.get(Invoice, invoice_id) if invoice_id else None
    return context
