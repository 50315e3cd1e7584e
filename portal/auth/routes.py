"""Sign-in by magic link: ask for a link, confirm it, use it once; sign out."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, current_app, render_template, request, url_for
from sqlalchemy import func, select

from portal.accounts.models import User
from portal.audit.services import record
from portal.auth import services
from portal.auth.forms import LoginForm
from portal.auth.sessions import sign_in, sign_out, signed_in_user
from portal.extensions import db
from portal.mail import queue_email
from portal.web import see_other

bp = Blueprint("auth", __name__)


def signer() -> services.TokenSigner:
    return services.TokenSigner(current_app.config["SECRET_KEYS"])


def login_link(user: User) -> str:
    """Issue a token and build its link from BASE_URL (never from the Host header)."""
    token = services.issue_login_token(
        db.session,
        signer(),
        user,
        lifetime=timedelta(minutes=current_app.config["LOGIN_TOKEN_MINUTES"]),
        ip=request.remote_addr if request else None,
    )
    return current_app.config["BASE_URL"] + url_for("auth.confirm", token=token)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str:
    form = LoginForm()
    if not form.validate_on_submit():
        status = 422 if request.method == "POST" else 200
        return render_template("auth/login.html", form=form), status
    email = form.email.data.strip().lower()
    user = db.session.scalar(select(User).where(func.lower(User.email) == email))
    if user is not None and not user.is_disabled:
        link = login_link(user)
        queue_email(
            db.session,
            to=user.email,
            subject="Your sign-in link",
            template="login_link",
            context={
                "link": link,
                "minutes": current_app.config["LOGIN_TOKEN_MINUTES"],
                "user": user,
            },
        )
    # NOTE: the same page whether or not the address is known (no account enumeration).
    db.session.commit()
    return render_template("auth/check_email.html", email=email)


@bp.get("/login/<token>")
def confirm(token: str) -> Response | str:
    stored = services.find_login_token(db.session, signer(), token)
    return render_template("auth/confirm.html", token=token, user=stored.user)


@bp.post("/login/<token>")
def consume(token: str) -> Response:
    user = services.consume_login_token(db.session, signer(), token)
    sign_in(user)
    record(
        db.session,
        "auth.sign_in",
        actor_kind="staff" if user.is_staff else "customer",
        actor_user_id=user.id,
        target_type="user",
        target_id=user.public_id,
        ip=request.remote_addr,
    )
    db.session.commit()
    return see_other(url_for("billing.dashboard"))


@bp.post("/logout")
def logout() -> Response:
    user = signed_in_user()
    if user is not None:
        record(
            db.session,
            "auth.sign_out",
            actor_kind="staff" if user.is_staff else "customer",
            actor_user_id=user.id,
            target_type="user",
            target_id=user.public_id,
            ip=request.remote_addr,
        )
        db.session.commit()
    sign_out()
    return see_other(url_for("auth.login"))
