"""Billing rules: build, finalize, pay, credit and void invoices. Flushes, never commits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import clock
from portal.accounts.models import Account
from portal.audit.services import SYSTEM, Actor
from portal.billing import ledger, tax
from portal.billing.models import (
    OPEN_STATUSES,
    CreditNote,
    CreditNoteLine,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LedgerKind,
    LineKind,
)
from portal.billing.money import Money
from portal.billing.numbering import next_in_series
from portal.errors import N_, Conflict, ValidationFailed
from portal.payments.models import Payment, PaymentAllocation
from portal.payments.receipts import assign_receipt_number
from portal.subscriptions.models import TaxRate

# NOTE: the written-down state machine of an invoice. A finalized invoice never goes back to
# draft; corrections are credit notes or a void.
INVOICE_TRANSITIONS: dict[InvoiceStatus, frozenset[InvoiceStatus]] = {
    InvoiceStatus.DRAFT: frozenset({InvoiceStatus.OPEN}),
    InvoiceStatus.OPEN: frozenset(
        {InvoiceStatus.PAID, InvoiceStatus.VOID, InvoiceStatus.UNCOLLECTIBLE}
    ),
    InvoiceStatus.UNCOLLECTIBLE: frozenset({InvoiceStatus.PAID, InvoiceStatus.VOID}),
    InvoiceStatus.PAID: frozenset(),
    InvoiceStatus.VOID: frozenset(),
}

# NOTE: what can be credited: any issued invoice that is not void, paid ones included (issue
# 11: the credit on a paid invoice becomes credit on the balance, or a refund).
CREDITABLE_STATUSES = (*OPEN_STATUSES, InvoiceStatus.PAID.value)


class InvoiceImmutable(Conflict):
    title = N_("This invoice is final and cannot be changed")


@dataclass(frozen=True)
class LineInput:
    """A line to put on a draft invoice. `amount_minor` defaults to quantity times unit amount."""

    description: str
    unit_amount_minor: int
    quantity: int = 1
    kind: LineKind = LineKind.SUBSCRIPTION
    period_start: date | None = None
    period_end: date | None = None
    tax_rate_bp: int = 0
    tax_name: str = ""
    price_id: int | None = None
    amount_minor: int | None = None
    # NOTE: with a tax rate row, its rate, name and inclusiveness replace the three plain
    # fields (and are frozen again from the row at finalization).
    tax_rate: TaxRate | None = None
    tax_inclusive: bool = False
    subscription_change_id: int | None = None


def transition(
    session: Session, invoice: Invoice, to: InvoiceStatus, actor: Actor = SYSTEM
) -> None:
    """Move an invoice along its state machine and audit the move."""
    current = InvoiceStatus(invoice.status)
    record_transition(
        session,
        actor,
        current,
        to,
        account_id=invoice.account_id,
        target_id=invoice.number or invoice.public_id,
    )
    invoice.status = to.value


def record_transition(
    session: Session,
    actor: Actor,
    current: InvoiceStatus,
    to: InvoiceStatus,
    *,
    account_id: int,
    target_id: str,
) -> None:
    """Check a move along the invoice state machine and audit it (the status itself is set by
    the caller: on the object, or in the row the billing run inserts)."""
    if to not in INVOICE_TRANSITIONS[current]:
        raise Conflict(
            N_("An invoice that is %(current)s cannot become %(new)s."),
            params={"current": current.value, "new": to.value},
        )
    actor.record(
        session,
        f"invoice.{to.value}",
        account_id=account_id,
        target_type="invoice",
        target_id=target_id,
        before={"status": current.value},
        after={"status": to.value},
    )


def create_draft_invoice(
    session: Session,
    account: Account,
    lines: Sequence[LineInput],
    *,
    issue_date: date | None = None,
    subscription_id: int | None = None,
    billing_key: str | None = None,
    period: tuple[date, date] | None = None,
    memo: str = "",
    billing_period_start: datetime | None = None,
    flush: bool = True,
) -> Invoice:
    """A draft invoice with its lines and totals; nothing is owed until it is finalized.

    `flush=False` leaves it pending in the session (the billing run inserts a batch of invoices
    in one flush)."""
    invoice = Invoice(
        account=account,
        account_id=account.id,
        subscription_id=subscription_id,
        billing_key=billing_key,
        billing_period_start=billing_period_start,
        currency=account.currency,
        issue_date=issue_date or clock.today(account.timezone),
        period_start=period[0] if period else None,
        period_end=period[1] if period else None,
        memo=memo,
        status=InvoiceStatus.DRAFT.value,
    )
    session.add(invoice)
    for line in lines:
        _append_line(invoice, line)
    _recompute_totals(invoice)
    if flush:
        session.flush()
    return invoice


def add_line(session: Session, invoice: Invoice, line: LineInput) -> InvoiceLine:
    """Add a line to a draft; a finalized invoice refuses."""
    _require_draft(invoice)
    added = _append_line(invoice, line)
    _recompute_totals(invoice)
    session.flush()
    return added


def _require_draft(invoice: Invoice) -> None:
    if invoice.status != InvoiceStatus.DRAFT:
        raise InvoiceImmutable()


def _append_line(invoice: Invoice, line: LineInput) -> InvoiceLine:
    added = InvoiceLine(**line_fields(line, invoice.currency, len(invoice.lines) + 1))
    invoice.lines.append(added)
    return added


def line_fields(line: LineInput, currency: str, position: int) -> dict[str, Any]:
    """The stored fields of an invoice line (its tax split once, here), for the line object of
    a draft or for the row the billing run inserts; refuses a line that cannot be billed."""
    if not line.description.strip():
        raise ValidationFailed(N_("Every invoice line needs a description."))
    if line.quantity < 0:
        raise ValidationFailed(N_("A quantity cannot be negative."))
    amount = (
        line.quantity * line.unit_amount_minor if line.amount_minor is None else line.amount_minor
    )
    if line.kind == LineKind.DISCOUNT and amount > 0:
        amount = -amount
    if line.tax_rate is not None:
        rate_bp, name, inclusive = (
            line.tax_rate.rate_bp,
            line.tax_rate.name,
            line.tax_rate.inclusive,
        )
    else:
        rate_bp, name, inclusive = line.tax_rate_bp, line.tax_name, line.tax_inclusive
    # NOTE: tax is computed (and rounded) once per line, in portal.billing.tax; the line keeps
    # its net amount and its tax, so the lines always sum to the total.
    split = tax.split(amount, currency, rate_bp, inclusive=inclusive)
    return {
        "position": position,
        "kind": line.kind.value,
        "description": line.description.strip()[:500],
        "period_start": line.period_start,
        "period_end": line.period_end,
        "quantity": line.quantity,
        "unit_amount_minor": line.unit_amount_minor,
        "amount_minor": split.net_minor,
        "tax_rate_bp": rate_bp,
        "tax_name": name[:32],
        "tax_minor": split.tax_minor,
        "tax_inclusive": inclusive,
        "tax_rate_id": line.tax_rate.id if line.tax_rate is not None else None,
        "price_id": line.price_id,
        "subscription_change_id": line.subscription_change_id,
    }


def _freeze_tax(session: Session, invoice: Invoice) -> None:
    """At finalization, each line's tax rate is frozen from its row as it is now (a rate
    edited while the invoice was a draft is billed as edited; after this, never again)."""
    for line in invoice.lines:
        if line.tax_rate_id is None:
            continue
        rate = session.get(TaxRate, line.tax_rate_id)
        if rate is None:
            continue
        if (line.tax_rate_bp, line.tax_name, line.tax_inclusive) == (
            rate.rate_bp,
            rate.name[:32],
            rate.inclusive,
        ):
            continue
        gross_or_net = line.amount_minor + (line.tax_minor if line.tax_inclusive else 0)
        split = tax.split(gross_or_net, invoice.currency, rate.rate_bp, inclusive=rate.inclusive)
        line.tax_rate_bp, line.tax_name, line.tax_inclusive = (
            rate.rate_bp,
            rate.name[:32],
            rate.inclusive,
        )
        line.amount_minor, line.tax_minor = split.net_minor, split.tax_minor
    _recompute_totals(invoice)


def _recompute_totals(invoice: Invoice) -> None:
    for name, value in invoice_totals(
        [(line.kind, line.amount_minor, line.tax_minor) for line in invoice.lines]
    ).items():
        setattr(invoice, name, value)


def invoice_totals(lines: Sequence[tuple[str, int, int]]) -> dict[str, int]:
    """Subtotal, discount, tax and total of lines given as (kind, amount, tax); refuses a total
    below zero."""
    charges = sum(amount for kind, amount, _ in lines if kind != LineKind.DISCOUNT)
    discounts = -sum(amount for kind, amount, _ in lines if kind == LineKind.DISCOUNT)
    tax = sum(line_tax for _, _, line_tax in lines)
    if charges < 0 or charges - discounts < 0 or tax < 0:
        raise ValidationFailed(N_("An invoice cannot total less than zero."))
    return {
        "subtotal_minor": charges,
        "discount_minor": discounts,
        "tax_minor": tax,
        "total_minor": charges - discounts + tax,
    }


def invoice_series_key(account: Account) -> str:
    return f"invoice:{account.invoice_prefix}"


def finalize_invoice(
    session: Session,
    invoice: Invoice,
    *,
    seller: dict[str, Any],
    actor: Actor = SYSTEM,
    finalized_at: datetime | None = None,
) -> Invoice:
    """Give a draft its gapless number, freeze seller and buyer, and post it to the ledger."""
    check_finalizable(invoice)
    when = finalized_at or clock.now()
    sequence = next_in_series(session, invoice_series_key(invoice.account))
    stamp_finalized(session, invoice, sequence, seller=seller, actor=actor, finalized_at=when)
    if invoice.total_minor > 0:
        ledger.post(session, **ledger_posting(invoice))
    session.flush()
    return invoice


def check_finalizable(invoice: Invoice) -> None:
    """A draft with at least one line; anything else refuses to be finalized."""
    _require_draft(invoice)
    if not invoice.lines:
        raise ValidationFailed(N_("An invoice needs at least one line before it can be issued."))


def stamp_finalized(
    session: Session,
    invoice: Invoice,
    sequence: int,
    *,
    seller: dict[str, Any],
    actor: Actor = SYSTEM,
    finalized_at: datetime,
) -> None:
    """Everything finalization does to a draft but the ledger: tax frozen, the number taken from
    its series (`sequence`), seller and buyer frozen, open (or paid at once when it totals
    nothing). Shared by finalize_invoice and the billing run's batch (portal.billing.issuing)."""
    check_finalizable(invoice)
    _freeze_tax(session, invoice)
    account = invoice.account
    for name, value in finalized_fields(
        account,
        sequence,
        issue_date=invoice.issue_date,
        due_date=invoice.due_date,
        seller=seller,
        finalized_at=finalized_at,
    ).items():
        setattr(invoice, name, value)
    transition(session, invoice, InvoiceStatus.OPEN, actor)
    if invoice.total_minor <= 0:
        transition(session, invoice, InvoiceStatus.PAID, actor)
        invoice.paid_at = finalized_at


