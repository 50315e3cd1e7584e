"""Accounts (the billing customer), users and their memberships."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal import clock
from portal.db import Base, currency_check, intpk, one_of, public_id


class MemberRole(StrEnum):
    OWNER = "owner"
    BILLING = "billing"
    VIEWER = "viewer"


class StaffRole(StrEnum):
    SUPPORT = "support"
    ADMIN = "admin"


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (CheckConstraint(currency_check(), name="currency_iso"),)

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    name: Mapped[str] = mapped_column(String(200))
    billing_email: Mapped[str] = mapped_column(String(254))
    address_line1: Mapped[str] = mapped_column(String(200), default="")
    address_line2: Mapped[str] = mapped_column(String(200), default="")
    city: Mapped[str] = mapped_column(String(100), default="")
    postal_code: Mapped[str] = mapped_column(String(20), default="")
    region: Mapped[str] = mapped_column(String(100), default="")
    country: Mapped[str] = mapped_column(String(2), default="US")
    tax_id: Mapped[str] = mapped_column(String(50), default="")
    currency: Mapped[str] = mapped_column(String(3))
    locale: Mapped[str] = mapped_column(String(16), default="en_US")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # NOTE: per-account invoice series, so a customer's numbers are gapless and reveal nothing
    # about how many invoices other customers receive.
    invoice_prefix: Mapped[str] = mapped_column(String(12), unique=True)
    payment_terms_days: Mapped[int] = mapped_column(default=30)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now, onupdate=clock.now)

    memberships: Mapped[list[Membership]] = relationship(back_populates="account")

    def __repr__(self) -> str:
        return f"<Account {self.public_id} {self.name!r}>"


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("email = lower(email)", name="email_lowercase"),
        CheckConstraint("session_epoch >= 0", name="session_epoch_non_negative"),
        CheckConstraint(
            "staff_role IS NULL OR " + one_of("staff_role", StaffRole), name="staff_role_valid"
        ),
    )

    id: Mapped[intpk]
    public_id: Mapped[public_id]
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    staff_role: Mapped[str | None] = mapped_column(String(16))
    # NOTE: every session cookie carries the epoch it was issued under; bumping it ends all of
    # the user's sessions on the server (sign out everywhere, disable, role change).
    session_epoch: Mapped[int] = mapped_column(default=0)
    disabled_at: Mapped[datetime | None]
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_confirmed_at: Mapped[datetime | None]
    # NOTE: the 30-second time step of the last TOTP code accepted; a code of this step or an
    # earlier one is refused, so a code seen over a shoulder cannot be used again.
    totp_last_step: Mapped[int | None]
    # NOTE: the secret being enrolled waits here (never in the readable session cookie) until
    # a code from the authenticator app proves the app has it.
    totp_pending_secret: Mapped[str | None] = mapped_column(String(64))
    totp_pending_at: Mapped[datetime | None]
    last_sign_in_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=clock.now)

    memberships: Mapped[list[Membership]] = relationship(back_populates="user")

    @property
    def is_staff(self) -> bool:
        return self.staff_role is not None

    @property
    def is_disabled(self) -> bool:
        return self.disabled_at is not None

    def __repr__(self) -> str:
        return f"<User {self.email}>"


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("user_id", "account_id"),
        CheckConstraint(one_of("role", MemberRole), name="role_valid"),
        Index("ix_memberships_account_id", "account_id"),
    )

    id: Mapped[intpk]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16), default=MemberRole.OWNER.value)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)

    user: Mapped[User] = relationship(back_populates="memberships")
    account: Mapped[Account] = relationship(back_populates="memberships")


class RecoveryCode(Base):
    """A staff member's one-time TOTP recovery code (only its hash is kept)."""

    __tablename__ = "recovery_codes"
    __table_args__ = (UniqueConstraint("user_id", "code_hash"),)

    id: Mapped[intpk]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    code_hash: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
