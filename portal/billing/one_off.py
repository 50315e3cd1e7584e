"""One-off and milestone invoices: a line billed to an account through the normal finalization
(number, tax frozen, ledger, "invoice issued" email). Flushes, never commits."""

from __future__ import annotations

import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from portal.accounts.models import Account
from portal.audit.services import SYSTEM, Actor
from portal.billing import services as billing
from portal.billing.issuing import issue_invoice
from portal.billing.models import Invoice, LineKind
from portal.billing.money import Money, exponent
from portal.errors import N_, NotFound, ValidationFailed
from portal.subscriptions.models import TaxRate

MAX_ONE_OFF_MINOR = 10**11
MAX_QUANTITY = 10_000
MAX_DESCRIPTION = 500


def find_account(session: Session, ref: str) -> Account:
    """An account by its public id, its invoice prefix or its billing email."""
    ref = (ref or "").strip()
    account = session.scalar(
        select(Account).where(
            or_(
                Account.public_id == ref,
                Account.invoice_prefix == ref.upper(),
                func.lower(Account.billing_email) == ref.lower(),
            )
        )
    )
    if account is None:
        raise NotFound(N_("No account matches %(ref)s."), params={"ref": ref[:80]})
    return account


def parse_amount(text: str, currency: str) -> Money:
    """An amount typed in major units ("1250.00"), refused if it is not a positive number with at
    most the currency's decimals (never rounded silently)."""
    raw = (text or "").strip().replace("_", "")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValidationFailed(N_("The amount must be a number, like 1250.00.")) from None
    if not value.is_finite():
        raise ValidationFailed(N_("The amount must be a number, like 1250.00."))
    if value <= 0:
        raise ValidationFailed(N_("The amount must be more than zero."))
    if value > Decimal(MAX_ONE_OFF_MINOR):
        raise ValidationFailed(N_("That amount is too large for one invoice."))
    digits = exponent(currency)
    if value != value.quantize(Decimal(1).scaleb(-digits)):
        raise ValidationFailed(
            N_("%(currency)s amounts have at most %(digits)s decimals."),
            params={"currency": currency, "digits": digits},
        )
    money = Money.from_decimal(value, currency)
    if money.minor <= 0:
        raise ValidationFailed(N_("The amount must be more than zero."))
    if money.minor > MAX_ONE_OFF_MINOR:
        raise ValidationFailed(N_("That amount is too large for one invoice."))
    return money


def find_tax_rate(session: Session, ref: str, account: Account) -> TaxRate:
    """An active tax rate by id or exact name that applies to the account's country."""
    ref = (ref or "").strip()
    query = select(TaxRate).where(TaxRate.is_active.is_(True))
    if ref.isdigit() and len(ref) < 19:
        query = query.where(or_(TaxRate.id == int(ref), TaxRate.name == ref))
    else:
        query = query.where(TaxRate.name == ref)
    rates = session.scalars(query.order_by(TaxRate.id)).all()
    rates = [rate for rate in rates if rate.applies_to(account.country)]
    if not rates:
        raise ValidationFailed(
            N_("No active tax rate %(ref)s applies to this account's country."),
            params={"ref": ref[:64]},
        )
    if len(rates) > 1:
        raise ValidationFailed(
            N_("Several tax rates are named %(ref)s; give the rate's id."), params={"ref": ref[:64]}
        )
    return rates[0]


def _description(text: str) -> str:
    cleaned = " ".join((text or "").split())
    if not cleaned:
        raise ValidationFailed(N_("A one-off invoice needs a description."))
    if len(cleaned) > MAX_DESCRIPTION:
        raise ValidationFailed(
            N_("The description can be at most %(max)s characters."),
            params={"max": MAX_DESCRIPTION},
        )
    if any(unicodedata.category(ch).startswith("C") for ch in cleaned):
        raise ValidationFailed(N_("The description contains characters that cannot be printed."))
    return cleaned


def invoice_once(
    session: Session,
    account: Account,
    *,
    description: str,
    amount: Money,
    seller: dict[str, Any],
    quantity: int = 1,
    tax_rate: TaxRate | None = None,
    memo: str = "",
    actor: Actor = SYSTEM,
) -> Invoice:
    """Bill `quantity` x `amount` (before tax) as one line, issued now."""
    text = _description(description)
    if amount.currency != account.currency:
        raise ValidationFailed(
            N_("This account is billed in %(currency)s."), params={"currency": account.currency}
        )
    if amount.minor <= 0 or amount.minor > MAX_ONE_OFF_MINOR:
        raise ValidationFailed(N_("The amount must be more than zero and not absurdly large."))
    if (
        isinstance(quantity, bool)
        or not isinstance(quantity, int)
        or not 1 <= quantity <= MAX_QUANTITY
    ):
        raise ValidationFailed(
            N_("The quantity must be a whole number from 1 to %(max)s."),
            params={"max": MAX_QUANTITY},
        )
    if amount.minor * quantity > MAX_ONE_OFF_MINOR:
        raise ValidationFailed(N_("That amount is too large for one invoice."))
    if tax_rate is not None and (
        not tax_rate.is_active or not tax_rate.applies_to(account.country)
    ):
        raise ValidationFailed(N_("That tax rate does not apply to this account."))
    draft = billing.create_draft_invoice(
        session,
        account,
        [
            billing.LineInput(
                description=text,
                kind=LineKind.ONE_OFF,
                quantity=quantity,
                unit_amount_minor=amount.minor,
                tax_rate=tax_rate,
            )
        ],
        memo=" ".join(memo.split())[:1000],
    )
    invoice = issue_invoice(session, draft, seller=seller, actor=actor)
    actor.record(
        session,
        "invoice.one_off",
        account_id=account.id,
        target_type="invoice",
        target_id=invoice.number or invoice.public_id,
        before=None,
        after={
            "description": text,
            "quantity": quantity,
            "unit_amount_minor": amount.minor,
            "currency": amount.currency,
            "tax_rate": tax_rate.name if tax_rate else None,
            "total_minor": invoice.total_minor,
        },
    )
    session.flush()
    return invoice