def finalized_fields(
    account: Account,
    sequence: int,
    *,
    issue_date: date,
    due_date: date | None,
    seller: dict[str, Any],
    finalized_at: datetime,
) -> dict[str, Any]:
    """What finalization freezes on an invoice (its number from `sequence`, due date, seller and
    buyer), for the draft object or the billing run's row; the status moves separately."""
    return {
        "series_key": invoice_series_key(account),
        "sequence": sequence,
        "number": f"{account.invoice_prefix}-{sequence:04d}",
        "due_date": due_date or issue_date + timedelta(days=account.payment_terms_days),
        "finalized_at": finalized_at,
        "seller": dict(seller),
        "buyer": buyer_snapshot(account),
    }


class Finalized(Protocol):
    """What ledger_posting reads: an Invoice, or the billing run's issuing.IssuedInvoice."""

    @property
    def id(self) -> int: ...
    @property
    def account_id(self) -> int: ...
    @property
    def number(self) -> str | None: ...
    @property
    def finalized_at(self) -> datetime | None: ...
    @property
    def total(self) -> Money: ...


def ledger_posting(invoice: Finalized) -> dict[str, Any]:
    """The ledger entry a finalized invoice with something to pay posts (needs its id)."""
    return {
        "account_id": invoice.account_id,
        "kind": LedgerKind.INVOICE,
        "amount": invoice.total,
        "source_ref": f"invoice:{invoice.id}",
        "effective_at": invoice.finalized_at,
        "description": f"Invoice {invoice.number}",
        "invoice_id": invoice.id,
    }


