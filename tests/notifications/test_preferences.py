"""An account's email preferences: the lookup the account page makes on every view."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from portal.notifications import preferences
from portal.notifications.models import EmailPreference
from tests.factories import make_account


def test_for_account_finds_the_accounts_own_row_or_none(session: Session) -> None:
    mine, theirs, without = make_account(session), make_account(session), make_account(session)
    for account, extra in ((mine, "a@example.com"), (theirs, "b@example.com")):
        session.add(
            EmailPreference(
                account_id=account.id,
                extra_recipients=extra,
                opt_out_reminders=False,
                opt_out_card_expiry=True,
            )
        )
    session.flush()
    found = preferences.for_account(session, mine.id)
    assert found is not None and preferences.extra_recipients(found) == ["a@example.com"]
    other = preferences.for_account(session, theirs.id)
    assert other is not None and other.account_id == theirs.id
    assert preferences.for_account(session, without.id) is None


def test_for_account_sends_the_statement_built_once(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NOTE: performance work of issue 9: the account page asks on every view, and building the
    # select (and its cache key) per call cost about as much as running it (~0.1 ms per call,
    # measured with /tmp scripts on the bench data): the same statement object every time,
    # with the account as a bound parameter.
    sent: list[Any] = []
    scalar = session.scalar

    def spy(statement: Any, params: Any = None, **kwargs: Any) -> Any:
        sent.append(statement)
        return scalar(statement, params, **kwargs)

    monkeypatch.setattr(session, "scalar", spy)
    first, second = make_account(session), make_account(session)
    preferences.for_account(session, first.id)
    preferences.for_account(session, second.id)
    assert len(sent) == 2 and sent[0] is sent[1]
