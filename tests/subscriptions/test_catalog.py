"""Creating prices: tier validation, versions (a new amount is a new price), per currency."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.billing.money import Money
from portal.errors import ValidationFailed
from portal.subscriptions.catalog import TierInput, active_price, create_price
from portal.subscriptions.models import Plan, Price, TaxRate
from portal.subscriptions.pricing import charge_for
from tests.factories import make_price


@pytest.fixture()
def plan(session: Session) -> Plan:
    plan = Plan(code="catalog-test", name="Catalog test")
    session.add(plan)
    session.flush()
    return plan


GOOD_TIERS = [TierInput(10, 500), TierInput(50, 400), TierInput(None, 300, 2000)]


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ([], "at least one tier"),
        ([TierInput(10, 500), TierInput(100, 400)], "last tier must be unbounded"),
        ([TierInput(None, 500), TierInput(None, 400)], "Only the last tier"),
        ([TierInput(10, 500), TierInput(10, 400), TierInput(None, 1)], "must increase"),
        ([TierInput(50, 500), TierInput(10, 400), TierInput(None, 1)], "must increase"),
        ([TierInput(0, 500), TierInput(None, 400)], "positive whole number"),
        ([TierInput(-5, 500), TierInput(None, 400)], "positive whole number"),
        ([TierInput(10, -1), TierInput(None, 400)], "Amounts must be whole numbers"),
        ([TierInput(10, 10**12), TierInput(None, 400)], "Amounts must be whole numbers"),
        ([TierInput(i + 1, 1) for i in range(25)] + [TierInput(None, 1)], "at most 20 tiers"),
    ],
    ids=[
        "none",
        "bounded last tier",
        "unbounded before the last",
        "equal bounds",
        "falling bounds",
        "zero bound",
        "negative bound",
        "negative amount",
        "absurd amount",
        "too many",
    ],
)
def test_tiers_are_validated_when_the_price_is_created(
    session: Session, plan: Plan, tiers: list[TierInput], message: str
) -> None:
    with pytest.raises(ValidationFailed, match=message):
        create_price(
            session,
            plan=plan,
            currency="USD",
            pricing_model="tiered",
            tier_mode="graduated",
            tiers=tiers,
        )
    assert session.scalars(select(Price).where(Price.plan_id == plan.id)).all() == []


def test_the_bounded_last_tier_of_the_issue_is_refused_and_never_undercharges() -> None:
    # 100 units at a bounded last tier used to bill 1,500 (graduated) where volume raised.
    bounded = make_price(
        pricing_model="tiered", tier_mode="graduated", tiers=[(10, 100, 0), (50, 10, 0)]
    )
    with pytest.raises(ValueError, match="unbounded"):
        charge_for(bounded, 100)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pricing_model": "gift"}, "Unknown pricing model"),
        ({"currency": "XXX"}, "not supported"),
        ({"billing_interval": "week"}, "monthly or yearly"),
        ({"interval_count": 0}, "out of range"),
        ({"interval_count": 99}, "out of range"),
        ({"unit_amount_minor": -1}, "Amounts must be"),
        ({"unit_amount_minor": 10**15}, "Amounts must be"),
        ({"unit_amount_minor": 1.5}, "Amounts must be"),
        ({"min_quantity": 5, "max_quantity": 2}, "maximum quantity cannot be below"),
        ({"min_quantity": -1}, "whole numbers from 0"),
        ({"max_quantity": 10**9}, "whole numbers from 0"),
        ({"unit_amount_minor": 0}, "needs a unit amount"),
        ({"tier_mode": "volume"}, "Only a tiered price"),
    ],
)
def test_bad_per_unit_prices_are_refused_with_words(
    session: Session, plan: Plan, kwargs: dict, message: str
) -> None:
    arguments = {
        "plan": plan,
        "currency": "USD",
        "pricing_model": "per_unit",
        "unit_amount_minor": 1500,
    }
    arguments.update(kwargs)
    with pytest.raises(ValidationFailed, match=message):
        create_price(session, **arguments)


def test_a_new_amount_is_a_new_version_and_the_old_one_stays(session: Session, plan: Plan) -> None:
    first = create_price(
        session, plan=plan, currency="USD", pricing_model="per_unit", unit_amount_minor=1500
    )
    same = create_price(
        session, plan=plan, currency="USD", pricing_model="per_unit", unit_amount_minor=1500
    )
    assert same.id == first.id and first.version == 1
    second = create_price(
        session, plan=plan, currency="USD", pricing_model="per_unit", unit_amount_minor=1800
    )
    assert (second.version, second.is_active) == (2, True)
    session.refresh(first)
    assert (first.is_active, first.unit_amount_minor) == (False, 1500)
    assert active_price(session, plan, "USD").id == second.id
    event = session.scalars(
        select(AuditEvent).where(
            AuditEvent.action == "price.created", AuditEvent.target_id == second.public_id
        )
    ).one()
    assert event.before["unit_amount_minor"] == 1500
    assert event.after["unit_amount_minor"] == 1800 and event.after["version"] == 2


def test_one_active_price_per_plan_currency_and_interval(session: Session, plan: Plan) -> None:
    create_price(session, plan=plan, currency="USD", pricing_model="flat", flat_amount_minor=100)
    session.add(
        Price(
            plan_id=plan.id,
            currency="USD",
            billing_interval="month",
            interval_count=1,
            version=7,
            pricing_model="flat",
            flat_amount_minor=200,
            is_active=True,
        )
    )
    with pytest.raises(IntegrityError):
        session.flush()


def test_each_currency_and_interval_has_its_own_price(session: Session, plan: Plan) -> None:
    usd = create_price(
        session, plan=plan, currency="USD", pricing_model="flat", flat_amount_minor=2900
    )
    jpy = create_price(
        session, plan=plan, currency="JPY", pricing_model="flat", flat_amount_minor=3200
    )
    kwd = create_price(
        session, plan=plan, currency="KWD", pricing_model="flat", flat_amount_minor=9500
    )
    yearly = create_price(
        session,
        plan=plan,
        currency="USD",
        billing_interval="year",
        pricing_model="flat",
        flat_amount_minor=29000,
    )
    assert {p.version for p in (usd, jpy, kwd, yearly)} == {1}
    assert active_price(session, plan, "JPY").id == jpy.id
    assert active_price(session, plan, "USD", "year").id == yearly.id
    assert charge_for(kwd, 1) == Money(9500, "KWD")
    assert active_price(session, plan, "EUR") is None


def test_a_retired_tax_rate_cannot_be_put_on_a_new_price(session: Session, plan: Plan) -> None:
    rate = TaxRate(name="Old VAT", rate_bp=1600, country="DE", inclusive=False, is_active=False)
    session.add(rate)
    session.flush()
    with pytest.raises(ValidationFailed, match="no longer in use"):
        create_price(
            session,
            plan=plan,
            currency="EUR",
            pricing_model="flat",
            flat_amount_minor=100,
            tax_rate=rate,
        )


# Graduated and volume side by side at every edge of the tiers (and one unit either side).
EDGES = [
    (0, 0, 0),
    (1, 500, 500),
    (9, 4500, 4500),
    (10, 5000, 5000),
    (11, 5400, 4400),
    (49, 20600, 19600),
    (50, 21000, 20000),
    (51, 21000 + 2000 + 300, 2000 + 51 * 300),
    (52, 21000 + 2000 + 600, 2000 + 52 * 300),
]


@pytest.mark.parametrize(("quantity", "graduated", "volume"), EDGES)
def test_graduated_and_volume_at_every_tier_edge(
    session: Session, plan: Plan, quantity: int, graduated: int, volume: int
) -> None:
    g = create_price(
        session,
        plan=plan,
        currency="USD",
        pricing_model="tiered",
        tier_mode="graduated",
        tiers=GOOD_TIERS,
    )
    v = create_price(
        session,
        plan=plan,
        currency="EUR",
        pricing_model="tiered",
        tier_mode="volume",
        tiers=GOOD_TIERS,
    )
    assert charge_for(g, quantity) == Money(graduated, "USD")
    assert charge_for(v, quantity) == Money(volume, "EUR")