def buyer_snapshot(account: Account) -> dict[str, Any]:
    return {
        "name": account.name,
        "email": account.billing_email,
        "address": [
            part
            for part in (
                account.address_line1,
                account.address_line2,
                " ".join(p for p in (account.postal_code, account.city) if p),
                account.region,
                account.country,
            )
            if part
        ],
        "tax_id": account.tax_id,
        # NOTE: the raw parts too, so pages and PDFs lay the address out as its country writes
        # it (portal.formatting.postal_address); "address" stays for invoices made before.
        "address_line1": account.address_line1,
        "address_line2": account.address_line2,
        "city": account.city,
        "postal_code": account.postal_code,
        "region": account.region,
        "country": account.country,
    }


def record_payment(
    session: Session,
    account: Account,
    amount: Money,
    allocations: Sequence[tuple[Invoice, Money]],
    *,
    received_at: datetime,
    method_description: str = "",
    stripe_payment_intent_id: str | None = None,
    stripe_charge_id: str | None = None,
    attempt_id: int | None = None,
    actor: Actor = SYSTEM,
) -> Payment:
    """Record money received and apply it to invoices; anything unapplied becomes credit."""
    if amount.currency != account.currency or amount.minor <= 0:
        raise ValidationFailed(N_("A payment must be a positive amount in the account's currency."))
    applied = sum((part for _, part in allocations), Money.zero(amount.currency))
    if applied > amount:
        raise ValidationFailed(N_("A payment cannot be applied beyond its amount."))
    payment = Payment(
        account_id=account.id,
        currency=amount.currency,
        amount_minor=amount.minor,
        received_at=received_at,
        method_description=method_description,
        stripe_payment_intent_id=stripe_payment_intent_id,
        stripe_charge_id=stripe_charge_id,
        attempt_id=attempt_id,
    )
    session.add(payment)
    session.flush()
    assign_receipt_number(session, payment)
    for invoice, part in allocations:
        if invoice.account_id != account.id or part.minor <= 0:
            raise ValidationFailed(
                N_("A payment can only be applied to the account's own invoices.")
            )
        if part > invoice.amount_due:
            raise Conflict(
                N_("Invoice %(number)s has less than that left to pay."),
                params={"number": invoice.number},
            )
        payment.allocations.append(
            PaymentAllocation(invoice_id=invoice.id, amount_minor=part.minor)
        )
        invoice.amount_paid_minor += part.minor
        if invoice.amount_due_minor == 0:
            transition(session, invoice, InvoiceStatus.PAID, actor)
            invoice.paid_at = received_at
    ledger.post(
        session,
        account_id=account.id,
        kind=LedgerKind.PAYMENT,
        amount=amount,
        source_ref=f"payment:{payment.id}",
        effective_at=received_at,
        description=f"Payment {method_description}".strip(),
    )
    actor.record(
        session,
        "payment.recorded",
        account_id=account.id,
        target_type="payment",
        target_id=payment.public_id,
        after={"amount_minor": amount.minor, "currency": amount.currency},
    )
    session.flush()
    return payment


