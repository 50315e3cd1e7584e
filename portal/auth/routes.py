"""Sign-in by magic link: ask for a link, confirm it, use it once; sign out."""

from __future__ import annotations

import logging
from datetime import timedelta

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from flask_limiter.util import get_remote_address

from portal.accounts.models import User
from portal.audit.services import Actor
from portal.auth import limits, safe_next, services
from portal.auth.forms import LoginForm
from portal.auth.sessions import end_current_session, sign_in, sign_out, signed_in_user
from portal.extensions import db, limiter
from portal.http_errors import render_error
from portal.mail import queue_email, rehearse_delivery, render_email
from portal.web import see_other

bp = Blueprint("auth", __name__)
log = logging.getLogger(__name__)

# Kept in the session of the browser that asked for a link (see LoginToken.binding_hash).
BINDING_KEY = "login_binding"
NEXT_KEY = "login_next"
TOO_MANY_MESSAGE = lazy_gettext(
    "Too many attempts in a short time. Please wait a few minutes and try again."
)


def signer() -> services.TokenSigner:
    return services.TokenSigner(current_app.config["SECRET_KEYS"])


def _lifetime() -> timedelta:
    return timedelta(minutes=current_app.config["LOGIN_TOKEN_MINUTES"])


def _link(token: str) -> str:
    # NOTE: built from BASE_URL, never from the Host header a client sent.
    return current_app.config["BASE_URL"] + url_for("auth.confirm", token=token)


def login_link(user: User, binding: str | None = None) -> str:
    """Issue a token and build its link from BASE_URL (never from the Host header)."""
    token = services.issue_login_token(
        db.session,
        signer(),
        user,
        lifetime=_lifetime(),
        binding=binding,
        ip=request.remote_addr if request else None,
    )
    return _link(token)


def _audit(action: str, user: User | None, **after: object) -> None:
    actor = Actor.person(user, request.remote_addr) if user else Actor(ip=request.remote_addr)
    actor.record(
        db.session,
        action,
        account_id=None,
        target_type="user" if user else "login_token",
        target_id=user.public_id if user else "",
        after=after or None,
    )


def _home_for(user: User) -> str:
    if user.is_staff and "staff.home" in current_app.view_functions:
        return url_for("staff.home")
    return url_for("billing.dashboard")


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(
    limits.config_limit("LOGIN_IP_RATE_LIMIT"),
    methods=["POST"],
    key_func=get_remote_address,
    exempt_when=limits.limits_off,
    on_breach=limits.record_breach,
)
def login() -> Response | tuple[str, int] | str:
    form = LoginForm()
    next_target = safe_next(request.args.get("next"))
    if not form.validate_on_submit():
        status = 422 if request.method == "POST" else 200
        return render_template("auth/login.html", form=form), status
    email = form.email.data.strip().lower()
    if next_target:
        session[NEXT_KEY] = next_target
    user = services.find_user_by_email(db.session, email)
    _send_link(email, user)
    return render_template("auth/check_email.html", email=email)


def _send_link(email: str, user: User | None) -> None:
    """Email a sign-in link to a known address, within its limits; otherwise do the same work.

    NOTE: the same work, page and status whether or not the address is known, and whether or
    not a limit was reached (no account enumeration, and the owner never sees a limit).
    """
    binding = session.get(BINDING_KEY) or services.new_binding()
    session[BINDING_KEY] = binding
    allowed = limits.link_request_allowed(email, limits.recognised_device(user))
    # NOTE: one audit event for every request, known address or not, named by the address's
    # hash only: the same statement on both paths, and the trail holds no address in clear.
    Actor(ip=request.remote_addr).record(
        db.session,
        "auth.link_requested",
        account_id=None,
        target_type="login_address",
        target_id=services.hash_value(email)[:16],
    )
    if user is None or not allowed:
        context = _email_context(services.dummy_token(signer()), user, email)
        services.rehearse_link_request(db.session, email, render_email("login_link", context))
        rehearse_delivery(db.session)  # the known address's enqueue, finding nothing to send
        return
    # NOTE: in a savepoint, as the rehearsal for an unknown address is, so both cost alike.
    with db.session.begin_nested():
        token = services.issue_login_token(
            db.session,
            signer(),
            user,
            lifetime=_lifetime(),
            binding=binding,
            ip=request.remote_addr,
        )
        queue_email(
            db.session,
            to=user.email,
            template="login_link",
            context=_email_context(token, user, email),
        )


