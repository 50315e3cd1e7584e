"""Resolving a dispute: a credit note, a refund through Stripe, or a reasoned rejection.

Rules every path keeps:
- The dispute row is locked first (FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE) and its
  status read again under the lock, so a double submit or two people at once make exactly one
  credit note or one refund: the second finds the dispute resolved (or a refund under way).
- Support staff have a limit per resolution (STAFF_CREDIT_LIMITS, major units per currency);
  above it the request becomes an ApprovalRequest that only another person, an admin, decides.
- A refund row and its idempotency key are saved and committed before Stripe is called
  (portal.db.commit_before_network_call); a lost answer leaves the refund pending (its outcome
  unknown) for `billing reconcile` or the charge.refunded webhook to settle
  (portal.payments.refunds), never a second refund.
- Each resolution queues the `dispute_resolved` email and writes audit events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from portal import clock
from portal import db as unit_of_work
from portal.accounts.models import Account, User
from portal.audit.services import Actor
from portal.billing import services as billing
from portal.billing.models import CreditNote, CreditNoteReason, Invoice, InvoiceLine
from portal.billing.money import Money, exponent
from portal.db import begin_write, new_public_id
from portal.disputes.models import (
    ApprovalKind,
    ApprovalRequest,
    ApprovalStatus,
    Dispute,
    DisputeStatus,
)
from portal.disputes.queries import OPEN_DISPUTE_STATUSES
from portal.errors import N_, Conflict, NotAllowed, NotFound, ValidationFailed
from portal.payments.gateway import Gateway, GatewayRejected, GatewayUnavailable
from portal.payments.models import Payment, Refund
from portal.payments.refunds import apply_refund_result
from portal.staff import dispute_ops

ADMIN = "admin"


# -- the limit ------------------------------------------------------------------------------


def parse_limits(text: str) -> dict[str, int]:
    """ "USD=250,JPY=35000" -> {"USD": 25000, "JPY": 35000} (minor units); bad entries raise."""
    limits: dict[str, int] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        code, _, amount = part.partition("=")
        code = code.strip().upper()
        try:
            major = Decimal(amount.strip())
            digits = exponent(code)
        except (InvalidOperation, ValueError) as error:
            raise ValueError(f"STAFF_CREDIT_LIMITS: cannot read {part!r}") from error
        if major < 0:
            raise ValueError(f"STAFF_CREDIT_LIMITS: {part!r} is negative")
        limits[code] = int(major * 10**digits)
    return limits


def limit_for(user: User, currency: str, limits: Mapping[str, int]) -> int | None:
    """The most this person may credit or refund at once in `currency` (None: no limit)."""
    if user.staff_role == ADMIN:
        return None
    return limits.get(currency, 0)


def needs_approval(user: User, amount: Money, limits: Mapping[str, int]) -> bool:
    limit = limit_for(user, amount.currency, limits)
    return limit is not None and amount.minor > limit


# -- loading under lock ---------------------------------------------------------------------


def lock_dispute(session: Session, public_id: str) -> Dispute:
    """The dispute, locked and read fresh (the status another request may just have changed).

    NOTE: the caller's transaction is a writer already (a POST begins IMMEDIATE on SQLite;
    after the Stripe call begin_write starts one), so on SQLite the lock is the database's.
    """
    dispute = session.scalar(
        select(Dispute)
        .where(Dispute.public_id == public_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if dispute is None:
        raise NotFound(N_("There is no such dispute."))
    return dispute


def _require_open(dispute: Dispute) -> None:
    if dispute.status not in OPEN_DISPUTE_STATUSES:
        raise Conflict(
            N_("This dispute is already closed (%(status)s). Nothing more was done."),
            params={"status": dispute.status},
        )


def _require_no_pending_approval(session: Session, dispute: Dispute) -> None:
    waiting = session.scalar(
        select(ApprovalRequest.id).where(
            ApprovalRequest.dispute_id == dispute.id,
            ApprovalRequest.status.in_(
                (ApprovalStatus.PENDING.value, ApprovalStatus.APPROVED.value)
            ),
        )
    )
    if waiting is not None:
        raise Conflict(N_("A resolution of this dispute is already waiting for an admin."))


def _require_no_refund_under_way(session: Session, dispute: Dispute) -> None:
    pending = session.scalar(
        select(Refund.id).where(Refund.dispute_id == dispute.id, Refund.status == "pending")
    )
    if pending is not None:
        raise Conflict(
            N_(
                "A refund for this dispute is already under way; its outcome is being checked "
                "with Stripe. Nothing more was done."
            )
        )


def _invoice(session: Session, dispute: Dispute) -> Invoice:
    if dispute.invoice_id is None:
        raise ValidationFailed(N_("This dispute names no invoice to credit; refund it instead."))
    invoice = session.scalar(
        select(Invoice)
        .where(Invoice.id == dispute.invoice_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert invoice is not None
    return invoice


# -- the plan of a resolution -----------------------------------------------------------------


@dataclass(frozen=True)
class CreditPlan:
    """What a credit note will give back: per invoice line (line id -> minor) or as a whole."""

    amount: Money
    lines: tuple[tuple[int, int], ...] = ()
    memo: str = ""

    def payload(self) -> dict[str, Any]:
        return {"lines": [list(pair) for pair in self.lines], "memo": self.memo}


@dataclass(frozen=True)
class RefundPlan:
    payment_public_id: str
    amount: Money
    note: str = ""

    def payload(self) -> dict[str, Any]:
        return {"payment": self.payment_public_id, "note": self.note}


@dataclass(frozen=True)
class Outcome:
    """What happened: "credited", "refunded", "refund_pending", "refund_failed", "rejected" or
    "approval_requested", with the object made."""

    kind: str
    credit_note: CreditNote | None = None
    refund_id: int | None = None
    approval: ApprovalRequest | None = None
    message: str = ""


def credit_plan(
    dispute: Dispute,
    invoice_lines: Sequence[InvoiceLine],
    *,
    whole_minor: int | None,
    line_minor: Mapping[int, int],
    memo: str,
) -> CreditPlan:
    """A credit of the whole amount, or of the amounts given per line (positive ones only)."""
    chosen = tuple(
        (line.id, line_minor[line.id]) for line in invoice_lines if line_minor.get(line.id, 0) > 0
    )
    if chosen:
        total = sum(part for _, part in chosen)
        return CreditPlan(Money(total, dispute.currency), chosen, memo)
    if whole_minor is None or whole_minor <= 0:
        raise ValidationFailed(N_("Enter the amount to credit, for the whole or for lines."))
    return CreditPlan(Money(whole_minor, dispute.currency), (), memo)


def _check_amount(dispute: Dispute, amount: Money) -> None:
    if amount.minor <= 0:
        raise ValidationFailed(N_("The amount must be more than zero."))
    if amount.currency != dispute.currency:
        raise ValidationFailed(N_("The amount must be in the dispute's currency."))


# -- credit note ------------------------------------------------------------------------------


def resolve_by_credit(
    session: Session,
    public_id: str,
    plan: CreditPlan,
    *,
    user: User,
    actor: Actor,
    limits: Mapping[str, int],
    approval: ApprovalRequest | None = None,
) -> Outcome:
    """Credit the dispute's invoice (whole or per line), linked to the dispute, and resolve it;
    above the person's limit, ask an admin instead."""
    dispute = lock_dispute(session, public_id)
    _require_open(dispute)
    _check_amount(dispute, plan.amount)
    if approval is None:
        _require_no_pending_approval(session, dispute)
        if needs_approval(user, plan.amount, limits):
            return _ask_for_approval(session, dispute, ApprovalKind.CREDIT_NOTE, plan, user, actor)
    invoice = _invoice(session, dispute)
    lines_by_id = {line.id: line for line in invoice.lines}
    parts: list[tuple[InvoiceLine | None, str, Money]] = []
    for line_id, minor in plan.lines:
        line = lines_by_id.get(line_id)
        if line is None:
            raise ValidationFailed(N_("A credit can only name lines of its own invoice."))
        parts.append((line, line.description, Money(minor, dispute.currency)))
    note = billing.issue_credit_note(
        session,
        invoice,
        plan.amount,
        reason=CreditNoteReason.DISPUTE.value,
        memo=plan.memo[:1000],
        lines=parts,
        issued_by_user_id=user.id,
        dispute_id=dispute.id,
        actor=actor,
    )
    dispute_ops.close(
        session,
        dispute,
        DisputeStatus.RESOLVED,
        actor,
        resolution="credit_note",
        note=plan.memo,
    )
    if approval is not None:
        _done(approval)
    return Outcome("credited", credit_note=note)


