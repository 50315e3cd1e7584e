"""Forgetting what sign-in no longer needs: ended sessions and expired or used sign-in links
(a job of the worker). Audit events keep the history; these rows only serve live sign-ins."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, or_
from sqlalchemy.orm import Session

from portal import clock
from portal.auth.models import LoginToken, UserSession
from portal.db import begin_write, commit

# NOTE: kept a while after they end, so "signed-in devices" and support can still see them.
SESSION_KEEP = timedelta(days=30)
TOKEN_KEEP = timedelta(days=7)


def purge_ended_sessions_and_tokens(session: Session) -> int:
    """Delete sessions ended over 30 days ago and links expired over 7 days ago; returns how
    many rows went. Commits (a job-level function)."""
    now = clock.now()
    begin_write(session)
    sessions = session.execute(
        delete(UserSession)
        .where(UserSession.ended_at.is_not(None), UserSession.ended_at < now - SESSION_KEEP)
        .execution_options(synchronize_session=False)
    )
    tokens = session.execute(
        delete(LoginToken)
        .where(
            or_(
                LoginToken.expires_at < now - TOKEN_KEEP,
                LoginToken.consumed_at < now - TOKEN_KEEP,
            )
        )
        .execution_options(synchronize_session=False)
    )
    commit(session)
    return int(getattr(sessions, "rowcount", 0) or 0) + int(getattr(tokens, "rowcount", 0) or 0)
