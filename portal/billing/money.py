"""Money: integer minor units plus an ISO 4217 currency. The one rounding rule lives here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Self

# NOTE: ISO 4217 minor-unit exponents. Currencies not listed use two decimals, which is what ISO
# gives for almost every other currency we could be asked to bill in.
_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
}

SUPPORTED_CURRENCIES = ("USD", "EUR", "GBP", "CHF", "CAD", "AUD", "JPY", "KRW", "BHD", "KWD")


class CurrencyMismatch(ValueError):
    """Two amounts in different currencies were combined."""


# Codes already checked (every Money checks its currency: a statement makes hundreds).
_CHECKED: dict[str, int] = {}


def exponent(currency: str) -> int:
    """How many decimals the currency's minor unit has (JPY 0, USD 2, KWD 3)."""
    if type(currency) is str:
        found = _CHECKED.get(currency)
        if found is not None:
            return found
    if (
        not isinstance(currency, str)
        or len(currency) != 3
        or not currency.isascii()
        or not currency.isalpha()
        or not currency.isupper()
    ):
        raise ValueError(f"not an ISO 4217 currency code: {currency!r}")
    digits = _EXPONENTS.get(currency, 2)
    if type(currency) is str and len(_CHECKED) < 1024:
        _CHECKED[currency] = digits
    return digits


def round_minor(value: Decimal | int) -> int:
    """The one rounding function: a fractional count of minor units to an integer, half up.

    NOTE: "half up" is half away from zero (0.5 -> 1, -0.5 -> -1), so a credit of a charge
    rounds to exactly the negative of the charge.
    """
    _refuse_float(value)
    return int(Decimal(value).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass(frozen=True, slots=True, order=False)
class Money:
    minor: int
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.minor, int) or isinstance(self.minor, bool):
            raise TypeError("Money.minor must be an int count of minor units")
        exponent(self.currency)

    @classmethod
    def zero(cls, currency: str) -> Self:
        return cls(0, currency)

    @classmethod
    def from_decimal(cls, amount: Decimal | str | int, currency: str) -> Self:
        """From major units ("12.345" USD -> 1235 cents), rounded once, half up."""
        if isinstance(amount, bool) or not isinstance(amount, Decimal | str | int):
            raise TypeError("Money.from_decimal takes a Decimal, a str or an int, never a float")
        scaled = Decimal(amount).scaleb(exponent(currency))
        return cls(round_minor(scaled), currency)

    def to_decimal(self) -> Decimal:
        return Decimal(self.minor).scaleb(-exponent(self.currency))

    def _same(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} and {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor - other.minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.minor < other.minor

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.minor <= other.minor

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.minor > other.minor

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.minor >= other.minor

    def __bool__(self) -> bool:
        return self.minor != 0

    def times(self, factor: Decimal | int) -> Money:
        """Multiply by a quantity or ratio, rounding once."""
        _refuse_float(factor)
        return Money(round_minor(Decimal(self.minor) * Decimal(factor)), self.currency)

    def basis_points(self, bp: int) -> Money:
        """A percentage in basis points (1900 = 19 %), rounded once: tax and discounts."""
        return Money(round_minor(Decimal(self.minor) * bp / Decimal(10_000)), self.currency)

    def allocate(self, weights: Sequence[int]) -> list[Money]:
        """Split over weights so that the parts sum exactly to self (largest remainder)."""
        return [Money(part, self.currency) for part in allocate_minor(self.minor, weights)]


def _refuse_float(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"money arithmetic takes Decimal or int, not {type(value).__name__}")


def allocate_minor(total: int, weights: Sequence[int]) -> list[int]:
    """Split an integer over non-negative weights; the parts sum exactly to total.

    Each part is the floor of its exact share; the units left over go one each to the parts with
    the largest remainders (earliest first on ties), so the split is deterministic and fair.
    """
    if not weights:
        raise ValueError("allocate needs at least one weight")
    if any(w < 0 for w in weights):
        raise ValueError("weights must not be negative")
    weight_sum = sum(weights)
    if weight_sum == 0:
        raise ValueError("weights must not all be zero")
    sign = -1 if total < 0 else 1
    magnitude = abs(total)
    parts = [magnitude * w // weight_sum for w in weights]
    remainders = [magnitude * w % weight_sum for w in weights]
    leftover = magnitude - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[:leftover]:
        parts[i] += 1
    return [sign * p for p in parts]