# -- rejection --------------------------------------------------------------------------------


def reject(session: Session, public_id: str, explanation: str, *, actor: Actor) -> Outcome:
    """Close the dispute without a credit or refund, with the reason written for the customer."""
    text = explanation.strip()
    if len(text) < 10:
        raise ValidationFailed(
            N_("Explain the decision to the customer in a sentence or two (10 characters or more).")
        )
    dispute = lock_dispute(session, public_id)
    _require_open(dispute)
    _require_no_pending_approval(session, dispute)
    _require_no_refund_under_way(session, dispute)
    dispute_ops.close(
        session, dispute, DisputeStatus.REJECTED, actor, resolution="rejected", note=text
    )
    return Outcome("rejected")


# -- refund -----------------------------------------------------------------------------------


def refundable_payments(session: Session, dispute: Dispute) -> list[Payment]:
    """Payments of the dispute's account that can give money back: the disputed one for a
    chargeback, else those that paid the disputed invoice (then any of the account's)."""
    statement = select(Payment).where(
        Payment.account_id == dispute.account_id,
        Payment.stripe_payment_intent_id.is_not(None),
        Payment.amount_refunded_minor < Payment.amount_minor,
        Payment.currency == dispute.currency,
    )
    if dispute.payment_id is not None:
        statement = statement.where(Payment.id == dispute.payment_id)
    return list(session.scalars(statement.order_by(Payment.received_at.desc()).limit(20)))


