"""What a price charges for a quantity, on unsaved prices (no database needed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.billing.money import Money
from portal.subscriptions.pricing import charge_for, estimate_period_amount
from tests.factories import make_price


def test_flat_ignores_the_quantity() -> None:
    price = make_price(pricing_model="flat", flat_amount_minor=2900)
    assert (
        charge_for(price, 0) == charge_for(price, 1) == charge_for(price, 50) == Money(2900, "USD")
    )


def test_per_unit_multiplies_by_the_seats_plus_any_flat_fee() -> None:
    price = make_price(pricing_model="per_unit", unit_amount_minor=1500)
    assert charge_for(price, 5) == Money(7500, "USD")
    assert charge_for(price, 0) == Money(0, "USD")
    with_base = make_price(pricing_model="per_unit", unit_amount_minor=1500, flat_amount_minor=1000)
    assert charge_for(with_base, 5) == Money(8500, "USD")


def test_metered_charges_the_usage_plus_the_platform_fee() -> None:
    price = make_price(
        currency="EUR", pricing_model="metered", unit_amount_minor=250, flat_amount_minor=4900
    )
    assert charge_for(price, 96) == Money(4900 + 96 * 250, "EUR")
    assert charge_for(price, 0) == Money(4900, "EUR")


# First 10 units at 5.00, the next 40 at 4.00, the rest at 3.00 plus a 20.00 fee on entering it.
TIERS = [(10, 500, 0), (50, 400, 0), (None, 300, 2000)]


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        (0, 0),
        (1, 500),
        (10, 5000),
        (11, 5000 + 400),
        (50, 5000 + 40 * 400),
        (51, 5000 + 40 * 400 + 2000 + 300),
        (100, 5000 + 40 * 400 + 2000 + 50 * 300),
    ],
)
def test_graduated_tiers_charge_each_unit_at_its_own_tier(quantity: int, expected: int) -> None:
    price = make_price(pricing_model="tiered", tier_mode="graduated", tiers=TIERS)
    assert charge_for(price, quantity) == Money(expected, "USD")


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        (0, 0),
        (1, 500),
        (10, 10 * 500),
        (11, 11 * 400),
        (50, 50 * 400),
        (51, 2000 + 51 * 300),
        (100, 2000 + 100 * 300),
    ],
)
def test_volume_tiers_charge_every_unit_at_the_tier_the_total_falls_in(
    quantity: int, expected: int
) -> None:
    price = make_price(pricing_model="tiered", tier_mode="volume", tiers=TIERS)
    assert charge_for(price, quantity) == Money(expected, "USD")


def test_tiers_are_read_in_position_order_whatever_order_they_were_given() -> None:
    price = make_price(pricing_model="tiered", tier_mode="graduated", tiers=TIERS)
    price.tiers.reverse()
    assert charge_for(price, 11) == Money(5400, "USD")


def test_volume_pricing_needs_an_unbounded_last_tier() -> None:
    price = make_price(pricing_model="tiered", tier_mode="volume", tiers=[(10, 500, 0)])
    with pytest.raises(ValueError):
        charge_for(price, 11)


def test_a_negative_quantity_is_refused() -> None:
    with pytest.raises(ValueError):
        charge_for(make_price(pricing_model="per_unit", unit_amount_minor=100), -1)


def test_the_estimate_adds_tax_and_shows_only_the_fixed_part_of_a_metered_price() -> None:
    seats = make_price(pricing_model="per_unit", unit_amount_minor=1400, tax_rate_bp=1900)
    assert estimate_period_amount(seats, 5) == Money(7000 + 1330, "USD")
    metered = make_price(
        pricing_model="metered", unit_amount_minor=250, flat_amount_minor=4900, tax_rate_bp=1900
    )
    assert estimate_period_amount(metered, 1000) == Money(4900 + 931, "USD")


@st.composite
def graduated_tiers(draw: st.DrawFn) -> list[tuple[int | None, int, int]]:
    bounds = sorted(draw(st.sets(st.integers(1, 1000), max_size=5)))
    amounts = st.tuples(st.integers(0, 10_000), st.integers(0, 10_000))
    tiers: list[tuple[int | None, int, int]] = []
    for up_to in [*bounds, None]:
        unit, flat = draw(amounts)
        tiers.append((up_to, unit, flat))
    return tiers


@settings(max_examples=300)
@given(tiers=graduated_tiers(), quantity=st.integers(0, 1200), more=st.integers(1, 200))
def test_a_graduated_price_never_falls_as_the_quantity_grows(
    tiers: list[tuple[int | None, int, int]], quantity: int, more: int
) -> None:
    price = make_price(pricing_model="tiered", tier_mode="graduated", tiers=tiers)
    assert charge_for(price, quantity + 1) >= charge_for(price, quantity)
    assert charge_for(price, quantity + more) >= charge_for(price, quantity)


@settings(max_examples=300)
@given(tiers=graduated_tiers(), quantity=st.integers(0, 1200))
def test_a_graduated_price_is_the_sum_of_its_units(
    tiers: list[tuple[int | None, int, int]], quantity: int
) -> None:
    price = make_price(pricing_model="tiered", tier_mode="graduated", tiers=tiers)
    # Unit by unit: each unit costs its tier's rate, and each tier entered adds its flat fee.
    expected, entered = 0, set()
    for unit in range(1, quantity + 1):
        for index, (up_to, rate, flat) in enumerate(tiers):
            if up_to is None or unit <= up_to:
                expected += rate
                if index not in entered:
                    entered.add(index)
                    expected += flat
                break
    assert charge_for(price, quantity).minor == expected
