"""One-time sign-in tokens. Only a hash of each token is stored."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal import clock
from portal.accounts.models import User
from portal.db import Base, intpk, public_id


class LoginToken(Base):
    __tablename__ = "login_tokens"
    __table_args__ = (
        CheckConstraint("purpose IN ('login', 'staff_login')", name="purpose_valid"),
        CheckConstraint("expires_at > created_at", name="expires_after_created"),
        Index("ix_login_tokens_user_id_created_at", "user_id", "created_at"),
        CheckConstraint("(target_kind IS NULL) = (target_id IS NULL)", name="target_complete"),
    )

    id: Mapped[intpk]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    purpose: Mapped[str] = mapped_column(String(16), default="login")
    # NOTE: a hash of a random value kept in the requesting browser's cookie; a link opened in
    # another browser is shown with the account it signs into before it does anything.
    binding_hash: Mapped[str | None] = mapped_column(String(64))
    requested_ip: Mapped[str | None] = mapped_column(String(45))
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    expires_at: Mapped[datetime]
    consumed_at: Mapped[datetime | None]
    retired_at: Mapped[datetime | None]
    # NOTE: a deep link from an email is bound to one object (e.g. target_kind "invoice" and the
    # invoice's row id): it opens that object only. Both None for a plain sign-in link.
    target_kind: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[int | None] = mapped_column(BigInteger())

    user: Mapped[User] = relationship()


class UserSession(Base):
    """One signed-in browser. The cookie carries a random id; only its SHA-256 is stored here."""

    __tablename__ = "user_sessions"
    __table_args__ = (Index("ix_user_sessions_user_id_ended_at", "user_id", "ended_at"),)

    id: Mapped[intpk]
    # Names the row in the "Signed-in devices" list and its sign-out form (never the cookie id).
    public_id: Mapped[public_id]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    sid_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    last_seen_at: Mapped[datetime] = mapped_column(default=clock.now)
    ended_at: Mapped[datetime | None]
    ip: Mapped[str | None] = mapped_column(String(45))
    # A short summary of the User-Agent header, e.g. "Safari on iPhone".
    device: Mapped[str] = mapped_column(String(100), default="")

    user: Mapped[User] = relationship()

    @property
    def is_active(self) -> bool:
        return self.ended_at is None