def _email_context(token: str, user: User | None, email: str) -> dict[str, object]:
    return {
        "link": _link(token),
        "minutes": current_app.config["LOGIN_TOKEN_MINUTES"],
        "user": user or User(email=email, name=""),
    }


def _link_problem(
    error: services.DomainError, token: str | None = None
) -> Response | tuple[str, int]:
    """A friendly page for an expired, replaced, used or broken link, with a new link one tap
    away. It names the address only masked: whoever holds an old link learns little from it."""
    user = signed_in_user()
    if isinstance(error, services.TokenUsed) and user and user.id == error.details.get("user_id"):
        # Opening an already used link again in the browser it signed in: just carry on.
        return see_other(_home_for(user))
    kind = {
        services.TokenReplaced: "replaced",
        services.TokenExpired: "expired",
        services.TokenUsed: "used",
    }.get(type(error), "invalid")
    email = str(error.details.get("email") or "")
    return render_template(
        "auth/link_problem.html",
        kind=kind,
        masked_email=services.mask_email(email) if email else "",
        token=token if email else None,
    ), error.status


@bp.get("/login/<token>")
def confirm(token: str) -> Response | tuple[str, int] | str:
    try:
        stored = services.find_login_token(db.session, signer(), token)
    except (services.TokenInvalid, services.TokenExpired, services.TokenUsed) as error:
        return _link_problem(error, token)
    same_browser = services.is_bound_to(stored, session.get(BINDING_KEY))
    return render_template(
        "auth/confirm.html", token=token, user=stored.user, same_browser=same_browser
    )


@bp.post("/login/<token>")
@limiter.limit(
    limits.config_limit("LOGIN_CONSUME_IP_RATE_LIMIT"),
    key_func=get_remote_address,
    exempt_when=limits.limits_off,
    on_breach=limits.record_breach,
)
def consume(token: str) -> Response | tuple[str, int]:
    # NOTE: a POST's transaction is a writer from its first statement (BEGIN IMMEDIATE on
    # SQLite, see portal.db); PostgreSQL relies on the conditional UPDATE in
    # consume_login_token. Refusals return a page (and so commit their audit event).
    try:
        stored = services.find_login_token(db.session, signer(), token)
        if not limits.address_allowed("consume", stored.user.email):
            return render_error(429, str(TOO_MANY_MESSAGE))
        user = services.consume_login_token(db.session, signer(), token, stored=stored)
    except services.TokenUsed as error:
        _audit("auth.token_reused", db.session.get(User, error.details.get("user_id")))
        return _link_problem(error, token)
    except services.TokenExpired as error:
        _audit("auth.token_expired", db.session.get(User, error.details.get("user_id")))
        return _link_problem(error, token)
    except services.TokenInvalid as error:
        _audit("auth.token_invalid", None)
        return _link_problem(error)
    same_browser = services.is_bound_to(stored, session.get(BINDING_KEY))
    next_target = safe_next(session.get(NEXT_KEY)) if same_browser else None
    sign_in(user)
    _audit("auth.sign_in", user, same_browser=same_browser)
    log.info("user %s signed in", user.public_id)
    response = see_other(next_target or _home_for(user))
    limits.remember_device(response, user)
    return response


@bp.post("/login/<token>/new")
@limiter.limit(
    limits.config_limit("LOGIN_IP_RATE_LIMIT"),
    key_func=get_remote_address,
    exempt_when=limits.limits_off,
    on_breach=limits.record_breach,
)
def renew(token: str) -> Response | tuple[str, int] | str:
    """ "Send a new link" from the page of a used, expired or replaced link: to its owner only,
    within the same limits as asking on /login, without the page ever holding the address."""
    stored = services.find_spent_token(db.session, signer(), token)
    if stored is None:
        return _link_problem(services.TokenInvalid())
    user = stored.user
    _send_link(user.email, user)
    return render_template(
        "auth/check_email.html", email=services.mask_email(user.email), resend_token=token
    )


@bp.post("/logout")
def logout() -> Response:
    user = signed_in_user()
    # NOTE: ends this browser's row in user_sessions, so a copy of this cookie stops working on
    # the server too; the user's other devices stay signed in ("sign out everywhere" ends them).
    ended = end_current_session()
    if user is not None:
        _audit("auth.sign_out", user, ended_browser_session=ended)
    sign_out()
    if user is not None:
        # NOTE: flashed after sign_out, which clears the session: the message rides in the new,
        # empty one to the sign-in page.
        flash(_("You are signed out on this device."), "success")
    return see_other(url_for("auth.login"))
