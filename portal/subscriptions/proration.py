"""Proration: what a change in the middle of a period credits and charges (pure: no Flask).

The unused time of the old price is credited and the rest of the period on the new price is
charged, both to the second: amount = full-period charge x remaining seconds / period seconds,
rounded once per line (half up, half away from zero, through the money module) in minor units of
the price's currency. Periods are UTC instants anchored in the account's time zone
(portal.subscriptions.periods), so a period with a daylight-saving change has its real length.
A metered price prorates its fixed part only (usage is billed in arrears, as used).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from portal.billing.money import Money, round_minor
from portal.subscriptions.models import Price, PricingModel
from portal.subscriptions.periods import seconds_between
from portal.subscriptions.pricing import charge_for


class ProrationKind(StrEnum):
    CREDIT = "credit"
    CHARGE = "charge"


@dataclass(frozen=True)
class ProrationLine:
    """One line of a proration: a credit (negative amount) or a charge (positive)."""

    kind: ProrationKind
    price: Price
    quantity: int
    start: datetime  # the part of the period this line covers: [start, end)
    end: datetime
    seconds: int
    period_seconds: int
    full_period: Money  # what the price charges for a whole period at this quantity
    amount: Money

    @property
    def is_credit(self) -> bool:
        return self.kind == ProrationKind.CREDIT


def fixed_charge(price: Price, quantity: int) -> Money:
    """What a whole period of this price costs at this quantity, before tax (metered: the
    fixed part)."""
    units = 0 if price.pricing_model == PricingModel.METERED else quantity
    return charge_for(price, units)


def share(full: Money, seconds: int, period_seconds: int) -> Money:
    """`seconds` of a `period_seconds` period of `full`, rounded once."""
    if period_seconds <= 0 or not 0 <= seconds <= period_seconds:
        raise ValueError("a share is part of a period")
    return Money(
        round_minor(Decimal(full.minor * seconds) / Decimal(period_seconds)), full.currency
    )


def prorate(
    *,
    old_price: Price,
    old_quantity: int,
    new_price: Price,
    new_quantity: int,
    period_start: datetime,
    period_end: datetime,
    at: datetime,
) -> list[ProrationLine]:
    """The credit for the old price's unused time and the charge for the new price's, from `at`
    to the period's end. Lines of zero are left out (a change at the period's end prorates
    nothing)."""
    for moment in (period_start, period_end, at):
        if moment.tzinfo is None:
            raise ValueError("proration needs aware datetimes")
    if period_end <= period_start:
        raise ValueError("a period must end after it starts")
    if not period_start <= at <= period_end:
        raise ValueError("a change is prorated within its period")
    if old_price.currency != new_price.currency:
        raise ValueError("a change cannot prorate across currencies")
    total = seconds_between(period_start, period_end)
    remaining = seconds_between(at, period_end)
    lines = []
    old_full = fixed_charge(old_price, old_quantity)
    credit = -share(old_full, remaining, total)
    if credit:
        lines.append(
            ProrationLine(
                ProrationKind.CREDIT,
                old_price,
                old_quantity,
                at,
                period_end,
                remaining,
                total,
                old_full,
                credit,
            )
        )
    new_full = fixed_charge(new_price, new_quantity)
    charge = share(new_full, remaining, total)
    if charge:
        lines.append(
            ProrationLine(
                ProrationKind.CHARGE,
                new_price,
                new_quantity,
                at,
                period_end,
                remaining,
                total,
                new_full,
                charge,
            )
        )
    return lines


def net(lines: list[ProrationLine], currency: str) -> Money:
    """What the lines come to together (positive: the customer owes more)."""
    total = Money.zero(currency)
    for line in lines:
        total = total + line.amount
    return total
