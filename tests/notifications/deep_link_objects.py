"""Deep links to the owner's objects for the authorization harness (a fresh one on each use)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import inspect

from portal.accounts.models import Account, User
from portal.extensions import db
from portal.notifications import deep_links
from portal.notifications.emails import Target


def owner_deep_link(world: Any) -> str:
    """The path of a new deep link to the owner's invoice, bound to the owner."""
    session = db.session
    account = session.get(Account, int(inspect(world.account).identity[0]))
    invoice_id = int(inspect(world.invoice).identity[0])
    owner = session.get(User, int(inspect(world.owner).identity[0]))
    assert owner is not None
    email = owner.email
    assert account is not None
    url = deep_links.link_for(session, account, email, Target("invoice", invoice_id))
    assert "/l/" in url
    session.commit()
    return urlsplit(url).path