def credit_note_series_key(account: Account) -> str:
    return f"credit_note:{account.invoice_prefix}"


def issue_credit_note(
    session: Session,
    invoice: Invoice,
    amount: Money,
    *,
    reason: str,
    memo: str = "",
    lines: Sequence[tuple[InvoiceLine | None, str, Money]] = (),
    issued_by_user_id: int | None = None,
    dispute_id: int | None = None,
    issued_at: datetime | None = None,
    actor: Actor = SYSTEM,
) -> CreditNote:
    """Reduce what an issued invoice asks for; the invoice itself stays as it was issued.

    NOTE: an open invoice's credit first reduces what is left to pay; on a paid (or partly
    paid) invoice what the credit finds nothing left to reduce lowers the account's balance
    below zero: credit the customer keeps for the next invoice, or that support refunds.
    Either way the ledger gets one credit-note entry, so the statement shows it.
    """
    # The cap below reads what is already credited: read it again under the invoice's row lock,
    # so two credits at once (a support credit and a cancel-now credit, say) cannot both pass it.
    session.flush()
    session.refresh(
        invoice, ["status", "amount_credited_minor", "amount_paid_minor"], with_for_update=True
    )
    if invoice.status not in CREDITABLE_STATUSES:
        raise Conflict(N_("Only an issued invoice that is not void can be credited."))
    if amount.currency != invoice.currency or amount.minor <= 0:
        raise ValidationFailed(N_("A credit must be a positive amount in the invoice's currency."))
    if amount.minor > invoice.total_minor - invoice.amount_credited_minor:
        raise ValidationFailed(
            N_("A credit cannot be more than the invoice's total less what is already credited.")
        )
    if lines and sum(part.minor for _, _, part in lines) != amount.minor:
        raise ValidationFailed(N_("The credited lines must add up to the credit."))
    _check_line_credits(session, invoice, lines)
    account = invoice.account
    when = issued_at or clock.now()
    sequence = next_in_series(session, credit_note_series_key(account))
    note = CreditNote(
        number=f"{account.invoice_prefix}-CN-{sequence:04d}",
        series_key=credit_note_series_key(account),
        sequence=sequence,
        account_id=account.id,
        invoice_id=invoice.id,
        dispute_id=dispute_id,
        currency=amount.currency,
        amount_minor=amount.minor,
        reason=reason,
        memo=memo,
        issued_by_user_id=issued_by_user_id,
        issued_at=when,
    )
    for invoice_line, description, part in lines or [(None, memo or "Credit", amount)]:
        note.lines.append(
            CreditNoteLine(
                invoice_line_id=invoice_line.id if invoice_line else None,
                description=description,
                amount_minor=part.minor,
            )
        )
    session.add(note)
    invoice.amount_credited_minor += amount.minor
    session.flush()
    ledger.post(
        session,
        account_id=account.id,
        kind=LedgerKind.CREDIT_NOTE,
        amount=amount,
        source_ref=f"credit_note:{note.id}",
        effective_at=when,
        description=f"Credit note {note.number} for {invoice.number}",
        invoice_id=invoice.id,
    )
    if invoice.status in OPEN_STATUSES and invoice.amount_due_minor == 0:
        transition(session, invoice, InvoiceStatus.PAID, actor)
        invoice.paid_at = when
    actor.record(
        session,
        "credit_note.issued",
        account_id=account.id,
        target_type="credit_note",
        target_id=note.number,
        after={"amount_minor": amount.minor, "invoice": invoice.number, "reason": reason},
    )
    session.flush()
    return note


