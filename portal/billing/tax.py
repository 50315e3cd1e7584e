"""Tax: the one place that splits a line into its net amount and its tax.

Exclusive rates add tax on top of the line's amount; inclusive rates take the tax out of an
amount that already contains it. Either way the tax is rounded once per line (half up, through
the money module), and the stored line keeps net amount + tax, so the lines of an invoice always
sum exactly to its total (portal.billing.services._recompute_totals).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from portal.billing.money import exponent, round_minor
from portal.subscriptions.models import Price, TaxRate


@dataclass(frozen=True)
class TaxSplit:
    net_minor: int
    tax_minor: int

    @property
    def gross_minor(self) -> int:
        return self.net_minor + self.tax_minor


def split(amount_minor: int, currency: str, rate_bp: int, *, inclusive: bool) -> TaxSplit:
    """Net and tax of a line amount in minor units. `inclusive`: the amount contains the tax."""
    exponent(currency)  # refuses a currency that is not one
    if not 0 <= rate_bp <= 10_000:
        raise ValueError("a tax rate is between 0 and 10000 basis points")
    if rate_bp == 0:
        return TaxSplit(amount_minor, 0)
    if inclusive:
        tax = round_minor(Decimal(amount_minor) * rate_bp / Decimal(10_000 + rate_bp))
        return TaxSplit(amount_minor - tax, tax)
    return TaxSplit(amount_minor, round_minor(Decimal(amount_minor) * rate_bp / Decimal(10_000)))


def rate_for(price: Price, country: str | None = None) -> TaxRate | None:
    """The tax rate a price is billed with: its own, else its plan's; None when the rate is for
    another country than the customer's (`country` None: the customer's country is not known,
    as in an estimate, and the rate is taken as it is)."""
    rate = price.tax_rate
    if rate is None and price.plan is not None:
        rate = price.plan.tax_rate
    if rate is None:
        return None
    if country is not None and not rate.applies_to(country):
        return None
    return rate
