"""`billing run --as-of` a date past the demo renewals bills each demo subscription once."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.accounts.models import Account
from portal.billing.models import Invoice
from portal.demo import seed_demo
from portal.subscriptions import billing_run
from portal.subscriptions.billing_run import run_billing
from portal.subscriptions.models import Subscription


@pytest.fixture(autouse=True)
def _in_order(monkeypatch) -> None:
    monkeypatch.setattr(billing_run, "_start_at", lambda n: 0)


def test_the_demo_renews_once_past_its_renewal_date(app, session: Session, clock) -> None:
    seed_demo(session, app.config["SELLER"])
    session.commit()
    subscriptions = session.scalars(select(Subscription)).all()
    latest_end = max(
        s.current_period_end.astimezone(ZoneInfo(s.account.timezone)).date() for s in subscriptions
    )
    before = {
        s.id: len(session.scalars(select(Invoice.id).where(Invoice.subscription_id == s.id)).all())
        for s in subscriptions
    }
    as_of = latest_end + timedelta(days=1)
    summary = run_billing(session, as_of, seller=app.config["SELLER"])
    assert summary.failed == 0
    assert summary.invoices == len(subscriptions)
    for s in subscriptions:
        session.refresh(s)
        invoices = session.scalars(
            select(Invoice).where(Invoice.subscription_id == s.id).order_by(Invoice.id)
        ).all()
        assert len(invoices) == before[s.id] + 1
        new = invoices[-1]
        assert new.total_minor == sum(line.amount_minor + line.tax_minor for line in new.lines)
        account = session.get(Account, s.account_id)
        assert new.number.startswith(account.invoice_prefix)
    again = run_billing(session, as_of, seller=app.config["SELLER"])
    assert again.invoices == 0
