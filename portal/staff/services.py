"""The staff second factor: TOTP enrolment and checks, and one-time recovery codes."""

from __future__ import annotations

import base64
import hmac
import secrets
from datetime import timedelta

import pyotp
import qrcode
import qrcode.image.svg
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from portal import clock
from portal.accounts.models import RecoveryCode, User
from portal.audit.services import record
from portal.auth.services import hash_value
from portal.errors import ValidationFailed

RECOVERY_CODE_COUNT = 10
STAFF_ROLES = ("support", "admin")
# NOTE: long enough to find the phone and an app, short enough that a secret shown on a screen
# and abandoned does not wait for ever.
PENDING_LIFETIME = timedelta(hours=1)


def new_totp_secret() -> str:
    return pyotp.random_base32()


def grouped_secret(secret: str) -> str:
    """ "ABCD EFGH …": a 32-character key is typed in groups of four."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def pending_secret_is_fresh(user: User) -> bool:
    """True while the user has a secret waiting for its first code, younger than an hour."""
    return bool(
        user.totp_pending_secret
        and user.totp_pending_at is not None
        and clock.now() - user.totp_pending_at < PENDING_LIFETIME
    )


def start_enrolment(session: Session, user: User) -> str:
    """The secret being enrolled, kept on the user row (never in the readable session cookie).

    A fresh pending secret is kept (a reload shows the same key the app may already have); an
    old or missing one is replaced, by a conditional UPDATE so two tabs agree on one secret.
    """
    if pending_secret_is_fresh(user):
        return str(user.totp_pending_secret)
    now = clock.now()
    started = session.execute(
        update(User)
        .where(
            User.id == user.id,
            User.totp_confirmed_at.is_(None),
            or_(
                User.totp_pending_secret.is_(None),
                User.totp_pending_at.is_(None),
                User.totp_pending_at <= now - PENDING_LIFETIME,
            ),
        )
        .values(totp_pending_secret=new_totp_secret(), totp_pending_at=now)
        .execution_options(synchronize_session=False)
    )
    if started.rowcount == 1:
        record(
            session,
            "staff.totp_enrolment_started",
            actor_kind="staff",
            actor_user_id=user.id,
            target_type="user",
            target_id=user.public_id,
        )
        session.flush()
    session.refresh(user, ["totp_pending_secret", "totp_pending_at"])
    return str(user.totp_pending_secret)


def provisioning_uri(secret: str, email: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=issuer)


def qr_code_data_uri(uri: str) -> str:
    """The otpauth:// URI as an SVG QR code in a data: URI (no inline SVG, no PIL needed)."""
    image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=10, border=2)
    svg = image.to_string()
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode()


