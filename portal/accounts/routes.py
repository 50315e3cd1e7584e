"""The account details page, the signed-in devices, and "sign out everywhere"."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, current_app, flash, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required

from portal.accounts import services
from portal.accounts.forms import (
    COUNTRIES,
    LANGUAGES,
    AccountDetailsForm,
    EmailPreferencesForm,
    split_addresses,
)
from portal.accounts.models import Account, User
from portal.auth.devices import device_label
from portal.auth.models import UserSession
from portal.auth.sessions import current_account, end_current_session, sign_out, signed_in_user
from portal.errors import NotAllowed
from portal.extensions import db
from portal.notifications import preferences
from portal.web import render_page, see_other

bp = Blueprint("accounts", __name__)


def _this_browser() -> UserSession | None:
    return getattr(current_user, "browser_session", None)


def _devices() -> list[UserSession]:
    user = signed_in_user()
    assert user is not None
    from portal.staff.view_as import is_viewing

    if is_viewing():
        return []  # staff viewing the portal as the customer: not the staff member's devices
    prefix = "STAFF_SESSION" if user.is_staff else "SESSION"
    return services.active_sessions(
        db.session,
        user,
        idle=timedelta(minutes=current_app.config[f"{prefix}_IDLE_MINUTES"]),
        absolute=timedelta(hours=current_app.config[f"{prefix}_ABSOLUTE_HOURS"]),
    )


def _can_edit(user: User, account: Account) -> bool:
    """Whether the user may change the account's details (services.can_edit_details).

    NOTE: the role on the account current_account() answers came with the signed-in user
    (load_user's one statement, read in this request's transaction): asking again was one more
    statement per page. Any other account (staff viewing as a customer) is asked for."""
    if getattr(current_user, "account", None) is account:
        role = getattr(current_user, "account_role", None)
        if role is not None:
            return role in services.EDITOR_ROLES
    return services.can_edit_details(db.session, user, account)


def _preferences_form(account_id: int) -> EmailPreferencesForm:
    prefs = preferences.for_account(db.session, account_id)
    return EmailPreferencesForm(
        formdata=None,
        extra_recipients="\n".join(preferences.extra_recipients(prefs)),
        remind_before_due=not (prefs and prefs.opt_out_reminders),
        card_expiry=not (prefs and prefs.opt_out_card_expiry),
    )


def _render(
    form: AccountDetailsForm,
    can_edit: bool,
    status: int = 200,
    prefs_form: EmailPreferencesForm | None = None,
) -> Response:
    account = current_account()
    this_browser = _this_browser()
    response = render_page(
        "accounts/details.html",
        account=account,
        form=form,
        prefs_form=prefs_form or _preferences_form(account.id),
        max_extra_recipients=preferences.MAX_EXTRA_RECIPIENTS,
        can_edit=can_edit,
        countries=dict(COUNTRIES),
        languages=dict(LANGUAGES),
        devices=_devices(),
        device_label=device_label,
        this_device_id=this_browser.id if this_browser else None,
    )
    response.status_code = status
    return response


@bp.route("/account", methods=["GET", "POST"])
@login_required
def details() -> Response:
    account = current_account()
    user = signed_in_user()
    assert user is not None
    can_edit = _can_edit(user, account)
    if request.method == "GET":
        return _render(AccountDetailsForm(obj=account), can_edit)
    if not can_edit:
        raise NotAllowed(_("Only the account's owner or billing contact can change these details."))
    form = AccountDetailsForm()
    if not form.validate():
        return _render(form, can_edit, status=422)
    changes = services.update_account_details(
        db.session, account, user, form.values(), ip=request.remote_addr
    )
    flash(_("Your billing details are saved.") if changes else _("Nothing changed."), "success")
    return see_other(url_for("accounts.details"))


@bp.post("/account/email-preferences")
@login_required
def email_preferences() -> Response:
    account = current_account()
    user = signed_in_user()
    assert user is not None
    can_edit = _can_edit(user, account)
    if not can_edit:
        raise NotAllowed(_("Only the account's owner or billing contact can change these details."))
    form = EmailPreferencesForm()
    if not form.validate():
        return _render(AccountDetailsForm(obj=account), can_edit, status=422, prefs_form=form)
    changes = preferences.update_preferences(
        db.session,
        account,
        user,
        extra=split_addresses(form.extra_recipients.data),
        opt_out_reminders=not form.remind_before_due.data,
        opt_out_card_expiry=not form.card_expiry.data,
        ip=request.remote_addr,
    )
    flash(_("Your email preferences are saved.") if changes else _("Nothing changed."), "success")
    return see_other(url_for("accounts.details") + "#email-preferences")


@bp.post("/account/sessions/<session_id>/sign-out")
@login_required
def end_session(session_id: str) -> Response:
    user = signed_in_user()
    assert user is not None
    this_browser = _this_browser()
    # NOTE: only the signed-in user's own sessions: another user's id is a 404, like a missing one.
    ended = services.end_session(db.session, user, session_id, ip=request.remote_addr)
    if this_browser is not None and ended.id == this_browser.id:
        end_current_session()
        sign_out()
        flash(_("You are signed out on this device."), "success")
        return see_other(url_for("auth.login"))
    flash(_("%(device)s is signed out.", device=device_label(ended.device)), "success")
    return see_other(url_for("accounts.details"))


@bp.post("/account/sign-out-everywhere")
@login_required
def sign_out_everywhere() -> Response:
    user = signed_in_user()
    assert user is not None
    services.sign_out_everywhere(db.session, user, ip=request.remote_addr)
    sign_out()
    flash(_("You are signed out on every device, this one included."), "success")
    return see_other(url_for("auth.login"))
