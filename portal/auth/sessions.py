"""Who is signed in, and for which account.

Every sign-in makes a row in user_sessions (one per browser); the cookie carries the row's
random id ("sid", only its hash is stored) and the user's epoch (see User). A request is signed
in only while its row is not ended and the epoch matches: sign-out ends this browser's row,
"sign out everywhere" and disabling a user end every row and move the epoch on.
"""

from __future__ import annotations

import functools
import secrets
from datetime import datetime, timedelta

from flask import Flask, abort, current_app, g, request, session
from flask_login import UserMixin, current_user, login_user, logout_user
from flask_wtf.csrf import generate_csrf
from sqlalchemy import Select, bindparam, func, select, update

from portal import clock
from portal.accounts.models import Account, Membership, User
from portal.auth.devices import describe_user_agent
from portal.auth.models import UserSession
from portal.auth.services import hash_value
from portal.db import begin_write
from portal.extensions import db, login_manager

SID_KEY = "sid"
# The public id of the account this browser acts for (see choose_account); honoured only while
# the user is still a member of it, else the first membership's account.
ACCOUNT_KEY = "account"
# NOTE: the cookie's last_seen_at (and the row's) move on at most once a minute.
TOUCH_EVERY = timedelta(seconds=60)
_NOT_LOADED = object()


class SessionUser(UserMixin):
    """Flask-Login's view of a User: the id names the user and the epoch it was signed in under."""

    def __init__(
        self,
        user: User,
        browser_session: UserSession | None = None,
        account: Account | object | None = _NOT_LOADED,
        account_role: str | None = None,
    ) -> None:
        self.user = user
        # This browser's row in user_sessions (None in the request that signs in).
        self.browser_session = browser_session
        # The account the user acts for (see current_account), when it came with the user.
        self.account = account
        # The user's role on that account (None when it did not come with the user).
        self.account_role = account_role

    def get_id(self) -> str:
        return f"{self.user.public_id}:{self.user.session_epoch}"

    @property
    def is_active(self) -> bool:
        return not self.user.is_disabled


def _sid_hash() -> str | None:
    sid = session.get(SID_KEY)
    return hash_value(sid) if isinstance(sid, str) and sid else None


@functools.cache
def _user_query() -> Select[tuple[User, UserSession, Account, str]]:
    # NOTE: one statement per request: the user, this browser's session row, and the account
    # current_account() answers with (the chosen one, else the first membership's; none for
    # staff) with the user's role on it (the account page asks whether they may edit), joined.
    first_membership_id = (
        select(Membership.id)
        .where(Membership.user_id == User.id)
        .order_by(Membership.id)
        .limit(1)
        .correlate(User)
        .scalar_subquery()
    )
    # NOTE: the chosen account counts only through a membership of this user.
    chosen_membership_id = (
        select(Membership.id)
        .join(Account, Account.id == Membership.account_id)
        .where(Membership.user_id == User.id, Account.public_id == bindparam("account_public_id"))
        .limit(1)
        .correlate(User)
        .scalar_subquery()
    )
    return (
        select(User, UserSession, Account, Membership.role)
        .join(UserSession, UserSession.user_id == User.id)
        .outerjoin(
            Membership,
            Membership.id == func.coalesce(chosen_membership_id, first_membership_id),
        )
        .outerjoin(Account, Account.id == Membership.account_id)
        .where(
            User.public_id == bindparam("public_id"),
            UserSession.sid_hash == bindparam("sid_hash"),
            UserSession.ended_at.is_(None),
        )
    )


@login_manager.user_loader
def load_user(session_id: str) -> SessionUser | None:
    public_id, _, epoch = session_id.partition(":")
    # NOTE: a cookie without a session id (made before user_sessions existed, or forged) still
    # asks the database, and matches no row: the same path, and a 503 when the database is gone.
    sid_hash = _sid_hash() or ""
    # NOTE: the statement is built once, with bound parameters: building a select (and its cache
    # key) on every request cost more than running it.
    row = db.session.execute(
        _user_query(),
        {"public_id": public_id, "sid_hash": sid_hash, "account_public_id": _chosen_account()},
    ).first()
    if row is None:
        return None  # signed out here or on /account, or a cookie from before user_sessions
    user, browser_session, account, role = row
    # NOTE: a bumped epoch (sign out everywhere, disabled user, role change) ends every session.
    if user.is_disabled or str(user.session_epoch) != epoch:
        return None
    return SessionUser(user, browser_session, account, role)