def matching_step(secret: str, code: str) -> int | None:
    """The 30-second time step whose code this is (now, or one step either side for clock
    drift), or None if it matches none of them."""
    code = "".join(code.split())
    # NOTE: str.isdigit() is true for "١٢٣٤٥٦" and full-width digits, which compare_digest
    # refuses with a TypeError: only the ASCII digits an authenticator app shows count.
    if not (len(code) == 6 and code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(clock.now())
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def claim_step(session: Session, user: User, step: int) -> bool:
    """Record `step` as the user's last accepted TOTP step, only if it is newer than the last one
    (a conditional UPDATE, so two requests racing with the same code cannot both pass)."""
    claimed = session.execute(
        update(User)
        .where(
            User.id == user.id,
            or_(User.totp_last_step.is_(None), User.totp_last_step < step),
        )
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        return False
    set_committed_value(user, "totp_last_step", step)
    return True


def _normalise_recovery_code(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum())


def confirm_enrolment(session: Session, user: User, code: str) -> list[str] | None:
    """Save the pending secret once the user proved their app has it; returns fresh recovery
    codes (None for a wrong code, or when no fresh secret is pending)."""
    if user.totp_confirmed_at is not None or not pending_secret_is_fresh(user):
        return None
    secret = str(user.totp_pending_secret)
    step = matching_step(secret, code)
    if step is None:
        return None
    user.totp_secret = secret
    user.totp_pending_secret = None
    user.totp_pending_at = None
    user.totp_confirmed_at = clock.now()
    user.totp_last_step = step  # the enrolment code cannot pass the check again
    codes = _replace_recovery_codes(session, user)
    record(
        session,
        "staff.totp_enrolled",
        actor_kind="staff",
        actor_user_id=user.id,
        target_type="user",
        target_id=user.public_id,
    )
    session.flush()
    return codes


def _replace_recovery_codes(session: Session, user: User) -> list[str]:
    session.execute(
        update(RecoveryCode)
        .where(RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
        .values(used_at=clock.now())
    )
    codes = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = secrets.token_hex(5)  # 40 random bits each, shown as xxxxx-xxxxx
        codes.append(f"{raw[:5]}-{raw[5:]}")
        session.add(RecoveryCode(user_id=user.id, code_hash=hash_value(raw)))
    session.flush()
    return codes


def use_recovery_code(session: Session, user: User, code: str) -> bool:
    """Spend one unused recovery code (atomically: each works exactly once)."""
    normalised = _normalise_recovery_code(code)
    if len(normalised) != 10:
        return False
    claimed = session.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user.id,
            RecoveryCode.code_hash == hash_value(normalised),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=clock.now())
        .execution_options(synchronize_session=False)
    )
    return claimed.rowcount == 1


def unused_recovery_codes(session: Session, user: User, codes: list[str]) -> list[str]:
    """Those of `codes` that are unused recovery codes of this user, in the given order."""
    by_hash = {hash_value(_normalise_recovery_code(code)): code for code in codes[:50]}
    known = set(
        session.scalars(
            select(RecoveryCode.code_hash).where(
                RecoveryCode.user_id == user.id,
                RecoveryCode.used_at.is_(None),
                RecoveryCode.code_hash.in_(list(by_hash)),
            )
        )
    )
    return [code for digest, code in by_hash.items() if digest in known]


def remaining_recovery_codes(session: Session, user: User) -> int:
    return len(
        session.scalars(
            select(RecoveryCode.id).where(
                RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None)
            )
        ).all()
    )


TOTP = "totp"
RECOVERY_CODE = "recovery_code"
REUSED = "reused"
PASSED = frozenset({TOTP, RECOVERY_CODE})


def verify_second_factor(session: Session, user: User, code: str) -> str | None:
    """Check a TOTP or recovery code.

    Returns how it passed (TOTP, RECOVERY_CODE), REUSED for a right code whose time step was
    already accepted (a replayed code: refused), or None for a wrong code.
    """
    step = None
    if user.totp_secret and user.totp_confirmed_at:
        step = matching_step(user.totp_secret, code)
    if step is not None:
        result = TOTP if claim_step(session, user, step) else REUSED
    elif use_recovery_code(session, user, code):
        result = RECOVERY_CODE
    else:
        result = None
    passed = result in PASSED
    record(
        session,
        "staff.second_factor_passed" if passed else "staff.second_factor_failed",
        actor_kind="staff",
        actor_user_id=user.id,
        target_type="user",
        target_id=user.public_id,
        after={"method": result} if passed else ({"reason": REUSED} if result else None),
    )
    session.flush()
    return result


def set_staff_role(session: Session, email: str, role: str, name: str = "") -> tuple[User, bool]:
    """Give the person at `email` a staff role, creating the user if there is none.

    Returns the user and whether it was created. A changed role ends the user's sessions.
    """
    from email_validator import EmailNotValidError, validate_email

    if role not in STAFF_ROLES:
        raise ValidationFailed(f"{role!r} is not a staff role (support or admin).")
    try:
        address = validate_email(email.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as error:
        raise ValidationFailed(f"{email} is not a valid email address: {error}") from error
    user = session.scalar(select(User).where(User.email == address))
    created = user is None
    before = None if user is None else user.staff_role
    if user is None:
        user = User(email=address, name=name, staff_role=role)
        session.add(user)
    else:
        user.staff_role = role
        if name:
            user.name = name
        if before != role:
            user.session_epoch += 1  # a role change ends the user's sessions
    session.flush()
    record(
        session,
        "staff.role_set",
        target_type="user",
        target_id=user.public_id,
        before={"staff_role": before},
        after={"staff_role": role},
    )
    session.flush()
    return user, created
