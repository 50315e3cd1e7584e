"""Money: exponents, the one rounding rule, allocation, and refusing floats."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.billing.money import (
    CurrencyMismatch,
    Money,
    allocate_minor,
    exponent,
    round_minor,
)

# What a BIGINT money column can hold.
BIGINT = 2**63 - 1
minor_units = st.integers(min_value=-BIGINT, max_value=BIGINT)
currencies = st.sampled_from(["USD", "EUR", "JPY", "KRW", "KWD", "BHD", "GBP", "XYZ"])


@pytest.mark.parametrize(
    ("currency", "expected"),
    [("JPY", 0), ("KRW", 0), ("USD", 2), ("EUR", 2), ("KWD", 3), ("BHD", 3), ("XYZ", 2)],
)
def test_exponent_follows_iso_4217_and_defaults_to_two(currency: str, expected: int) -> None:
    assert exponent(currency) == expected


@pytest.mark.parametrize("code", ["usd", "Usd", "US", "USDX", "", "U1D", "U D", "ÜSD"])
def test_exponent_refuses_what_is_not_a_currency_code(code: str) -> None:
    with pytest.raises(ValueError, match="ISO 4217"):
        exponent(code)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("0.49", 0),
        ("0.5", 1),
        ("1.5", 2),
        ("2.5", 3),
        ("2.4999", 2),
        ("-0.49", 0),
        ("-0.5", -1),
        ("-1.5", -2),
        ("-2.5", -3),
        ("-2.51", -3),
        ("123456789012345.5", 123456789012346),
    ],
)
def test_round_minor_is_half_away_from_zero(value: str, expected: int) -> None:
    assert round_minor(Decimal(value)) == expected


def test_round_minor_leaves_integers_alone() -> None:
    assert round_minor(7) == 7
    assert round_minor(-7) == -7
    assert type(round_minor(Decimal("7.5"))) is int


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("12.345", "USD", 1235),
        ("12.344", "USD", 1234),
        ("-12.345", "USD", -1235),
        ("12", "USD", 1200),
        (12, "USD", 1200),
        (Decimal("0.005"), "EUR", 1),
        ("1234.5", "JPY", 1235),
        ("1234.4", "JPY", 1234),
        ("1.2345", "KWD", 1235),
        ("1.2344", "KWD", 1234),
    ],
)
def test_from_decimal_scales_to_the_minor_unit_and_rounds_once(
    amount: str | int | Decimal, currency: str, expected: int
) -> None:
    assert Money.from_decimal(amount, currency) == Money(expected, currency)


def test_to_decimal_uses_the_currency_exponent() -> None:
    assert Money(1235, "USD").to_decimal() == Decimal("12.35")
    assert Money(1235, "JPY").to_decimal() == Decimal("1235")
    assert Money(1235, "KWD").to_decimal() == Decimal("1.235")
    assert Money(-5, "USD").to_decimal() == Decimal("-0.05")


@pytest.mark.parametrize(
    ("minor", "bp", "expected"),
    [
        (333, 1900, 63),  # 63.27
        (10000, 1900, 1900),
        (5, 1000, 1),  # 0.5 rounds up
        (4, 1000, 0),  # 0.4 rounds down
        (-5, 1000, -1),  # a credit rounds to the negative of the charge
        (12345, 0, 0),
        (12345, 10000, 12345),
    ],
)
def test_basis_points_rounds_once_half_up(minor: int, bp: int, expected: int) -> None:
    assert Money(minor, "USD").basis_points(bp) == Money(expected, "USD")


def test_times_rounds_once() -> None:
    assert Money(1000, "USD").times(3) == Money(3000, "USD")
    assert Money(1000, "USD").times(Decimal("0.3333")) == Money(333, "USD")
    assert Money(15, "USD").times(Decimal("0.5")) == Money(8, "USD")


def test_arithmetic_and_comparison_within_one_currency() -> None:
    a, b = Money(150, "EUR"), Money(50, "EUR")
    assert a + b == Money(200, "EUR")
    assert a - b == Money(100, "EUR")
    assert -a == Money(-150, "EUR")
    assert b < a and b <= a and a > b and a >= b
    assert not Money.zero("EUR")
    assert Money(1, "EUR")


@pytest.mark.parametrize(
    "combine",
    [
        lambda a, b: a + b,
        lambda a, b: a - b,
        lambda a, b: a < b,
        lambda a, b: a <= b,
        lambda a, b: a > b,
        lambda a, b: a >= b,
    ],
)
def test_combining_two_currencies_raises(combine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CurrencyMismatch):
        combine(Money(100, "USD"), Money(100, "EUR"))


def test_currency_mismatch_is_a_value_error() -> None:
    assert issubclass(CurrencyMismatch, ValueError)


def test_money_does_not_combine_with_bare_numbers() -> None:
    with pytest.raises(TypeError):
        Money(100, "USD") + 1  # type: ignore[operator]


@pytest.mark.parametrize("minor", [1.0, 0.5, True, False, Decimal("1"), "100", None])
def test_money_refuses_anything_but_an_int(minor: object) -> None:
    with pytest.raises(TypeError):
        Money(minor, "USD")  # type: ignore[arg-type]


def test_money_refuses_a_bad_currency() -> None:
    with pytest.raises(ValueError):
        Money(100, "usd")


@pytest.mark.parametrize("amount", [1.005, 0.1, True])
def test_from_decimal_refuses_floats_and_bools(amount: object) -> None:
    # NOTE: 1.005 as a float is 1.00499999…, which would silently become 100 cents, not 101.
    with pytest.raises(TypeError):
        Money.from_decimal(amount, "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0.5, 100.5, True])
def test_round_minor_refuses_floats_and_bools(value: object) -> None:
    with pytest.raises(TypeError):
        round_minor(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("factor", [0.1, 1.005])
def test_times_refuses_a_float_factor(factor: float) -> None:
    with pytest.raises(TypeError):
        Money(1000, "USD").times(factor)  # type: ignore[arg-type]


def test_allocate_splits_by_largest_remainder_earliest_first() -> None:
    assert allocate_minor(100, [1, 1, 1]) == [34, 33, 33]
    assert allocate_minor(-100, [1, 1, 1]) == [-34, -33, -33]
    assert allocate_minor(5, [0, 1]) == [0, 5]
    assert Money(1000, "USD").allocate([1, 3]) == [Money(250, "USD"), Money(750, "USD")]


@pytest.mark.parametrize("weights", [[], [0, 0], [1, -1]])
def test_allocate_refuses_weights_it_cannot_split_by(weights: list[int]) -> None:
    with pytest.raises(ValueError):
        allocate_minor(100, weights)


weight_lists = st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=25).filter(
    lambda ws: sum(ws) > 0
)


@settings(max_examples=300)
@given(total=st.integers(), weights=weight_lists)
def test_allocation_sums_exactly_and_each_part_is_within_one_of_its_share(
    total: int, weights: list[int]
) -> None:
    parts = allocate_minor(total, weights)
    assert len(parts) == len(weights)
    assert sum(parts) == total
    weight_sum = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        assert abs(Fraction(part) - Fraction(total * weight, weight_sum)) < 1
        if weight == 0:
            assert part == 0


@settings(max_examples=300)
@given(
    value=st.decimals(
        min_value=-(10**18), max_value=10**18, places=4, allow_nan=False, allow_infinity=False
    )
)
def test_rounding_is_symmetric_and_within_half_a_unit(value: Decimal) -> None:
    rounded = round_minor(value)
    assert round_minor(-value) == -rounded
    assert abs(Decimal(rounded) - value) <= Decimal("0.5")


@settings(max_examples=300)
@given(minor=minor_units, currency=currencies)
def test_decimal_round_trip_is_exact(minor: int, currency: str) -> None:
    money = Money(minor, currency)
    assert Money.from_decimal(money.to_decimal(), currency) == money
    assert Money.from_decimal(str(money.to_decimal()), currency) == money
