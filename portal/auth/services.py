"""Magic-link tokens: issue, look up, consume once. Only a hash of each token is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from portal import clock
from portal.accounts.models import User
from portal.auth.models import LoginToken
from portal.errors import N_, DomainError
from portal.notifications.models import OutboxEmail


class TokenInvalid(DomainError):
    status = 400
    title = N_("This sign-in link is not valid")


class TokenExpired(DomainError):
    status = 410
    title = N_("This sign-in link has expired")


class TokenUsed(DomainError):
    status = 410
    title = N_("This sign-in link was already used")


class TokenReplaced(TokenExpired):
    """A link retired because a newer link of the same person signed in first."""

    title = N_("This sign-in link was replaced by a newer one")


@dataclass(frozen=True)
class TokenSigner:
    """Signs and verifies link tokens; the first key signs, every key verifies (rotation)."""

    secret_keys: list[str]
    purpose: str = "login"

    def _serializer(self) -> URLSafeSerializer:
        # NOTE: itsdangerous signs with the *last* key of the list and verifies with all of them.
        return URLSafeSerializer(list(reversed(self.secret_keys)), salt=f"portal.{self.purpose}")

    def sign(self, raw: str) -> str:
        return self._serializer().dumps(raw)

    def unsign(self, token: str) -> str:
        try:
            raw = self._serializer().loads(token)
        except BadSignature as error:
            raise TokenInvalid() from error
        if not isinstance(raw, str):
            raise TokenInvalid()
        return raw


def hash_value(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def new_binding() -> str:
    """A random value for the requesting browser; only its hash goes on the token row."""
    return secrets.token_urlsafe(32)


def is_bound_to(stored: LoginToken, binding: str | None) -> bool:
    """True when the link is opened in the browser that asked for it."""
    if not binding or not stored.binding_hash:
        return False
    return hmac.compare_digest(stored.binding_hash, hash_value(binding))


def find_user_by_email(session: Session, email: str) -> User | None:
    """The user who may receive a sign-in link at this address (None if unknown or disabled)."""
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None or user.is_disabled:
        return None
    return user


def dummy_token(signer: TokenSigner) -> str:
    """The same signing and hashing work as a real token, for an address without an account."""
    raw = secrets.token_urlsafe(32)
    hash_value(raw)
    return signer.sign(raw)


def rehearse_link_request(session: Session, email: str, bodies: tuple[str, str]) -> None:
    """The database work of a real link request (a token row and an outbox row), undone.

    NOTE: POST /login must take as long for an unknown address as for a known one, or its
    timing tells which addresses have an account; the rows go into a savepoint that is rolled
    back, so nothing is kept and nothing is sent.
    """
    savepoint = session.begin_nested()
    try:
        # NOTE: two statements, as for a known address (a token row, then an outbox row).
        for text_body, html_body in (("", ""), bodies):
            session.add(
                OutboxEmail(
                    to_address=email,
                    subject="",
                    template="login_link",
                    text_body=text_body,
                    html_body=html_body,
                )
            )
            session.flush()
    finally:
        savepoint.rollback()


def issue_login_token(
    session: Session,
    signer: TokenSigner,
    user: User,
    *,
    lifetime: timedelta,
    binding: str | None = None,
    ip: str | None = None,
) -> str:
    """Create a one-time sign-in token for the user.

    Older links stay valid: asking for a link must never cancel one already sent (anyone who
    knows the address can ask). A successful sign-in retires them (consume_login_token).
    """
    now = clock.now()
    raw = secrets.token_urlsafe(32)  # 256 random bits
    session.add(
        LoginToken(
            user_id=user.id,
            token_hash=hash_value(raw),
            purpose=signer.purpose,
            binding_hash=hash_value(binding) if binding else None,
            requested_ip=ip,
            created_at=now,
            expires_at=now + lifetime,
        )
    )
    session.flush()
    return signer.sign(raw)


def find_login_token(session: Session, signer: TokenSigner, token: str) -> LoginToken:
    """The stored token behind a link, if it can still be used; raises a named error otherwise."""
    raw = signer.unsign(token)
    stored = session.scalar(select(LoginToken).where(LoginToken.token_hash == hash_value(raw)))
    # NOTE: a deep link's row (target_kind set) never signs in through /login/<token>.
    if stored is None or stored.purpose != signer.purpose or stored.target_kind is not None:
        raise TokenInvalid()
    if stored.user.is_disabled:
        raise TokenInvalid()
    # NOTE: the address travels with the error so the page can offer a new link in one tap.
    if stored.consumed_at is not None:
        raise TokenUsed(email=stored.user.email, user_id=stored.user_id)
    if stored.retired_at is not None:
        raise TokenReplaced(email=stored.user.email, user_id=stored.user_id)
    if stored.expires_at <= clock.now():
        raise TokenExpired(email=stored.user.email, user_id=stored.user_id)
    return stored


def consume_login_token(
    session: Session, signer: TokenSigner, token: str, stored: LoginToken | None = None
) -> User:
    """Use a token exactly once: of any number of concurrent tries, one wins; the winner retires
    the user's other outstanding links (one sign-in, and the other emails stop working)."""
    if stored is None:
        stored = find_login_token(session, signer, token)
    now = clock.now()
    claimed = session.execute(
        update(LoginToken)
        .where(
            LoginToken.id == stored.id,
            LoginToken.consumed_at.is_(None),
            LoginToken.retired_at.is_(None),
            LoginToken.expires_at > now,
        )
        .values(consumed_at=now)
        .execution_options(synchronize_session=False)
    )
    # NOTE: the conditional UPDATE is the guard: of concurrent consumers exactly one changes the
    # row; the others see zero rows even though their earlier SELECT saw an unused token.
    if claimed.rowcount != 1:
        raise TokenUsed(email=stored.user.email, user_id=stored.user_id)
    session.execute(
        update(LoginToken)
        .where(
            LoginToken.user_id == stored.user_id,
            LoginToken.id != stored.id,
            LoginToken.consumed_at.is_(None),
            LoginToken.retired_at.is_(None),
            # NOTE: links in invoice and reminder emails (deep links) stay valid.
            LoginToken.target_kind.is_(None),
        )
        .values(retired_at=now)
        .execution_options(synchronize_session=False)
    )
    return stored.user


def find_spent_token(session: Session, signer: TokenSigner, token: str) -> LoginToken | None:
    """The stored token behind a genuine link, whatever its state (used, expired, replaced);
    None for a link we never issued. Lets its page offer a new link to its owner in one tap."""
    try:
        raw = signer.unsign(token)
    except TokenInvalid:
        return None
    stored = session.scalar(select(LoginToken).where(LoginToken.token_hash == hash_value(raw)))
    if stored is None or stored.purpose != signer.purpose or stored.user.is_disabled:
        return None
    return stored


def mask_email(email: str) -> str:
    """ "a•••@example.com": enough for its owner to recognise, too little to learn it."""
    local, at, domain = email.partition("@")
    if not at:
        return "•••"
    return f"{local[:1]}•••@{domain}"
