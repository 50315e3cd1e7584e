"""Staff roles as a service: what `portal create-staff` calls."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.accounts.models import User
from portal.audit.models import AuditEvent
from portal.errors import ValidationFailed
from portal.staff.services import grouped_secret, set_staff_role
from tests.factories import make_account, make_user


def test_set_staff_role_creates_a_staff_user_with_a_normalised_address(session: Session) -> None:
    user, created = set_staff_role(session, "  New.Person@Example.COM ", "support", "New Person")
    assert created
    assert (user.email, user.staff_role) == ("new.person@example.com", "support")
    assert user.name == "New Person"
    event = session.scalars(select(AuditEvent).where(AuditEvent.action == "staff.role_set")).one()
    assert (event.before, event.after) == ({"staff_role": None}, {"staff_role": "support"})
    assert event.target_id == user.public_id


def test_changing_a_role_ends_the_users_sessions_and_keeping_it_does_not(
    session: Session,
) -> None:
    customer = make_user(session, "promoted@example.com", make_account(session))
    epoch = customer.session_epoch
    user, created = set_staff_role(session, customer.email, "admin")
    assert not created and user is customer
    assert user.staff_role == "admin" and user.session_epoch == epoch + 1
    set_staff_role(session, customer.email, "admin")
    assert user.session_epoch == epoch + 1  # the same role again changes no session


@pytest.mark.parametrize(
    ("email", "role", "message"),
    [("not-an-email", "admin", "not a valid email"), ("x@example.com", "god", "not a staff role")],
)
def test_bad_input_is_refused_and_changes_nothing(
    session: Session, email: str, role: str, message: str
) -> None:
    with pytest.raises(ValidationFailed, match=message):
        set_staff_role(session, email, role)
    assert session.scalars(select(User)).all() == []
    assert session.scalars(select(AuditEvent)).all() == []


def test_a_totp_key_is_grouped_in_fours() -> None:
    assert grouped_secret("ABCDEFGHIJKLMNOP") == "ABCD EFGH IJKL MNOP"
