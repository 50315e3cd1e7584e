"""The worker's clean-up: ended sessions and expired sign-in links go after a while."""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.auth.models import LoginToken, UserSession
from portal.auth.purge import purge_ended_sessions_and_tokens
from portal.clock import FrozenClock
from tests.factories import make_user


def test_old_ended_sessions_and_expired_links_are_purged_live_ones_kept(
    session: Session, clock: FrozenClock
) -> None:
    user = make_user(session)
    now = clock()

    def a_session(ended_days_ago: int | None) -> UserSession:
        ended = None if ended_days_ago is None else now - timedelta(days=ended_days_ago)
        row = UserSession(user_id=user.id, sid_hash=secrets.token_hex(32), ended_at=ended)
        session.add(row)
        return row

    def a_token(expired_days_ago: int) -> LoginToken:
        expires = now - timedelta(days=expired_days_ago)
        row = LoginToken(
            user_id=user.id,
            token_hash=secrets.token_hex(32),
            created_at=expires - timedelta(minutes=10),
            expires_at=expires,
        )
        session.add(row)
        return row

    live, recent, old = a_session(None), a_session(3), a_session(40)
    fresh, stale = a_token(-1), a_token(8)
    session.commit()
    ids = {row.id for row in (live, recent, old)}, {row.id for row in (fresh, stale)}
    assert purge_ended_sessions_and_tokens(session) == 2
    kept_sessions = set(session.scalars(select(UserSession.id).where(UserSession.id.in_(ids[0]))))
    kept_tokens = set(session.scalars(select(LoginToken.id).where(LoginToken.id.in_(ids[1]))))
    assert kept_sessions == {live.id, recent.id}
    assert kept_tokens == {fresh.id}
