"""Tax, computed once per line in portal.billing.tax, frozen onto the lines at finalization."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from portal.billing import services, tax
from portal.billing.models import LineKind
from portal.subscriptions.models import TaxRate
from tests.factories import SELLER, make_account


@pytest.mark.parametrize(
    ("amount", "currency", "bp", "inclusive", "net", "tax_minor"),
    [
        (10000, "USD", 1900, False, 10000, 1900),
        (11900, "EUR", 1900, True, 10000, 1900),
        (333, "USD", 1900, False, 333, 63),  # 63.27
        (333, "USD", 1900, True, 280, 53),  # 333 x 19/119 = 53.17
        (105, "JPY", 1000, False, 105, 11),  # 10.5 rounds up
        (1100, "JPY", 1000, True, 1000, 100),
        (12345, "KWD", 500, False, 12345, 617),  # 617.25
        (10000, "USD", 0, True, 10000, 0),
        (-500, "USD", 2000, False, -500, -100),  # a credit line takes its tax back
    ],
)
def test_split(amount, currency, bp, inclusive, net, tax_minor) -> None:
    split = tax.split(amount, currency, bp, inclusive=inclusive)
    assert (split.net_minor, split.tax_minor) == (net, tax_minor)
    if inclusive:
        assert split.gross_minor == amount


@settings(max_examples=200)
@given(amount=st.integers(-(10**9), 10**9), bp=st.integers(0, 10000))
def test_inclusive_tax_never_loses_a_minor_unit(amount: int, bp: int) -> None:
    split = tax.split(amount, "USD", bp, inclusive=True)
    assert split.net_minor + split.tax_minor == amount


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ValueError):
        tax.split(100, "USD", 10001, inclusive=False)
    with pytest.raises(ValueError):
        tax.split(100, "usd", 100, inclusive=False)


def test_finalize_freezes_the_rate_and_lines_sum_to_the_total(session: Session) -> None:
    account = make_account(session, "EUR")
    vat = TaxRate(name="VAT 19%", rate_bp=1900, country="ALL", inclusive=False)
    incl = TaxRate(name="MwSt. 7% incl.", rate_bp=700, country="DE", inclusive=True)
    session.add_all([vat, incl])
    session.flush()
    invoice = services.create_draft_invoice(
        session,
        account,
        [
            services.LineInput("Seats", 1500, quantity=3, tax_rate=vat),
            services.LineInput("Books", 1070, tax_rate=incl),
            services.LineInput("Loyalty", 500, kind=LineKind.DISCOUNT, tax_rate=vat),
        ],
    )
    # The rate is edited while the invoice is a draft: the invoice is issued at the new rate.
    vat.rate_bp = 2000
    vat.name = "VAT 20%"
    session.flush()
    services.finalize_invoice(session, invoice, seller=SELLER)
    seats, books, loyalty = invoice.lines
    assert (seats.tax_rate_bp, seats.tax_name, seats.amount_minor, seats.tax_minor) == (
        2000,
        "VAT 20%",
        4500,
        900,
    )
    assert (books.tax_inclusive, books.amount_minor, books.tax_minor) == (True, 1000, 70)
    assert (loyalty.amount_minor, loyalty.tax_minor) == (-500, -100)
    assert invoice.subtotal_minor == 5500 and invoice.discount_minor == 500
    assert invoice.tax_minor == 870
    assert invoice.total_minor == sum(line.amount_minor + line.tax_minor for line in invoice.lines)
    assert invoice.total_minor == 5870
    # After finalization the rate can change: the issued invoice does not.
    vat.rate_bp = 2500
    session.flush()
    session.refresh(seats)
    assert (seats.tax_rate_bp, seats.tax_minor) == (2000, 900)
    assert seats.tax_rate_id == vat.id


def test_a_rate_for_another_country_does_not_apply() -> None:
    de = TaxRate(name="USt", rate_bp=1900, country="DE", inclusive=False)
    assert de.applies_to("DE") and not de.applies_to("FR")
    assert TaxRate(name="All", rate_bp=1, country="ALL").applies_to("JP")
