"""Deep links from emails: `GET /l/<token>` asks for one tap, `POST` signs in and opens the one
object the link was made for (see portal.notifications.deep_links).

A person in several accounts may open a link about another account than the one this browser
acts for: the confirm page says which account the tap switches to, and the POST switches (the
link proves the object is theirs through that account's membership), audited, before it
opens the object: never a 404 for their own invoice, never another account's page.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response, render_template, request
from flask_limiter.util import get_remote_address
from flask_login import current_user
from sqlalchemy import select

from portal.accounts.models import Account, Membership
from portal.audit.services import Actor
from portal.auth import limits
from portal.auth.sessions import choose_account, sign_in, signed_in_user
from portal.extensions import db, limiter
from portal.notifications import deep_links
from portal.web import see_other

bp = Blueprint("links", __name__)

_PROBLEMS = {
    deep_links.LinkExpired: "expired",
    deep_links.LinkUsed: "used",
    deep_links.LinkNotYours: "not_yours",
}


def _problem(error: deep_links.DomainError) -> tuple[str, int]:
    """One kind page for every refusal; it names nothing the link was about."""
    kind = _PROBLEMS.get(type(error), "invalid")
    return render_template("links/problem.html", kind=kind), error.status


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _active_account() -> Account | None:
    """The account this browser acts for now (None when nobody is signed in)."""
    account = getattr(current_user, "account", None) if current_user.is_authenticated else None
    return account if isinstance(account, Account) else None


def _first_account_id(user_id: int) -> int | None:
    """The account a fresh sign-in acts for until another is chosen."""
    return db.session.scalar(
        select(Membership.account_id)
        .where(Membership.user_id == user_id)
        .order_by(Membership.id)
        .limit(1)
    )


def _open(token: str) -> deep_links.Opened | Response | tuple[str, int]:
    """The usable link, or the answer for one that is not (used links of the signed-in owner
    simply go on to their object)."""
    try:
        opened = deep_links.open_link(db.session, token)
    except deep_links.LinkUsed as error:
        user = signed_in_user()
        if user is not None and user.id == error.details.get("user_id"):
            used = deep_links.after_use(
                db.session,
                user.id,
                str(error.details.get("kind")),
                int(error.details.get("object_id") or 0),
            )
            active = _active_account()
            # NOTE: only into the account this browser acts for: an object of another of the
            # user's accounts would answer 404 there (the used link's page says what happened).
            if used is not None and active is not None and used[0] == active.id:
                return see_other(_path(used[1]))
        return _problem(error)
    except (deep_links.LinkInvalid, deep_links.LinkExpired) as error:
        return _problem(error)
    user = signed_in_user()
    # NOTE: someone else is signed in in this browser: the link is refused without a word
    # about the object (the person at this screen is not the one the email went to).
    if user is not None and user.id != opened.user.id:
        return _problem(deep_links.LinkNotYours())
    return opened


@bp.get("/l/<token>")
def confirm(token: str) -> Response | tuple[str, int] | str:
    opened = _open(token)
    if not isinstance(opened, deep_links.Opened):
        return opened
    active = _active_account()
    switch_from = active if active is not None and active.id != opened.account.id else None
    return render_template(
        "links/confirm.html", opened=opened, token=token, switch_from=switch_from
    )


@bp.post("/l/<token>")
@limiter.limit(
    limits.config_limit("LOGIN_CONSUME_IP_RATE_LIMIT"),
    key_func=get_remote_address,
    exempt_when=limits.limits_off,
    on_breach=limits.record_breach,
)
def consume(token: str) -> Response | tuple[str, int]:
    # NOTE: a POST's transaction is a writer from its first statement (BEGIN IMMEDIATE on
    # SQLite); on PostgreSQL the conditional UPDATE in deep_links.consume decides.
    actor = Actor(ip=request.remote_addr)
    opened = _open(token)
    if not isinstance(opened, deep_links.Opened):
        actor.record(
            db.session,
            "auth.deep_link_refused",
            account_id=None,
            target_type="login_token",
            target_id="",
        )
        return opened
    try:
        deep_links.consume(db.session, opened)
    except deep_links.LinkUsed as error:
        actor.record(
            db.session,
            "auth.deep_link_refused",
            account_id=None,
            target_type="login_token",
            target_id="",
        )
        return _problem(error)
    already_in = signed_in_user() is not None
    active = _active_account()
    before_id = active.id if active is not None else _first_account_id(opened.user.id)
    if not already_in:
        sign_in(opened.user)
    # NOTE: the account-switch guard: the object opens in its own account (open_link checked
    # the user's membership of it); without the switch a user of two accounts would land on a
    # 404 for their own invoice. sign_in starts a fresh session: choose after it.
    choose_account(opened.account)
    person = Actor.person(opened.user, request.remote_addr)
    if before_id != opened.account.id:
        before = db.session.get(Account, before_id) if before_id is not None else None
        person.record(
            db.session,
            "auth.account_switched",
            account_id=opened.account.id,
            target_type="account",
            target_id=opened.account.public_id,
            before={"account": before.public_id if before is not None else None},
            after={"account": opened.account.public_id, "via": "deep_link"},
        )
    person.record(
        db.session,
        "auth.deep_link_used",
        account_id=opened.account.id,
        target_type=opened.kind,
        target_id=opened.token.target_id or "",
        after={"signed_in": not already_in},
    )
    response = see_other(_path(opened.url))
    if not already_in:
        limits.remember_device(response, opened.user)
    return response
