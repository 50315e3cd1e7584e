"""An account's email preferences: extra recipients of billing emails and the opt-outs of the
non-essential ones. No row means the defaults (no extra recipients, every email on)."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from portal.accounts.models import Account, User
from portal.accounts.services import can_edit_details
from portal.audit.services import record
from portal.errors import N_, NotAllowed, ValidationFailed
from portal.notifications.models import EmailPreference

MAX_EXTRA_RECIPIENTS = 3


# NOTE: built once (the account page asks on every view): building the select and its cache
# key per call cost more than running it on the primary-key-sized lookup.
_FOR_ACCOUNT = select(EmailPreference).where(EmailPreference.account_id == bindparam("account_id"))


def for_account(session: Session, account_id: int) -> EmailPreference | None:
    """The account's email preferences (None: the defaults)."""
    return session.scalar(_FOR_ACCOUNT, {"account_id": account_id})


def extra_recipients(prefs: EmailPreference | None) -> list[str]:
    """The stored extra addresses, one per line, in the order given."""
    if prefs is None:
        return []
    return [line.strip() for line in prefs.extra_recipients.splitlines() if line.strip()]


def update_preferences(
    session: Session,
    account: Account,
    user: User,
    *,
    extra: list[str],
    opt_out_reminders: bool,
    opt_out_card_expiry: bool,
    ip: str | None = None,
) -> dict[str, tuple[object, object]]:
    """Save the account's email preferences and audit what changed; returns the changes."""
    if not can_edit_details(session, user, account):
        raise NotAllowed(
            N_("Only the account's owner or billing contact can change these details.")
        )
    addresses: list[str] = []
    for address in extra:
        address = address.strip().lower()
        if address and address not in addresses and address != account.billing_email.lower():
            addresses.append(address)
    if len(addresses) > MAX_EXTRA_RECIPIENTS:
        raise ValidationFailed(
            N_("Please list at most %(count)s extra addresses."),
            params={"count": MAX_EXTRA_RECIPIENTS},
        )
    prefs = for_account(session, account.id)
    if prefs is None:
        prefs = EmailPreference(
            account_id=account.id,
            extra_recipients="",
            opt_out_reminders=False,
            opt_out_card_expiry=False,
        )
        session.add(prefs)
    wanted = {
        "extra_recipients": "\n".join(addresses),
        "opt_out_reminders": bool(opt_out_reminders),
        "opt_out_card_expiry": bool(opt_out_card_expiry),
    }
    changes = {
        name: (getattr(prefs, name), value)
        for name, value in wanted.items()
        if getattr(prefs, name) != value
    }
    for name, (_before, after) in changes.items():
        setattr(prefs, name, after)
    session.flush()
    if changes:
        record(
            session,
            "account.email_preferences_updated",
            actor_kind="customer",
            actor_user_id=user.id,
            account_id=account.id,
            target_type="account",
            target_id=account.public_id,
            before={name: before for name, (before, _after) in changes.items()},
            after={name: after for name, (_before, after) in changes.items()},
            ip=ip,
        )
    return changes
