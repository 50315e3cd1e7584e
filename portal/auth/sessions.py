"""Who is signed in, and for which account. Sessions carry the user's epoch (see User)."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from flask import Flask, abort, g, session
from flask_login import UserMixin, current_user, login_user, logout_user
from sqlalchemy import select

from portal import clock
from portal.accounts.models import Account, Membership, User
from portal.extensions import db, login_manager


class SessionUser(UserMixin):
    """Flask-Login's view of a User: the id names the user and the epoch it was signed in under."""

    def __init__(self, user: User) -> None:
        self.user = user

    def get_id(self) -> str:
        return f"{self.user.public_id}:{self.user.session_epoch}"

    @property
    def is_active(self) -> bool:
        return not self.user.is_disabled


@login_manager.user_loader
def load_user(session_id: str) -> SessionUser | None:
    public_id, _, epoch = session_id.partition(":")
    user = db.session.scalar(select(User).where(User.public_id == public_id))
    # NOTE: a bumped epoch (sign out everywhere, disabled user) ends every older session.
    if user is None or user.is_disabled or str(user.session_epoch) != epoch:
        return None
    return SessionUser(user)


def sign_in(user: User) -> None:
    """Start a fresh session for the user (the old session's contents are dropped: no fixation)."""
    session.clear()
    login_user(SessionUser(user))
    now = clock.now()
    # NOTE: a new random id makes every sign-in's cookie differ from anything set before it.
    session["sid"] = secrets.token_urlsafe(16)
    session["signed_in_at"] = now.isoformat()
    session["last_seen_at"] = now.isoformat()
    session["staff"] = user.is_staff
    session.permanent = False
    user.last_sign_in_at = now


def sign_out() -> None:
    """Forget the session in this browser (the caller bumps the epoch to end it everywhere)."""
    logout_user()
    session.clear()


def session_user_id() -> str | None:
    """The id this browser's session was signed in under (public id and epoch)."""
    return session.get("_user_id")


def _timeouts(app: Flask, staff: bool) -> tuple[timedelta, timedelta]:
    prefix = "STAFF_SESSION" if staff else "SESSION"
    return (
        timedelta(minutes=app.config[f"{prefix}_IDLE_MINUTES"]),
        timedelta(hours=app.config[f"{prefix}_ABSOLUTE_HOURS"]),
    )


def session_expired(app: Flask) -> bool:
    """Apply the idle and absolute timeouts to this request's session; True if it just ended."""
    if "_user_id" not in session or "signed_in_at" not in session:
        # NOTE: every session made by sign_in carries its times; the epoch guards the rest.
        return False
    now = clock.now()
    idle, absolute = _timeouts(app, bool(session.get("staff")))
    try:
        signed_in_at = datetime.fromisoformat(session["signed_in_at"])
        last_seen_at = datetime.fromisoformat(session.get("last_seen_at", session["signed_in_at"]))
    except (TypeError, ValueError):
        return _end_session()
    if now - last_seen_at > idle or now - signed_in_at > absolute:
        return _end_session()
    if now - last_seen_at >= timedelta(seconds=60):
        session["last_seen_at"] = now.isoformat()
    return False


def _end_session() -> bool:
    logout_user()
    session.clear()
    return True


def signed_in_user() -> User | None:
    return current_user.user if current_user.is_authenticated else None


def current_account() -> Account:
    """The account the signed-in customer is acting for; 404 for staff and users with none."""
    if "account" not in g:
        user = signed_in_user()
        if user is None:
            abort(401)
        account = db.session.scalar(
            select(Account)
            .join(Membership, Membership.account_id == Account.id)
            .where(Membership.user_id == user.id)
            .order_by(Membership.id)
            .limit(1)
        )
        if account is None:
            abort(404)
        g.account = account
    return g.account