def line_credited_minor(session: Session, line_ids: Sequence[int]) -> dict[int, int]:
    """What credit notes have already given back on each invoice line (lines without any are
    absent)."""
    if not line_ids:
        return {}
    rows = session.execute(
        select(CreditNoteLine.invoice_line_id, func.sum(CreditNoteLine.amount_minor))
        .where(CreditNoteLine.invoice_line_id.in_(sorted(set(line_ids))))
        .group_by(CreditNoteLine.invoice_line_id)
    )
    return {line_id: int(total) for line_id, total in rows if line_id is not None}


def line_charged_minor(line: InvoiceLine) -> int:
    """What the customer was charged for one line: its amount and its tax."""
    return line.amount_minor + line.tax_minor


def _check_line_credits(
    session: Session, invoice: Invoice, lines: Sequence[tuple[InvoiceLine | None, str, Money]]
) -> None:
    chosen = [(line, part) for line, _, part in lines if line is not None]
    credited = line_credited_minor(session, [line.id for line, _ in chosen])
    for line, part in chosen:
        if line.invoice_id != invoice.id:
            raise ValidationFailed(N_("A credit can only name lines of its own invoice."))
        left = line_charged_minor(line) - credited.get(line.id, 0)
        if part.minor <= 0 or part.minor > left:
            raise ValidationFailed(N_("A line cannot be credited more than was charged for it."))
        credited[line.id] = credited.get(line.id, 0) + part.minor


def void_invoice(
    session: Session, invoice: Invoice, *, actor: Actor = SYSTEM, voided_at: datetime | None = None
) -> Invoice:
    """Cancel an issued invoice that nothing has been paid or credited on."""
    if invoice.amount_paid_minor or invoice.amount_credited_minor:
        raise Conflict(
            N_("An invoice with payments or credits cannot be voided; issue a credit note.")
        )
    when = voided_at or clock.now()
    transition(session, invoice, InvoiceStatus.VOID, actor)
    invoice.voided_at = when
    if invoice.total_minor > 0:
        ledger.post(
            session,
            account_id=invoice.account_id,
            kind=LedgerKind.INVOICE_VOID,
            amount=invoice.total,
            source_ref=f"invoice_void:{invoice.id}",
            effective_at=when,
            description=f"Invoice {invoice.number} voided",
            invoice_id=invoice.id,
        )
    session.flush()
    return invoice


def record_refund_in_ledger(
    session: Session, payment: Payment, amount: Money, *, refund_id: int, refunded_at: datetime
) -> None:
    """Money given back raises the balance again (the payment no longer covers it)."""
    if (
        amount.currency != payment.currency
        or amount.minor <= 0
        or amount.minor > payment.amount_minor - payment.amount_refunded_minor
    ):
        raise ValidationFailed(
            N_(
                "A refund must be positive, in the payment's currency and no more than what is "
                "left."
            )
        )
    payment.amount_refunded_minor += amount.minor
    ledger.post(
        session,
        account_id=payment.account_id,
        kind=LedgerKind.REFUND,
        amount=amount,
        source_ref=f"refund:{refund_id}",
        effective_at=refunded_at,
        description="Refund",
    )