def _pending_refunds_minor(session: Session, payment: Payment) -> int:
    rows = session.scalars(
        select(Refund.amount_minor).where(
            Refund.payment_id == payment.id, Refund.status == "pending"
        )
    )
    return sum(rows)


@dataclass(frozen=True)
class RefundCall:
    """What the Stripe call needs, read before the commit (objects expire on commit)."""

    refund_id: int
    payment_intent: str
    amount_minor: int
    idempotency_key: str


def start_refund(
    session: Session,
    public_id: str,
    plan: RefundPlan,
    *,
    user: User,
    actor: Actor,
    limits: Mapping[str, int],
    approval: ApprovalRequest | None = None,
) -> RefundCall | Outcome:
    """Under the dispute's lock: check, then save the refund row and its key (pending)."""
    dispute = lock_dispute(session, public_id)
    _require_open(dispute)
    _check_amount(dispute, plan.amount)
    _require_no_refund_under_way(session, dispute)
    if approval is None:
        _require_no_pending_approval(session, dispute)
    payment = session.scalar(
        select(Payment)
        .where(
            Payment.public_id == plan.payment_public_id, Payment.account_id == dispute.account_id
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if payment is None or payment.stripe_payment_intent_id is None:
        raise ValidationFailed(N_("Choose a card payment of this account to refund."))
    if payment.currency != dispute.currency:
        raise ValidationFailed(N_("The amount must be in the dispute's currency."))
    left = (
        payment.amount_minor
        - payment.amount_refunded_minor
        - _pending_refunds_minor(session, payment)
    )
    if plan.amount.minor > left:
        raise ValidationFailed(
            N_("A refund cannot be more than what is left of the payment (%(left)s minor units)."),
            params={"left": left},
        )
    if approval is None and needs_approval(user, plan.amount, limits):
        return _ask_for_approval(session, dispute, ApprovalKind.REFUND, plan, user, actor)
    # NOTE: the key names the row saved before the call: a retry of the same refund reuses it.
    refund_public_id = new_public_id()
    refund = Refund(
        public_id=refund_public_id,
        account_id=dispute.account_id,
        payment_id=payment.id,
        dispute_id=dispute.id,
        currency=payment.currency,
        amount_minor=plan.amount.minor,
        reason=plan.note.strip()[:255],
        status="pending",
        idempotency_key=f"refund:{refund_public_id}",
        issued_by_user_id=user.id,
    )
    session.add(refund)
    session.flush()
    actor.record(
        session,
        "refund.started",
        account_id=dispute.account_id,
        target_type="refund",
        target_id=refund.public_id,
        after={
            "amount_minor": refund.amount_minor,
            "currency": refund.currency,
            "payment": payment.public_id,
            "dispute": dispute.public_id,
        },
    )
    if approval is not None:
        approval.payload = {**approval.payload, "refund": refund.public_id}
    session.flush()
    return RefundCall(
        refund_id=refund.id,
        payment_intent=payment.stripe_payment_intent_id,
        amount_minor=refund.amount_minor,
        idempotency_key=refund.idempotency_key,
    )


def resolve_by_refund(
    session: Session,
    gw: Gateway,
    public_id: str,
    plan: RefundPlan,
    *,
    user: User,
    actor: Actor,
    limits: Mapping[str, int],
    approval: ApprovalRequest | None = None,
) -> Outcome:
    """Refund a payment of the account (partly or fully) and resolve the dispute.

    NOTE: the one named exception to "the request commits once": the refund row and its key
    are committed before Stripe is called, and nothing is locked while Stripe answers.
    """
    started = start_refund(
        session, public_id, plan, user=user, actor=actor, limits=limits, approval=approval
    )
    if isinstance(started, Outcome):
        return started
    approval_id = approval.id if approval is not None else None
    unit_of_work.commit_before_network_call(session)
    try:
        result = gw.create_refund(
            payment_intent=started.payment_intent,
            amount_minor=started.amount_minor,
            idempotency_key=started.idempotency_key,
        )
    except GatewayUnavailable:
        # NOTE: the outcome is unknown: the refund stays pending, the key saved; reconcile (or
        # the charge.refunded webhook) settles it. Never "failed", never retried blindly.
        return Outcome(
            "refund_pending",
            refund_id=started.refund_id,
            message=N_(
                "Stripe did not answer. The refund is saved as pending and will be checked "
                "with Stripe (billing reconcile); it will not be made twice."
            ),
        )
    except GatewayRejected as error:
        begin_write(session)
        _fail_refund(session, started.refund_id, actor, str(error.message))
        return Outcome("refund_failed", refund_id=started.refund_id, message=error.message)
    begin_write(session)
    refund = apply_refund_result(
        session, started.refund_id, stripe_refund_id=result.id, status=result.status, actor=actor
    )
    # NOTE: a succeeded refund resolves its dispute as it is recorded (portal.payments.refunds),
    # whichever of the answer, the webhook or reconcile records it.
    if approval_id is not None:
        found = session.get(ApprovalRequest, approval_id)
        if found is not None:
            _done(found)
    kind = "refunded" if refund.status == "succeeded" else "refund_pending"
    return Outcome(kind, refund_id=refund.id)


def _fail_refund(session: Session, refund_id: int, actor: Actor, why: str) -> None:
    refund = session.scalar(select(Refund).where(Refund.id == refund_id).with_for_update())
    if refund is None or refund.status != "pending":
        return
    refund.status = "failed"
    actor.record(
        session,
        "refund.failed",
        account_id=refund.account_id,
        target_type="refund",
        target_id=refund.public_id,
        before={"status": "pending"},
        after={"status": "failed", "reason": why[:200]},
    )
    session.flush()


# -- approvals --------------------------------------------------------------------------------


def _ask_for_approval(
    session: Session,
    dispute: Dispute,
    kind: ApprovalKind,
    plan: CreditPlan | RefundPlan,
    user: User,
    actor: Actor,
) -> Outcome:
    request = ApprovalRequest(
        kind=kind.value,
        dispute_id=dispute.id,
        account_id=dispute.account_id,
        currency=plan.amount.currency,
        amount_minor=plan.amount.minor,
        payload=plan.payload(),
        requested_by_user_id=user.id,
    )
    session.add(request)
    session.flush()
    actor.record(
        session,
        "approval.requested",
        account_id=dispute.account_id,
        target_type="approval",
        target_id=request.public_id,
        after={
            "kind": kind.value,
            "amount_minor": plan.amount.minor,
            "currency": plan.amount.currency,
            "dispute": dispute.public_id,
        },
    )
    session.flush()
    return Outcome("approval_requested", approval=request)


def lock_approval(session: Session, public_id: str) -> ApprovalRequest:
    request = session.scalar(
        select(ApprovalRequest)
        .where(ApprovalRequest.public_id == public_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if request is None:
        raise NotFound(N_("There is no such approval request."))
    return request


def _decide(request: ApprovalRequest, decider: User, status: ApprovalStatus, note: str) -> None:
    if decider.staff_role != ADMIN:
        raise NotAllowed(N_("Only an admin can decide on an approval request."))
    # NOTE: a second person: whoever asked can never approve (or turn down) their own request;
    # the database refuses it too (CHECK second_person_decides).
    if decider.id == request.requested_by_user_id:
        raise NotAllowed(N_("Someone else must decide: you asked for this yourself."))
    if request.status != ApprovalStatus.PENDING.value:
        raise Conflict(N_("This request was already decided. Nothing more was done."))
    request.status = status.value
    request.decided_by_user_id = decider.id
    request.decided_at = clock.now()
    request.decision_note = note[:2000]


def _done(request: ApprovalRequest) -> None:
    request.status = ApprovalStatus.DONE.value
    request.done_at = clock.now()
    object_session(request).flush()  # type: ignore[union-attr]


def decline_approval(
    session: Session, public_id: str, *, decider: User, actor: Actor, note: str = ""
) -> ApprovalRequest:
    request = lock_approval(session, public_id)
    _decide(request, decider, ApprovalStatus.REJECTED, note)
    actor.record(
        session,
        "approval.rejected",
        account_id=request.account_id,
        target_type="approval",
        target_id=request.public_id,
        before={"status": "pending"},
        after={"status": "rejected", "note": note[:200]},
    )
    session.flush()
    return request


def approve(
    session: Session,
    gw: Gateway,
    public_id: str,
    *,
    decider: User,
    actor: Actor,
    note: str = "",
) -> Outcome:
    """An admin (not the requester) approves: the credit or refund is made now, in their name."""
    request = lock_approval(session, public_id)
    _decide(request, decider, ApprovalStatus.APPROVED, note)
    actor.record(
        session,
        "approval.approved",
        account_id=request.account_id,
        target_type="approval",
        target_id=request.public_id,
        before={"status": "pending"},
        after={"status": "approved", "requested_by": request.requested_by_user_id},
    )
    dispute = session.get(Dispute, request.dispute_id) if request.dispute_id else None
    if dispute is None:
        raise NotFound(N_("There is no such dispute."))
    session.flush()
    amount = Money(request.amount_minor, request.currency)
    if request.kind == ApprovalKind.CREDIT_NOTE.value:
        plan = CreditPlan(
            amount,
            tuple((int(a), int(b)) for a, b in request.payload.get("lines", [])),
            str(request.payload.get("memo", "")),
        )
        return resolve_by_credit(
            session, dispute.public_id, plan, user=decider, actor=actor, limits={}, approval=request
        )
    refund_plan = RefundPlan(
        str(request.payload.get("payment", "")), amount, str(request.payload.get("note", ""))
    )
    return resolve_by_refund(
        session,
        gw,
        dispute.public_id,
        refund_plan,
        user=decider,
        actor=actor,
        limits={},
        approval=request,
    )


def pending_approvals(
    session: Session,
) -> list[tuple[ApprovalRequest, Dispute | None, User, Account]]:
    rows = session.execute(
        select(ApprovalRequest, Dispute, User, Account)
        .outerjoin(Dispute, Dispute.id == ApprovalRequest.dispute_id)
        .join(User, User.id == ApprovalRequest.requested_by_user_id)
        .join(Account, Account.id == ApprovalRequest.account_id)
        .where(ApprovalRequest.status == ApprovalStatus.PENDING.value)
        .order_by(ApprovalRequest.requested_at)
    ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]
