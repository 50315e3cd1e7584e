"""The owner's subscription for the authorization and audit harnesses (made on first use)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect

from portal.accounts.models import Account
from portal.extensions import db


def owner_subscription(world: Any) -> str:
    if "subscription" not in world.extra:
        from tests.subscriptions.ladder import make_ladder, make_subscription

        session = db.session
        account = session.get(Account, int(inspect(world.account).identity[0]))
        ladder = make_ladder(session, account.currency)
        subscription = make_subscription(
            session, account, ladder.prices[("team", "month")], 5, **_around_now()
        )
        session.commit()
        world.extra["subscription"] = subscription.public_id
    return world.extra["subscription"]


def _around_now() -> dict[str, Any]:
    from datetime import timedelta

    from portal import clock

    now = clock.now().replace(microsecond=0)
    return {"start": now - timedelta(days=10), "end": now + timedelta(days=20)}
