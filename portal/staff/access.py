"""Who may use the staff area: a staff role and this session's passed second factor."""

from __future__ import annotations

from flask import session

from portal.accounts.models import User
from portal.auth.sessions import session_user_id, signed_in_user

MFA_KEY = "mfa_passed_for"
ADMIN_ROLE = "admin"


def second_factor_passed() -> bool:
    """True once this session (not just this user) passed TOTP; a new sign-in starts over."""
    current = session_user_id()
    return current is not None and session.get(MFA_KEY) == current


def signed_in_staff() -> User | None:
    """The signed-in staff member who passed the second factor in this session, else None."""
    user = signed_in_user()
    if user is None or not user.is_staff or not second_factor_passed():
        return None
    return user


def is_admin(user: User) -> bool:
    return user.staff_role == ADMIN_ROLE
