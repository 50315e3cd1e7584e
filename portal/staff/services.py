"""The staff second factor: TOTP enrolment and checks, and one-time recovery codes."""

from __future__ import annotations

import base64
import hmac
import secrets

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

RECOVERY_CODE_COUNT = 10


def new_totp_secret() -> str:
    return pyotp.random_base32()


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
    if not (len(code) == 6 and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(clock.now())
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def totp_matches(secret: str, code: str) -> bool:
    """A six-digit code from the authenticator app, allowing one step of clock drift."""
    return matching_step(secret, code) is not None


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


def confirm_enrolment(session: Session, user: User, secret: str, code: str) -> list[str] | None:
    """Save the secret once the user proved their app has it; returns fresh recovery codes."""
    step = matching_step(secret, code)
    if user.totp_confirmed_at is not None or step is None:
        return None
    user.totp_secret = secret
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
