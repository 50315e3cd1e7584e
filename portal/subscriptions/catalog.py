"""The price catalog: creating prices (validated, versioned) and finding the active one.

A price customers are on never changes. A new amount for a plan, currency and interval is a new
price row, the next version; the previous one is retired (no longer offered) and stays for the
subscriptions on it. Flushes, never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.audit.services import SYSTEM, Actor
from portal.billing.money import SUPPORTED_CURRENCIES
from portal.errors import N_, ValidationFailed
from portal.subscriptions.models import Plan, Price, PriceTier, PricingModel, TaxRate, TierMode

# NOTE: bounds that keep every amount far inside BIGINT even multiplied by a quantity and by
# seconds (proration), and refuse absurd input with words instead of an overflow.
MAX_AMOUNT_MINOR = 10**11
MAX_QUANTITY = 1_000_000
MAX_TIERS = 20
INTERVALS = ("month", "year")
MAX_INTERVAL_COUNT = {"month": 36, "year": 5}


@dataclass(frozen=True)
class TierInput:
    """One tier: units up to `up_to` (None: no upper bound, the last tier)."""

    up_to: int | None
    unit_amount_minor: int = 0
    flat_amount_minor: int = 0


def _amount(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_AMOUNT_MINOR:
        raise ValidationFailed(
            N_("Amounts must be whole numbers of minor units from 0 to %(max)s."),
            params={"max": MAX_AMOUNT_MINOR},
        )
    return value


def validate_tiers(tiers: Sequence[TierInput]) -> None:
    """A tiered price's tiers: at least one, at most MAX_TIERS, `up_to` strictly increasing and
    positive, and the last one (only the last one) unbounded, so every quantity has a tier."""
    if not tiers:
        raise ValidationFailed(N_("A tiered price needs at least one tier."))
    if len(tiers) > MAX_TIERS:
        raise ValidationFailed(
            N_("A price can have at most %(max)s tiers."), params={"max": MAX_TIERS}
        )
    previous = 0
    for index, tier in enumerate(tiers):
        last = index == len(tiers) - 1
        _amount(tier.unit_amount_minor)
        _amount(tier.flat_amount_minor)
        if tier.up_to is None:
            if not last:
                raise ValidationFailed(N_("Only the last tier can be unbounded."))
            continue
        if last:
            raise ValidationFailed(
                N_("The last tier must be unbounded, so that every quantity has a price.")
            )
        if isinstance(tier.up_to, bool) or not isinstance(tier.up_to, int) or tier.up_to <= 0:
            raise ValidationFailed(N_("A tier's upper bound must be a positive whole number."))
        if tier.up_to <= previous:
            raise ValidationFailed(N_("Tier upper bounds must increase from one tier to the next."))
        if tier.up_to > MAX_QUANTITY:
            raise ValidationFailed(
                N_("A tier's upper bound can be at most %(max)s."), params={"max": MAX_QUANTITY}
            )
        previous = tier.up_to


def create_price(
    session: Session,
    *,
    plan: Plan,
    currency: str,
    pricing_model: str,
    billing_interval: str = "month",
    interval_count: int = 1,
    unit_amount_minor: int = 0,
    flat_amount_minor: int = 0,
    tier_mode: str | None = None,
    tiers: Sequence[TierInput] = (),
    unit_label: str = "",
    min_quantity: int | None = None,
    max_quantity: int | None = None,
    tax_rate: TaxRate | None = None,
    actor: Actor = SYSTEM,
) -> Price:
    """A validated price, the next version of the plan's price for this currency and interval.

    The same amounts as the active version change nothing and return it; different ones retire
    it (its subscribers stay on it) and make the new one the active version.
    """
    try:
        model = PricingModel(pricing_model)
    except ValueError:
        raise ValidationFailed(N_("Unknown pricing model.")) from None
    if currency not in SUPPORTED_CURRENCIES:
        raise ValidationFailed(N_("That currency is not supported."))
    if billing_interval not in INTERVALS:
        raise ValidationFailed(N_("A price is billed monthly or yearly."))
    if (
        isinstance(interval_count, bool)
        or not isinstance(interval_count, int)
        or not 1 <= interval_count <= MAX_INTERVAL_COUNT[billing_interval]
    ):
        raise ValidationFailed(N_("That billing interval is out of range."))
    unit = _amount(unit_amount_minor)
    flat = _amount(flat_amount_minor)
    if min_quantity is None:
        min_quantity = 1 if model == PricingModel.PER_UNIT else 0
    for value in (min_quantity, max_quantity):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUANTITY
        ):
            raise ValidationFailed(
                N_("Quantities must be whole numbers from 0 to %(max)s."),
                params={"max": MAX_QUANTITY},
            )
    if max_quantity is not None and max_quantity < min_quantity:
        raise ValidationFailed(N_("The maximum quantity cannot be below the minimum."))
    if model == PricingModel.PER_UNIT and unit == 0 and flat == 0:
        raise ValidationFailed(N_("A per-unit price needs a unit amount."))
    if model == PricingModel.TIERED:
        try:
            mode = TierMode(tier_mode or "")
        except ValueError:
            raise ValidationFailed(N_("A tiered price is graduated or volume.")) from None
        validate_tiers(tiers)
        if unit or flat:
            raise ValidationFailed(N_("A tiered price takes its amounts from its tiers."))
    else:
        mode = None
        if tier_mode is not None or tiers:
            raise ValidationFailed(N_("Only a tiered price has tiers."))
    if model == PricingModel.FLAT and unit:
        raise ValidationFailed(N_("A flat price has no unit amount."))
    if tax_rate is not None and not tax_rate.is_active:
        raise ValidationFailed(N_("That tax rate is no longer in use."))

    current = active_price(session, plan, currency, billing_interval, interval_count)
    wanted = {
        "pricing_model": model.value,
        "tier_mode": mode.value if mode else None,
        "unit_amount_minor": unit,
        "flat_amount_minor": flat,
        "unit_label": unit_label[:32],
        "min_quantity": min_quantity,
        "max_quantity": max_quantity,
        "tax_rate_id": tax_rate.id if tax_rate is not None else None,
        "tiers": [(t.up_to, t.unit_amount_minor, t.flat_amount_minor) for t in tiers],
    }
    if current is not None and _terms(current) == wanted:
        return current
    latest = session.scalar(
        select(func.max(Price.version)).where(
            Price.plan_id == plan.id,
            Price.currency == currency,
            Price.billing_interval == billing_interval,
            Price.interval_count == interval_count,
        )
    )
    before = None
    if current is not None:
        before = {"price": current.public_id, "version": current.version, **_audit_terms(current)}
        current.is_active = False
        # NOTE: retired before the new version is inserted: the partial unique index allows
        # one active price per plan, currency and interval at any moment.
        session.flush()
    price = Price(
        plan_id=plan.id,
        currency=currency,
        billing_interval=billing_interval,
        interval_count=interval_count,
        version=(latest or 0) + 1,
        pricing_model=model.value,
        tier_mode=mode.value if mode else None,
        unit_amount_minor=unit,
        flat_amount_minor=flat,
        unit_label=unit_label[:32],
        min_quantity=min_quantity,
        max_quantity=max_quantity,
        tax_rate_id=tax_rate.id if tax_rate is not None else None,
        is_active=True,
        tiers=[
            PriceTier(
                position=position,
                up_to=t.up_to,
                unit_amount_minor=t.unit_amount_minor,
                flat_amount_minor=t.flat_amount_minor,
            )
            for position, t in enumerate(tiers, start=1)
        ],
    )
    session.add(price)
    session.flush()
    actor.record(
        session,
        "price.created",
        account_id=None,
        target_type="price",
        target_id=price.public_id,
        before=before,
        after={"plan": plan.code, "version": price.version, **_audit_terms(price)},
    )
    return price


def _terms(price: Price) -> dict[str, object]:
    return {
        "pricing_model": price.pricing_model,
        "tier_mode": price.tier_mode,
        "unit_amount_minor": price.unit_amount_minor,
        "flat_amount_minor": price.flat_amount_minor,
        "unit_label": price.unit_label,
        "min_quantity": price.min_quantity,
        "max_quantity": price.max_quantity,
        "tax_rate_id": price.tax_rate_id,
        "tiers": [(t.up_to, t.unit_amount_minor, t.flat_amount_minor) for t in price.tiers],
    }


def _audit_terms(price: Price) -> dict[str, object]:
    terms = _terms(price)
    terms["tiers"] = [list(t) for t in terms["tiers"]]  # type: ignore[union-attr]
    terms["currency"] = price.currency
    terms["interval"] = f"{price.interval_count} {price.billing_interval}"
    return terms


def active_price(
    session: Session,
    plan: Plan,
    currency: str,
    billing_interval: str = "month",
    interval_count: int = 1,
) -> Price | None:
    """The version of the plan's price offered now in this currency and interval."""
    return session.scalar(
        select(Price).where(
            Price.plan_id == plan.id,
            Price.currency == currency,
            Price.billing_interval == billing_interval,
            Price.interval_count == interval_count,
            Price.is_active.is_(True),
        )
    )
