"""One-time sign-in tokens. Only a hash of each token is stored."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal import clock
from portal.accounts.models import User
from portal.db import Base, intpk


class LoginToken(Base):
    __tablename__ = "login_tokens"
    __table_args__ = (
        CheckConstraint("purpose IN ('login', 'staff_login')", name="purpose_valid"),
        CheckConstraint("expires_at > created_at", name="expires_after_created"),
        Index("ix_login_tokens_user_id_created_at", "user_id", "created_at"),
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

    user: Mapped[User] = relationship()
