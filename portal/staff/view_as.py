""" "View as customer": a staff member sees one account's portal exactly as its people do.

How it fits the sign-in code: the staff member stays signed in as themselves (their own
user_sessions row, epoch and timeouts); the session cookie only names the account being
viewed, bound to this very sign-in (the Flask-Login id, which carries the epoch). Before every
request the guard below checks that the visitor is staff and passed TOTP in this session, and
then puts the viewed account where `portal.auth.sessions.current_account` looks first
(`g.account`), so every customer page renders for that account through its usual code.

- A customer can never enter it: a customer's cookie never carries the key (only
  /staff/customers/<id>/view-as sets it, behind the staff guard), and a key found on a
  non-staff session, or one from an earlier sign-in, is thrown away before any page runs.
- Nothing can change: every request but GET/HEAD/OPTIONS is refused (403) while viewing,
  except leaving the view and signing out or in. Every control of a form that would change
  something (method POST) is shown disabled; GET forms (the invoice filters, the statement's
  period) stay usable, since what they do is read, exactly as the customer would.
- Each page seen is audited (staff.view_as_page), as are the start and the end.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, Response, g, request, session, url_for
from flask_babel import gettext as _
from sqlalchemy import select

from portal.accounts.models import Account
from portal.audit.services import Actor
from portal.auth.sessions import session_user_id
from portal.db import begin_write, has_pending_changes
from portal.errors import NotAllowed
from portal.extensions import db
from portal.staff.access import signed_in_staff

VIEW_AS_KEY = "view_as"
# The only state-changing requests allowed while viewing: leaving it, signing out, and signing
# in afresh (which clears the session, and the view with it). None of them touches the account.
ALLOWED_WHILE_VIEWING = frozenset({"staff.view_as_end", "auth.logout", "auth.consume"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ReadOnlyView(NotAllowed):
    """A state-changing request made while viewing the portal as a customer."""


def start(account: Account) -> None:
    """Remember, in this sign-in's session only, which account is being viewed."""
    session[VIEW_AS_KEY] = {"account": account.public_id, "by": session_user_id()}


def stop() -> str | None:
    """Forget the viewed account; returns its public id (None when none was viewed)."""
    data = session.pop(VIEW_AS_KEY, None)
    return data.get("account") if isinstance(data, dict) else None


def viewed_account() -> Account | None:
    """The account this request shows as its customer sees it, or None."""
    return g.get("view_as_account")


def is_viewing() -> bool:
    return viewed_account() is not None


def _valid_claim() -> str | None:
    data = session.get(VIEW_AS_KEY)
    if not isinstance(data, dict):
        return None
    account_id = data.get("account")
    # NOTE: bound to this sign-in: Flask-Login's id carries the user's epoch, and a new
    # sign-in clears the session, so an old cookie's claim cannot come back.
    if not isinstance(account_id, str) or data.get("by") != session_user_id():
        return None
    return account_id


def _actor(user: Any) -> Actor:
    return Actor("staff", user.id, request.remote_addr)


def guard() -> None:
    """Before every request: apply (or discard) a view-as claim; refuse changes while viewing."""
    if VIEW_AS_KEY not in session or request.endpoint == "static":
        return
    claim = _valid_claim()
    staff = signed_in_staff() if claim else None
    account = (
        db.session.scalar(select(Account).where(Account.public_id == claim)) if staff else None
    )
    if account is None:
        session.pop(VIEW_AS_KEY, None)
        return
    g.view_as_account = account
    g.account = account  # NOTE: what current_account() answers for this request
    if request.method not in _SAFE_METHODS:
        if request.endpoint in ALLOWED_WHILE_VIEWING:
            return
        raise ReadOnlyView(
            _(
                "You are viewing this account as its customer sees it: nothing can be changed "
                "here. Leave the customer view to work on it."
            )
        )
    if request.method == "GET" and not (request.endpoint or "").startswith("staff."):
        # NOTE: a GET that writes (the audit of what staff looked at): its transaction must
        # be a writer; one already is when the session's last-seen time moved on.
        if not has_pending_changes(db.session):
            begin_write(db.session)
        _actor(staff).record(
            db.session,
            "staff.view_as_page",
            account_id=account.id,
            target_type="account",
            target_id=account.public_id,
            after={"path": request.path[:200]},
        )
        db.session.flush()


# An opening tag with its attributes (quoted values may hold ">").
_ATTRS = r"""(?:[^>"']|"[^"]*"|'[^']*')*"""
_FORM = re.compile(rf"<form\b{_ATTRS}>", re.IGNORECASE)
_FORM_END = re.compile(r"</form\s*>", re.IGNORECASE)
_CONTROL = re.compile(rf"<(button|input|select|textarea)\b({_ATTRS})>", re.IGNORECASE)
_DISABLED = re.compile(r"""\sdisabled(?=[\s=/>]|$)""", re.IGNORECASE)


def _attribute(tag: str, name: str) -> str:
    found = re.search(rf"""\s{name}\s*=\s*("[^"]*"|'[^']*'|[^\s>]+)""", tag, re.IGNORECASE)
    return found.group(1).strip("\"'") if found else ""


def _disable_control(match: re.Match[str]) -> str:
    if _DISABLED.search(match.group(2)):
        return match.group(0)
    return f"<{match.group(1)} disabled{match.group(2)}>"


def disable_changing_forms(html: str, keep_actions: frozenset[str]) -> str:
    """Every control of each form that would change something (any method but GET/dialog)
    disabled, except the forms posting to `keep_actions`; GET forms are left as they are.

    NOTE: forms never nest in HTML (a parser ignores a <form> inside another), so each form
    ends at the next </form>.
    """
    out: list[str] = []
    at = 0
    for form in _FORM.finditer(html):
        if form.start() < at:
            continue  # a <form> inside a form the parser would ignore: already handled
        end = _FORM_END.search(html, form.end())
        stop = end.end() if end else len(html)
        method = _attribute(form.group(0), "method").lower() or "get"
        if method in ("get", "dialog") or _attribute(form.group(0), "action") in keep_actions:
            continue
        out.append(html[at : form.end()])
        out.append(_CONTROL.sub(_disable_control, html[form.end() : stop]))
        at = stop
    out.append(html[at:])
    return "".join(out)


def disable_changes_in_page(response: Response) -> Response:
    """While viewing, show every state-changing form disabled (the server refuses them too)."""
    if (
        g.get("view_as_account") is None
        or response.mimetype != "text/html"
        or response.is_streamed
        or response.direct_passthrough
    ):
        return response
    keep = frozenset(url_for(endpoint) for endpoint in _KEPT_FORMS)
    response.set_data(disable_changing_forms(response.get_data(as_text=True), keep))
    return response


# Forms that stay usable while viewing: leaving the view and signing out.
_KEPT_FORMS = ("staff.view_as_end", "auth.logout")


def template_globals() -> dict[str, Any]:
    return {"view_as_account": g.get("view_as_account")}


def init_app(app: Flask) -> None:
    # NOTE: right after portal.auth's session timeouts (an expired session is signed out before
    # its claim is looked at) and before its "staff go to /staff/" redirect, which asks
    # whether this request views a customer's portal.
    hooks = app.before_request_funcs.setdefault(None, [])
    after = [i for i, hook in enumerate(hooks) if hook.__name__ == "enforce_session_timeouts"]
    hooks.insert(after[0] + 1 if after else len(hooks), guard)
    app.context_processor(template_globals)
    app.after_request(disable_changes_in_page)
