"""The billing run's batches make their invoices as plain rows (portal.billing.issuing
.issue_invoice_rows); a batch of one (bill_due_periods, the "resume now" path) makes them as
objects through billing.create_draft_invoice and issuing.issue_invoices. Both must store the
same thing: two identical worlds of mixed subscriptions (renewal, trial ending, scheduled plan
change, metered fee and usage, discount, tax exclusive and inclusive, JPY, a resumed pause, a
cancel, an invoice of nothing, extra recipients, a German account), one billed each way, and
every row they produced compared (ids and what is named after them mapped to their place)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.billing.models import AccountBalance, Invoice, InvoiceLine, LedgerEntry
from portal.notifications.models import EmailPreference, OutboxEmail
from portal.subscriptions.billing_run import bill_due_periods
from portal.subscriptions.models import (
    Price,
    Subscription,
    SubscriptionChange,
    TaxRate,
    UsageRecord,
)
from tests.factories import SELLER, make_account, make_price, make_subscription
from tests.subscriptions.test_billing_run import (  # noqa: F401 - the autouse fixture
    BERLIN,
    _in_order,
    ny,
    run,
)

AS_OF = date(2027, 1, 21)
NOW = datetime(2027, 1, 21, 12, tzinfo=UTC)


def _catalog(session: Session) -> dict[str, Price]:
    inclusive = TaxRate(name="MwSt 19%", rate_bp=1900, country="ALL", inclusive=True)
    jp = TaxRate(name="JCT 10%", rate_bp=1000, country="ALL", inclusive=True)
    seats = make_price(session, pricing_model="per_unit", unit_amount_minor=1500, tax_rate_bp=1900)
    seats.unit_label = "seat"
    cheaper = make_price(session, pricing_model="per_unit", unit_amount_minor=900)
    cheaper.unit_label = "seat"
    metered = make_price(
        session,
        currency="EUR",
        pricing_model="metered",
        unit_amount_minor=250,
        flat_amount_minor=4900,
    )
    metered.unit_label = "GB"
    metered.tax_rate = inclusive
    flat_eur = make_price(
        session, currency="EUR", pricing_model="flat", flat_amount_minor=10000, tax_rate_bp=700
    )
    yen = make_price(session, currency="JPY", pricing_model="flat", flat_amount_minor=3333)
    yen.tax_rate = jp
    session.flush()
    return {"seats": seats, "cheaper": cheaper, "metered": metered, "eur": flat_eur, "yen": yen}


def _world(session: Session, name: str, prices: dict[str, Price]) -> list[Subscription]:
    """The mixed subscriptions, in a fixed order; accounts alike but for their invoice prefix."""
    made: list[Subscription] = []

    def account(currency: str = "USD", **fields: Any) -> Any:
        n = len(made)
        fields = {
            "name": f"Customer {n}",
            "billing_email": f"customer{n}@example.com",
            "invoice_prefix": f"{name}{n:02d}",
            "timezone": "America/New_York",
            "country": "US",
            **fields,
        }
        return make_account(session, currency, **fields)

    def sub(acc: Any, price: Price, **fields: Any) -> Subscription:
        fields.setdefault("period_start", ny(2026, 11, 21))
        fields.setdefault("period_end", ny(2026, 12, 21))
        subscription = make_subscription(session, acc, price, **fields)
        made.append(subscription)
        return subscription

    # Renewal, two periods behind, tax exclusive, and an account with extra recipients.
    renewing = account(address_line1="1 Main St", city="Springfield", tax_id="US123")
    sub(renewing, prices["seats"], quantity=5)
    session.add(
        EmailPreference(account_id=renewing.id, extra_recipients="ap@example.com\nCFO@example.com")
    )
    # A trial ending.
    sub(
        account(),
        prices["seats"],
        quantity=2,
        status="trialing",
        period_end=ny(2027, 1, 5),
        trial_end=ny(2027, 1, 5),
    )
    # A scheduled plan change at the period's end.
    changing = sub(account(), prices["seats"], quantity=5)
    session.flush()
    session.add(
        SubscriptionChange(
            subscription_id=changing.id,
            kind="plan",
            status="scheduled",
            timing="period_end",
            actor_kind="customer",
            effective_at=changing.current_period_end,
            from_price_id=changing.price_id,
            to_price_id=prices["cheaper"].id,
            from_quantity=5,
            to_quantity=3,
        )
    )
    # Metered, tax inclusive, in Berlin, in German: fee and usage in arrears.
    berlin = account("EUR", timezone="Europe/Berlin", country="DE", locale="de")
    start = datetime(2026, 12, 1, tzinfo=BERLIN).astimezone(UTC)
    end = datetime(2027, 1, 1, tzinfo=BERLIN).astimezone(UTC)
    metered = sub(berlin, prices["metered"], period_start=start, period_end=end)
    session.flush()
    session.add_all(
        [
            UsageRecord(
                subscription_id=metered.id,
                quantity=quantity,
                occurred_at=start + timedelta(days=day),
                idempotency_key=f"{name}-{day}",
            )
            for day, quantity in ((2, 60), (20, 37))
        ]
    )
    # A discount for one of the two periods billed now.
    discounted = sub(account("EUR", timezone="UTC", country="DE"), prices["eur"])
    discounted.discount_bp, discounted.discount_periods_left = 2000, 1
    # JPY with an inclusive rate (no minor unit).
    sub(account("JPY", timezone="Asia/Tokyo", country="JP"), prices["yen"])
    # A pause that is over.
    paused = sub(account(), prices["seats"], status="paused")
    paused.pause_until = ny(2027, 1, 10)
    # A scheduled cancel (no invoice).
    leaving = sub(account(), prices["seats"])
    session.flush()
    session.add(
        SubscriptionChange(
            subscription_id=leaving.id,
            kind="cancel",
            status="scheduled",
            timing="period_end",
            effective_at=leaving.current_period_end,
            reason="too_expensive",
            reason_text="We are moving on",
        )
    )
    # An invoice of nothing: paid at once, no ledger entry, no email.
    free = sub(account(), prices["seats"], period_end=ny(2027, 1, 21))
    free.discount_bp, free.discount_periods_left = 10000, 3
    session.flush()
    return made


def _rows(session: Session, table: Table, *where: Any) -> list[dict[str, Any]]:
    return [
        dict(row)
        for row in session.execute(select(table).where(*where).order_by(table.c.id)).mappings()
    ]


def _cleaner(
    sub: Subscription,
    prefix: str,
    places: dict[int, str],
    changes: list[dict[str, Any]],
) -> Any:
    """A row's values with ids, and what is named after them, replaced by their place."""
    change_places = {c["id"]: f"change {k}" for k, c in enumerate(changes)}

    def named(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        for invoice_id, place in places.items():
            text = text.replace(f"invoice_issued:{invoice_id}", f"invoice_issued:{place}")
            text = text.replace(f"invoice:{invoice_id}", f"invoice:{place}")
        for change in changes:
            text = text.replace(change["public_id"], "change")
        return (
            text.replace(prefix, "PREFIX")
            .replace(sub.public_id, "SUB")
            .replace(f"sub:{sub.id}:", "sub:SUB:")
        )

    def clean(row: dict[str, Any], *drop: str) -> dict[str, Any]:
        cleaned = {}
        for key, value in row.items():
            if key in ("id", "public_id", *drop):
                continue
            if isinstance(value, dict):
                value = {k: named(v) for k, v in value.items()}
            cleaned[key] = named(value)
        if "invoice_id" in cleaned:
            cleaned["invoice_id"] = places.get(cleaned["invoice_id"], cleaned["invoice_id"])
        if "subscription_change_id" in cleaned:
            cleaned["subscription_change_id"] = change_places.get(cleaned["subscription_change_id"])
        return cleaned

    return clean


def _stored(session: Session, subs: list[Subscription]) -> list[dict[str, Any]]:
    """Everything billing stored for each subscription, with ids replaced by what they name."""
    out = []
    for sub in subs:
        session.refresh(sub)
        account = sub.account
        prefix = account.invoice_prefix
        invoices = _rows(session, Invoice.__table__, Invoice.subscription_id == sub.id)
        places = {inv["id"]: f"invoice {k}" for k, inv in enumerate(invoices)}
        changes = _rows(
            session, SubscriptionChange.__table__, SubscriptionChange.subscription_id == sub.id
        )
        clean = _cleaner(sub, prefix, places, changes)
        out.append(
            {
                "subscription": clean(
                    _rows(session, Subscription.__table__, Subscription.id == sub.id)[0],
                    "account_id",
                ),
                "changes": [clean(c, "subscription_id") for c in changes],
                "invoices": [clean(inv, "account_id", "subscription_id") for inv in invoices],
                "lines": [
                    clean(line)
                    for line in _rows(
                        session, InvoiceLine.__table__, InvoiceLine.invoice_id.in_(list(places))
                    )
                ],
                "ledger": [
                    clean(entry, "account_id")
                    for entry in _rows(
                        session, LedgerEntry.__table__, LedgerEntry.account_id == account.id
                    )
                ],
                "balance": [
                    clean(balance, "account_id")
                    for balance in session.execute(
                        select(AccountBalance.__table__).where(
                            AccountBalance.account_id == account.id
                        )
                    ).mappings()
                ],
                "audit": [
                    clean(event, "account_id")
                    for event in _rows(
                        session, AuditEvent.__table__, AuditEvent.account_id == account.id
                    )
                ],
                "outbox": [
                    clean(mail, "account_id", "message_id", "attachment_ref")
                    | {"attachment": places.get(int(mail["attachment_ref"] or 0))}
                    for mail in _rows(
                        session, OutboxEmail.__table__, OutboxEmail.account_id == account.id
                    )
                ],
            }
        )
    return out


def test_the_runs_rows_are_the_rows_the_object_path_makes(session: Session, clock: Any) -> None:
    clock.set(NOW)
    prices = _catalog(session)
    by_objects = _world(session, "O", prices)
    by_rows = _world(session, "R", prices)
    session.commit()
    # The object path first (its subscriptions are then no longer due), one transaction each.
    for subscription in by_objects:
        bill_due_periods(session, subscription, AS_OF, seller=SELLER)
        session.commit()
    summary = run(session, AS_OF)
    assert summary.total == len(by_rows)
    assert summary.invoices == 10 and summary.failed == 0
    expected = _stored(session, by_objects)
    stored = _stored(session, by_rows)
    for place, (got, want) in enumerate(zip(stored, expected, strict=True)):
        for part in want:
            assert got[part] == want[part], f"subscription {place}: {part} differ"
    # The mix is what it says: each kind of row is there.
    every = [row for sub in stored for row in sub["invoices"]]
    assert {inv["currency"] for inv in every} == {"USD", "EUR", "JPY"}
    assert any(inv["status"] == "paid" and inv["total_minor"] == 0 for inv in every)
    lines = [line for sub in stored for line in sub["lines"]]
    assert {line["kind"] for line in lines} == {"subscription", "usage", "discount"}
    assert {line["tax_inclusive"] for line in lines} == {True, False}
    assert any(line["subscription_change_id"] for line in lines)
    assert len(stored[0]["outbox"]) == 2 * 3  # two invoices, three recipients each
    for sub in stored:  # the balance is the sum of the ledger
        assert sum(entry["amount_minor"] for entry in sub["ledger"]) == sum(
            balance["balance_minor"] for balance in sub["balance"]
        )
