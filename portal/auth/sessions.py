"""Who is signed in, and for which account. Sessions carry the user's epoch (see User)."""

from __future__ import annotations

from flask import abort, g, session
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
    session["signed_in_at"] = clock.now().isoformat()
    session.permanent = False
    user.last_sign_in_at = clock.now()


def sign_out() -> None:
    logout_user()
    session.clear()


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
