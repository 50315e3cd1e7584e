"""Account details and user sessions: the rules, without Flask."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from portal import clock
from portal.accounts.models import Account, MemberRole, Membership, User
from portal.audit.services import Actor, record
from portal.auth.models import UserSession
from portal.errors import N_, NotAllowed, NotFound

# NOTE: the only fields a customer may change; anything else in a form is ignored (no mass
# assignment of currency, invoice prefix, Stripe id ...).
EDITABLE_FIELDS = (
    "name",
    "billing_email",
    "address_line1",
    "address_line2",
    "city",
    "postal_code",
    "region",
    "country",
    "tax_id",
    "locale",
)
EDITOR_ROLES = {MemberRole.OWNER.value, MemberRole.BILLING.value}


def membership_role(session: Session, user: User, account: Account) -> str | None:
    """The user's role on the account, or None."""
    return session.scalar(
        select(Membership.role).where(
            Membership.user_id == user.id, Membership.account_id == account.id
        )
    )


def can_edit_details(session: Session, user: User, account: Account) -> bool:
    return membership_role(session, user, account) in EDITOR_ROLES


def update_account_details(
    session: Session,
    account: Account,
    user: User,
    values: dict[str, Any],
    *,
    ip: str | None = None,
) -> dict[str, tuple[Any, Any]]:
    """Apply the editable fields that changed and audit them; returns {field: (before, after)}."""
    if not can_edit_details(session, user, account):
        raise NotAllowed(
            N_("Only the account's owner or billing contact can change these details.")
        )
    changes = {
        name: (getattr(account, name), values[name])
        for name in EDITABLE_FIELDS
        if name in values and values[name] != getattr(account, name)
    }
    if not changes:
        return changes
    for name, (_before, after) in changes.items():
        setattr(account, name, after)
    record(
        session,
        "account.details_updated",
        actor_kind="customer",
        actor_user_id=user.id,
        account_id=account.id,
        target_type="account",
        target_id=account.public_id,
        before={name: before for name, (before, _after) in changes.items()},
        after={name: after for name, (_before, after) in changes.items()},
        ip=ip,
    )
    session.flush()
    return changes


def end_all_sessions(session: Session, user: User) -> int:
    """End every session row of the user and move the epoch on: every cookie stops working."""
    session.execute(
        update(UserSession)
        .where(UserSession.user_id == user.id, UserSession.ended_at.is_(None))
        .values(ended_at=clock.now())
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(User)
        .where(User.id == user.id)
        .values(session_epoch=User.session_epoch + 1)
        .execution_options(synchronize_session=False)
    )
    session.refresh(user, ["session_epoch"])
    return user.session_epoch


# NOTE: built once (the account page asks on every view): building the select per request cost
# more than running it. The bound values take the columns' types, as literals would.
_ACTIVE_SESSIONS = (
    select(UserSession)
    .where(
        UserSession.user_id == bindparam("user_id"),
        UserSession.ended_at.is_(None),
        UserSession.last_seen_at >= bindparam("seen_since"),
        UserSession.created_at >= bindparam("created_since"),
    )
    .order_by(UserSession.last_seen_at.desc(), UserSession.id.desc())
)


def active_sessions(
    session: Session, user: User, *, idle: timedelta, absolute: timedelta
) -> list[UserSession]:
    """The user's signed-in browsers, most recently seen first (timed-out ones left out)."""
    now = clock.now()
    return list(
        session.scalars(
            _ACTIVE_SESSIONS,
            {"user_id": user.id, "seen_since": now - idle, "created_since": now - absolute},
        )
    )


def end_session(
    session: Session, user: User, session_public_id: str, *, ip: str | None = None
) -> UserSession:
    """Sign one of the user's browsers out. Another user's session is NotFound, like a missing one.

    An already ended session is returned unchanged (a second tap changes nothing).
    """
    target = session.scalar(
        select(UserSession).where(
            UserSession.public_id == session_public_id, UserSession.user_id == user.id
        )
    )
    if target is None:
        raise NotFound(N_("That device is not in your list of signed-in devices."))
    if target.ended_at is not None:
        return target
    target.ended_at = clock.now()
    Actor.person(user, ip).record(
        session,
        "auth.session_ended",
        account_id=None,
        target_type="user_session",
        target_id=target.public_id,
        after={"device": target.device},
    )
    session.flush()
    return target


def sign_out_everywhere(session: Session, user: User, *, ip: str | None = None) -> None:
    """End every session of the user, on every device, and audit it."""
    end_all_sessions(session, user)
    Actor.person(user, ip).record(
        session,
        "auth.sign_out_everywhere",
        account_id=None,
        target_type="user",
        target_id=user.public_id,
    )
    session.flush()


def disable_user(
    session: Session, user: User, *, actor: User | None = None, ip: str | None = None
) -> None:
    """Disable a user: no new links, and every existing session ends."""
    if user.disabled_at is None:
        user.disabled_at = clock.now()
    session.flush()
    end_all_sessions(session, user)
    record(
        session,
        "user.disabled",
        actor_kind="staff" if actor is not None else "system",
        actor_user_id=actor.id if actor else None,
        target_type="user",
        target_id=user.public_id,
        after={"disabled": True},
        ip=ip,
    )
    session.flush()
