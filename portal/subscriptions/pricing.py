"""What a price charges for a quantity: flat, per unit, tiered (graduated or volume), metered."""

from __future__ import annotations

from portal.billing import tax
from portal.billing.money import Money
from portal.subscriptions.models import Price, PriceTier, PricingModel, TierMode


def charge_for(price: Price, quantity: int) -> Money:
    """The amount (before tax) that `quantity` units cost for one period of this price."""
    if quantity < 0:
        raise ValueError("quantity cannot be negative")
    model = PricingModel(price.pricing_model)
    if model == PricingModel.FLAT:
        minor = price.flat_amount_minor
    elif model in (PricingModel.PER_UNIT, PricingModel.METERED):
        minor = price.flat_amount_minor + price.unit_amount_minor * quantity
    else:
        minor = _tiered(price.tiers, TierMode(price.tier_mode), quantity)
    return Money(minor, price.currency)


def _tiered(tiers: list[PriceTier], mode: TierMode, quantity: int) -> int:
    ordered = sorted(tiers, key=lambda t: t.position)
    if mode == TierMode.VOLUME:
        # NOTE: volume pricing charges every unit at the rate of the tier the total falls in.
        for tier in ordered:
            if tier.up_to is None or quantity <= tier.up_to:
                return tier.flat_amount_minor + tier.unit_amount_minor * quantity
        raise ValueError("the last tier of a price must be unbounded")
    total, lower = 0, 0
    for tier in ordered:
        if quantity <= lower:
            break
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        total += tier.flat_amount_minor + tier.unit_amount_minor * (upper - lower)
        lower = upper if tier.up_to is None else tier.up_to
    if ordered and ordered[-1].up_to is not None and quantity > ordered[-1].up_to:
        # NOTE: a bounded last tier would bill the units above it at nothing (catalog.create_price
        # refuses such a price; this refuses one that got in another way).
        raise ValueError("the last tier of a price must be unbounded")
    return total


def estimate_period_amount(price: Price, quantity: int, country: str | None = None) -> Money:
    """The next period's charge including tax; metered prices show their fixed part only."""
    units = 0 if price.pricing_model == PricingModel.METERED else quantity
    net = charge_for(price, units)
    rate = tax.rate_for(price, country)
    if rate is None:
        return net
    split = tax.split(net.minor, net.currency, rate.rate_bp, inclusive=rate.inclusive)
    return Money(split.gross_minor, net.currency)