def _chosen_account() -> str:
    chosen = session.get(ACCOUNT_KEY)
    return chosen if isinstance(chosen, str) else ""


def choose_account(account: Account) -> None:
    """Act for this account in this browser from the next request on (the caller has checked
    the user is a member of it, and audits the switch)."""
    session[ACCOUNT_KEY] = account.public_id
    g.pop("account", None)
    if isinstance(current_user, SessionUser):
        # What came with the user was the previous account's: ask again in this request.
        current_user.account = _NOT_LOADED
        current_user.account_role = None


def sign_in(user: User) -> None:
    """Start a fresh session for the user (the old session's contents are dropped: no fixation).

    The caller commits (the new user_sessions row is added to the database session).
    """
    session.clear()
    login_user(SessionUser(user))
    now = clock.now()
    # NOTE: a new random id makes every sign-in's cookie differ from anything set before it, and
    # names this browser's row in user_sessions (which keeps only its hash).
    sid = secrets.token_urlsafe(32)
    session[SID_KEY] = sid
    session["signed_in_at"] = now.isoformat()
    session["last_seen_at"] = now.isoformat()
    session["staff"] = user.is_staff
    session.permanent = False
    # NOTE: the new session's CSRF secret goes into the sign-in's own cookie. Made lazily, by the
    # first page after sign-in, it changed the cookie once more; a client that keeps only the
    # sign-in's cookie (wrk in `make bench`, a tab restored from it) got a new secret and a
    # re-signed Set-Cookie on every page (about 2 ms of CPU per request under gunicorn). A token
    # this request signed for the old session (kept in g) must not outlive it.
    g.pop(current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"), None)
    generate_csrf()
    user.last_sign_in_at = now
    db.session.add(
        UserSession(
            user_id=user.id,
            sid_hash=hash_value(sid),
            created_at=now,
            last_seen_at=now,
            ip=request.remote_addr,
            device=describe_user_agent(request.headers.get("User-Agent")),
        )
    )


def end_current_session() -> bool:
    """End this browser's row in user_sessions (the caller commits); True if one was open."""
    sid_hash = _sid_hash()
    if sid_hash is None:
        return False
    ended = db.session.execute(
        update(UserSession)
        .where(UserSession.sid_hash == sid_hash, UserSession.ended_at.is_(None))
        .values(ended_at=clock.now())
        .execution_options(synchronize_session=False)
    )
    return ended.rowcount == 1


def sign_out() -> None:
    """Forget the session in this browser's cookie (end its row first: end_current_session)."""
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
    if now - last_seen_at >= TOUCH_EVERY:
        session["last_seen_at"] = now.isoformat()
        _touch_row(now)
    return False


def _touch_row(now: datetime) -> None:
    """Move this browser's row's last_seen_at on (at most once a minute, like the cookie)."""
    sid_hash = _sid_hash()
    if sid_hash is None:
        return
    # NOTE: this GET writes: its transaction starts as a writer (it runs before anything else
    # of the request touched the database), so on SQLite it waits for the lock, never fails.
    begin_write(db.session)
    db.session.execute(
        update(UserSession)
        .where(UserSession.sid_hash == sid_hash, UserSession.ended_at.is_(None))
        .values(last_seen_at=now)
        .execution_options(synchronize_session=False)
    )


def _end_session() -> bool:
    # NOTE: a timed-out session ends on the server too, so it leaves the devices list (the
    # request's unit of work commits it).
    if _sid_hash() is not None:
        begin_write(db.session)
        end_current_session()
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
        loaded = current_user.account
        if loaded is not _NOT_LOADED:
            if loaded is None:
                abort(404)
            g.account = loaded
            return g.account
        account = db.session.scalar(
            select(Account)
            .join(Membership, Membership.account_id == Account.id)
            .where(Membership.user_id == user.id)
            .order_by((Account.public_id == _chosen_account()).desc(), Membership.id)
            .limit(1)
        )
        if account is None:
            abort(404)
        g.account = account
    return g.account
