"""Dispute rules: open one (a whole invoice or chosen lines), talk about it, attach evidence,
withdraw it, and move it through its written-down states. Flushes, never commits.

Every change takes the dispute's (or, when opening, the invoice's) row lock first and writes
an audit event with the values before and after.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal import clock
from portal.accounts.models import Account
from portal.audit.services import Actor
from portal.billing import ledger
from portal.billing.models import Invoice, InvoiceLine, LedgerEntry, LedgerKind
from portal.billing.money import Money, allocate_minor
from portal.billing.services import CREDITABLE_STATUSES, line_charged_minor, line_credited_minor
from portal.disputes import evidence
from portal.disputes.hours import BusinessHours, add_business_hours
from portal.disputes.models import (
    MAX_DISPUTE_MINOR,
    Attachment,
    AttachmentVisibility,
    Dispute,
    DisputeEvent,
    DisputeLine,
    DisputeMessage,
    DisputeReason,
    DisputeSource,
    DisputeStatus,
)
from portal.disputes.queries import OPEN_DISPUTE_STATUSES, held_by_invoice
from portal.errors import N_, Conflict, NotAllowed, NotFound, ValidationFailed
from portal.forms import forbidden_character
from portal.mail import queue_email
from portal.payments.gateway import Dispute as GatewayDispute
from portal.payments.models import Payment

S = DisputeStatus
STRIPE_ACTOR = Actor(kind="stripe")

# NOTE: the dispute's state machine. Resolved, rejected and withdrawn are final: a customer
# who is still unhappy opens a new dispute (the lines are free again once this one ended).
ALLOWED_TRANSITIONS: dict[DisputeStatus, frozenset[DisputeStatus]] = {
    S.OPEN: frozenset({S.IN_REVIEW, S.WAITING_ON_CUSTOMER, S.RESOLVED, S.REJECTED, S.WITHDRAWN}),
    S.IN_REVIEW: frozenset({S.WAITING_ON_CUSTOMER, S.RESOLVED, S.REJECTED, S.WITHDRAWN}),
    S.WAITING_ON_CUSTOMER: frozenset({S.IN_REVIEW, S.RESOLVED, S.REJECTED, S.WITHDRAWN}),
    S.RESOLVED: frozenset(),
    S.REJECTED: frozenset(),
    S.WITHDRAWN: frozenset(),
}
# What a customer may do themselves: withdraw, and (by answering) hand the dispute back to
# support when support was waiting for them. Everything else is support's or Stripe's.
CUSTOMER_TRANSITIONS = frozenset({S.WITHDRAWN, S.IN_REVIEW})
FINAL_STATUSES = frozenset({S.RESOLVED, S.REJECTED, S.WITHDRAWN})

MAX_DESCRIPTION = 4000
MAX_MESSAGE = 4000
MAX_ATTACHMENTS = 20


@dataclass(frozen=True)
class ResponseTarget:
    """How soon support answers: `hours` business hours of the merchant's working week."""

    hours: int = 16
    business_hours: BusinessHours = field(default_factory=BusinessHours)

    def due(self, start: datetime) -> datetime:
        return add_business_hours(start, self.hours, self.business_hours)

    @property
    def business_days(self) -> int:
        """The target as whole business days, for the sentence "we answer within 2 business
        days" (rounded up: 12 hours of 8-hour days is "2 business days")."""
        per_day = self.business_hours.hours_per_day
        return max(1, -(-int(self.hours) // per_day))


@dataclass(frozen=True)
class LineCapacity:
    """What can still be disputed on one invoice line."""

    line: InvoiceLine
    charged_minor: int
    available_minor: int
    open_dispute_id: int | None


# -- reading what is left to dispute ------------------------------------------------------------


def _locked_invoice(session: Session, invoice_id: int) -> Invoice:
    invoice = session.scalar(
        select(Invoice)
        .where(Invoice.id == invoice_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if invoice is None:
        raise NotFound(N_("That invoice does not exist."))
    return invoice


def open_disputes_of_invoice(session: Session, invoice_id: int) -> list[Dispute]:
    return list(
        session.scalars(
            select(Dispute)
            .where(Dispute.invoice_id == invoice_id, Dispute.status.in_(OPEN_DISPUTE_STATUSES))
            .order_by(Dispute.id)
        )
    )


def line_capacities(session: Session, invoice: Invoice) -> list[LineCapacity]:
    """Every line of the invoice with what was charged for it and what is left to question
    (its charge less credits on it; nothing while another open dispute names it)."""
    lines = list(invoice.lines)
    credited = line_credited_minor(session, [line.id for line in lines])
    disputed = dict(
        session.execute(
            select(DisputeLine.invoice_line_id, DisputeLine.dispute_id).where(
                DisputeLine.invoice_line_id.in_([line.id for line in lines] or [0]),
                DisputeLine.is_open.is_(True),
            )
        ).all()
    )
    capacities = []
    for line in lines:
        charged = line_charged_minor(line)
        open_id = disputed.get(line.id)
        left = 0 if open_id else max(charged - credited.get(line.id, 0), 0)
        capacities.append(LineCapacity(line, charged, left, open_id))
    return capacities


def invoice_available_minor(session: Session, invoice: Invoice) -> int:
    """What can still be disputed on the whole invoice: its total, less credits, less what
    open disputes already hold."""
    held = held_by_invoice(session, [invoice.id]).get(invoice.id, 0)
    return max(invoice.total_minor - invoice.amount_credited_minor - held, 0)


def _split(amount: int, weights: Sequence[int]) -> list[int]:
    """`amount` shared in proportion to `weights` (the one allocation rule), every share >= 1."""
    shares = allocate_minor(amount, weights)
    # NOTE: a share of 0 would leave a chosen line out of the dispute (and unguarded); the
    # caller made sure amount >= len(weights), so a larger share can always give one unit.
    for i, share in enumerate(shares):
        if share == 0:
            donor = max(range(len(shares)), key=lambda j: shares[j])
            shares[donor] -= 1
            shares[i] = 1
    return shares


# -- opening ------------------------------------------------------------------------------------


def open_dispute(
    session: Session,
    *,
    account: Account,
    invoice: Invoice,
    amount: Money,
    reason: str,
    description: str,
    actor: Actor,
    target: ResponseTarget,
    line_ids: Sequence[int] = (),
) -> Dispute:
    """Question an invoice (the whole of it, or the chosen lines) for up to what was charged.

    Takes the invoice's row lock, so two submits of the same form (or two browsers) cannot
    both pass the checks: the second finds the first dispute and is refused.
    """
    if invoice.account_id != account.id:
        raise NotFound(N_("That invoice does not exist."))
    invoice = _locked_invoice(session, invoice.id)
    if invoice.status not in CREDITABLE_STATUSES:
        raise Conflict(N_("Only an issued invoice that is not void can be questioned."))
    if reason not in set(DisputeReason):
        raise ValidationFailed(
            N_("Please choose a reason from the list."), {"reason": N_("Please choose a reason.")}
        )
    description = (description or "").strip()
    if not description:
        raise ValidationFailed(
            N_("Please tell us what is wrong."),
            {"description": N_("Please tell us what is wrong.")},
        )
    if len(description) > MAX_DESCRIPTION:
        raise ValidationFailed(
            N_("Please keep the description under %(max)d characters."),
            {"description": N_("That is too long.")},
            params={"max": MAX_DESCRIPTION},
        )
    if amount.currency != invoice.currency:
        raise ValidationFailed(N_("The amount must be in the invoice's currency."))
    if amount.minor <= 0 or amount.minor > MAX_DISPUTE_MINOR:
        raise ValidationFailed(
            N_("Please enter an amount greater than zero."),
            {"amount": N_("Please enter an amount greater than zero.")},
        )

    open_on_invoice = open_disputes_of_invoice(session, invoice.id)
    shares: list[tuple[InvoiceLine, int]] = []
    chosen = sorted(set(line_ids))
    if not chosen:
        if open_on_invoice:
            raise Conflict(
                N_(
                    "Part of this invoice is already being looked at. Please follow that "
                    "question, or choose lines that are not in it."
                )
            )
        available = invoice_available_minor(session, invoice)
        picked: list[LineCapacity] = []
    else:
        if any(not dispute.lines for dispute in open_on_invoice):
            raise Conflict(
                N_("This whole invoice is already being looked at. Please follow that question.")
            )
        capacities = {c.line.id: c for c in line_capacities(session, invoice)}
        if any(line_id not in capacities for line_id in chosen):
            raise ValidationFailed(N_("Please choose lines of this invoice."))
        picked = [capacities[line_id] for line_id in chosen]
        if any(c.open_dispute_id for c in picked):
            raise Conflict(
                N_(
                    "One of these lines is already being looked at. Please follow that "
                    "question, or choose other lines."
                )
            )
        if any(c.available_minor <= 0 for c in picked):
            raise ValidationFailed(
                N_("Nothing is left to question on one of these lines (it was credited).")
            )
        available = min(
            sum(c.available_minor for c in picked), invoice_available_minor(session, invoice)
        )
    if available <= 0:
        raise Conflict(N_("Nothing is left to question on this invoice."))
    if amount.minor > available:
        raise ValidationFailed(
            N_(
                "You can question at most %(limit)s here: what was charged, less credits and "
                "other open questions."
            ),
            {"amount": N_("That is more than was charged.")},
            params={"limit": Money(available, invoice.currency)},
        )
    if chosen:
        if amount.minor < len(picked):
            raise ValidationFailed(
                N_("That amount is too small to spread over the lines you chose."),
                {"amount": N_("Please enter a larger amount, or choose fewer lines.")},
            )
        split = _split(amount.minor, [c.available_minor for c in picked])
        shares = [(c.line, share) for c, share in zip(picked, split, strict=True)]

    now = clock.now()
    dispute = Dispute(
        account_id=account.id,
        invoice_id=invoice.id,
        opened_by_user_id=actor.user_id,
        source=DisputeSource.CUSTOMER.value,
        currency=invoice.currency,
        amount_minor=amount.minor,
        reason=reason,
        description=description,
        status=S.OPEN.value,
        response_due_at=target.due(now),
        created_at=now,
        updated_at=now,
    )
    for line, share in shares:
        dispute.lines.append(DisputeLine(invoice_line_id=line.id, amount_minor=share))
    dispute.events.append(
        DisputeEvent(
            status=S.OPEN.value, at=now, actor_kind=actor.kind, actor_user_id=actor.user_id
        )
    )
    session.add(dispute)
    session.flush()
    actor.record(
        session,
        "dispute.opened",
        account_id=account.id,
        target_type="dispute",
        target_id=dispute.public_id,
        before=None,
        after={
            "invoice": invoice.number,
            "amount_minor": amount.minor,
            "currency": amount.currency,
            "reason": reason,
            "lines": [line.position for line, _share in shares],
            "status": dispute.status,
        },
    )
    _email(session, account, dispute, "dispute_received", None)
    return dispute


def _email(
    session: Session,
    account: Account,
    dispute: Dispute,
    template: str,
    message: DisputeMessage | None,
    dedupe_key: str | None = None,
) -> None:
    # The subject is the email catalog's (portal.notifications.emails), in the account's language.
    queue_email(
        session,
        to=account.billing_email,
        template=template,
        context={"account": account, "dispute": dispute, "message": message},
        account_id=account.id,
        dedupe_key=dedupe_key,
    )


# -- the state machine ------------------------------------------------------------------------


def lock_dispute(session: Session, dispute_id: int) -> Dispute:
    """The dispute, re-read under its row lock (FOR UPDATE; SQLite's write transaction)."""
    dispute = session.scalar(
        select(Dispute)
        .where(Dispute.id == dispute_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if dispute is None:
        raise NotFound(N_("That dispute does not exist."))
    return dispute


def transition(
    session: Session,
    dispute: Dispute,
    to_status: DisputeStatus | str,
    actor: Actor,
    *,
    note: str = "",
    resolution: str | None = None,
) -> Dispute:
    """Move a dispute to `to_status` if the table allows it, under its row lock, with a
    timeline event and an audit event (before and after).

    A final status frees the dispute's lines (they may be questioned again) and its hold;
    resolving or rejecting emails the customer (`dispute_resolved`, once per dispute).
    """
    to = DisputeStatus(to_status)
    dispute = lock_dispute(session, dispute.id)
    current = DisputeStatus(dispute.status)
    if to not in ALLOWED_TRANSITIONS[current]:
        raise Conflict(
            N_("This dispute is %(current)s and cannot become %(new)s."),
            params={"current": current.value, "new": to.value},
        )
    if actor.kind == "customer" and (
        dispute.source == DisputeSource.CHARGEBACK.value
        or to not in CUSTOMER_TRANSITIONS
        or (to == S.IN_REVIEW and current != S.WAITING_ON_CUSTOMER)
    ):
        raise NotAllowed(N_("Only our support team can do that."))
    if to == S.REJECTED and not (note or dispute.resolution_note).strip():
        raise ValidationFailed(N_("A rejection needs a written explanation."))
    now = clock.now()
    before = {"status": current.value, "resolution": dispute.resolution}
    dispute.status = to.value
    dispute.updated_at = now
    if to == S.REJECTED:
        dispute.resolution = "rejected"
        dispute.resolution_note = note.strip() or dispute.resolution_note
    elif resolution is not None:
        dispute.resolution = resolution
        if note.strip():
            dispute.resolution_note = note.strip()
    if to in FINAL_STATUSES:
        dispute.resolved_at = now
        session.execute(
            update(DisputeLine).where(DisputeLine.dispute_id == dispute.id).values(is_open=False)
        )
    session.add(
        DisputeEvent(
            dispute_id=dispute.id,
            from_status=current.value,
            status=to.value,
            at=now,
            actor_kind=actor.kind,
            actor_user_id=actor.user_id,
            note=note.strip(),
        )
    )
    session.flush()
    actor.record(
        session,
        f"dispute.{to.value}",
        account_id=dispute.account_id,
        target_type="dispute",
        target_id=dispute.public_id,
        before=before,
        after={"status": to.value, "resolution": dispute.resolution},
    )
    if to in (S.RESOLVED, S.REJECTED) and dispute.source == DisputeSource.CUSTOMER.value:
        account = session.get(Account, dispute.account_id)
        if account is not None:
            _email(
                session,
                account,
                dispute,
                "dispute_resolved",
                None,
                dedupe_key=f"dispute_resolved:{dispute.id}",
            )
    session.expire(dispute, ["lines", "events"])
    return dispute


def withdraw(session: Session, dispute: Dispute, *, actor: Actor, note: str = "") -> Dispute:
    """The customer takes the question back; the held amount is payable again."""
    return transition(session, dispute, S.WITHDRAWN, actor, note=note)


# -- the thread ---------------------------------------------------------------------------------


def _author_kind(actor: Actor) -> str:
    return actor.kind if actor.kind in ("customer", "staff") else "system"


def add_message(
    session: Session,
    dispute: Dispute,
    *,
    body: str,
    actor: Actor,
    is_internal: bool = False,
) -> DisputeMessage:
    """A message in the dispute's thread. Staff may mark it internal (never shown to the
    customer); a staff reply emails the customer, and a customer's answer hands a dispute
    waiting on them back to support. A first staff reply puts a submitted dispute in review."""
    dispute = lock_dispute(session, dispute.id)
    author = _author_kind(actor)
    if is_internal and author != "staff":
        raise NotAllowed(N_("Only our support team can write internal notes."))
    body = (body or "").strip()
    if not body:
        raise ValidationFailed(
            N_("Please write a message."), {"body": N_("Please write a message.")}
        )
    if len(body) > MAX_MESSAGE:
        raise ValidationFailed(
            N_("Please keep the message under %(max)d characters."),
            {"body": N_("That is too long.")},
            params={"max": MAX_MESSAGE},
        )
    if DisputeStatus(dispute.status) in FINAL_STATUSES and not is_internal:
        raise Conflict(N_("This dispute is closed. Please open a new one if something is wrong."))
    now = clock.now()
    message = DisputeMessage(
        dispute_id=dispute.id,
        author_user_id=actor.user_id,
        author_kind=author,
        body=body,
        is_internal=is_internal,
        created_at=now,
    )
    session.add(message)
    before = {"first_response_at": dispute.first_response_at, "status": dispute.status}
    if author == "staff" and not is_internal and dispute.first_response_at is None:
        dispute.first_response_at = now
    dispute.updated_at = now
    session.flush()
    actor.record(
        session,
        "dispute.note_added" if is_internal else "dispute.message_added",
        account_id=dispute.account_id,
        target_type="dispute",
        target_id=dispute.public_id,
        before={**before, "first_response_at": _iso(before["first_response_at"])},
        after={
            "message_id": message.id,
            "is_internal": is_internal,
            "first_response_at": _iso(dispute.first_response_at),
        },
    )
    if author == "customer" and dispute.status == S.WAITING_ON_CUSTOMER.value:
        transition(session, dispute, S.IN_REVIEW, actor, note="")
    if author == "staff" and not is_internal and dispute.status == S.OPEN.value:
        # Someone has answered: the customer's timeline no longer says only "submitted".
        transition(session, dispute, S.IN_REVIEW, actor, note="")
    if author == "staff" and not is_internal:
        account = session.get(Account, dispute.account_id)
        if account is not None:
            _email(session, account, dispute, "dispute_replied", message)
    return message


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def delete_message(
    session: Session, dispute: Dispute, message: DisputeMessage, *, actor: Actor
) -> DisputeMessage:
    """Soft-delete a message (its author, or staff). Its files keep their own visibility: an
    internal note's files stay internal, a deleted message's files are shown to nobody."""
    dispute = lock_dispute(session, dispute.id)
    if message.dispute_id != dispute.id or message.deleted_at is not None:
        raise NotFound(N_("That message does not exist."))
    if actor.kind != "staff" and message.author_user_id != actor.user_id:
        raise NotAllowed(N_("You can only delete your own messages."))
    now = clock.now()
    message.deleted_at = now
    for attachment in session.scalars(
        select(Attachment).where(Attachment.message_id == message.id)
    ):
        attachment.deleted_at = attachment.deleted_at or now
    session.flush()
    actor.record(
        session,
        "dispute.message_deleted",
        account_id=dispute.account_id,
        target_type="dispute",
        target_id=dispute.public_id,
        before={"message_id": message.id, "deleted_at": None},
        after={"message_id": message.id, "deleted_at": now.isoformat()},
    )
    return message


def add_attachment(
    session: Session,
    dispute: Dispute,
    *,
    data: bytes,
    filename: str,
    actor: Actor,
    store: evidence.EvidenceStore,
    max_bytes: int,
    message: DisputeMessage | None = None,
    internal: bool = False,
) -> Attachment:
    """Keep one evidence file: checked by its content, stored under a random name. Files of
    an internal note (or marked internal by staff) are internal: never shown to the customer."""
    dispute = lock_dispute(session, dispute.id)
    if internal and actor.kind != "staff":
        raise NotAllowed(N_("Only our support team can attach internal files."))
    if message is not None and message.dispute_id != dispute.id:
        raise NotFound(N_("That message does not exist."))
    if DisputeStatus(dispute.status) in FINAL_STATUSES and not internal:
        raise Conflict(N_("This dispute is closed. Please open a new one if something is wrong."))
    count = len(
        session.scalars(
            select(Attachment.id).where(
                Attachment.dispute_id == dispute.id, Attachment.deleted_at.is_(None)
            )
        ).all()
    )
    if count >= MAX_ATTACHMENTS:
        raise ValidationFailed(
            N_("A dispute can have at most %(max)d files."), params={"max": MAX_ATTACHMENTS}
        )
    kind = evidence.inspect(data, max_bytes=max_bytes)
    internal = internal or bool(message is not None and message.is_internal)
    visibility = AttachmentVisibility.INTERNAL if internal else AttachmentVisibility.CUSTOMER
    key = store.save(data)
    attachment = Attachment(
        dispute_id=dispute.id,
        message_id=message.id if message is not None else None,
        uploaded_by_user_id=actor.user_id,
        visibility=visibility.value,
        filename=_display_name(filename, kind.extension),
        content_type=kind.content_type,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        storage_key=key,
    )
    session.add(attachment)
    session.flush()
    actor.record(
        session,
        "dispute.attachment_added",
        account_id=dispute.account_id,
        target_type="dispute",
        target_id=dispute.public_id,
        before=None,
        after={
            "attachment": attachment.public_id,
            "content_type": kind.content_type,
            "size_bytes": len(data),
            "visibility": attachment.visibility,
        },
    )
    return attachment


def _display_name(filename: str, extension: str) -> str:
    """The uploader's name for the file, as plain text (shown on the page, escaped there; never
    used on disk or in a header), or a neutral one."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = "".join(ch for ch in name if forbidden_character(ch) is None)[:200]
    return name or f"evidence.{extension}"


# -- card chargebacks (Stripe's disputes) --------------------------------------------------------

# NOTE: Stripe's dispute status -> ours. A chargeback only moves forward (a late event about an
# earlier state changes nothing): won and lost both close it, Stripe's status says which.
CHARGEBACK_STATUSES = {
    "warning_needs_response": S.OPEN,
    "needs_response": S.OPEN,
    "warning_under_review": S.IN_REVIEW,
    "under_review": S.IN_REVIEW,
    "won": S.RESOLVED,
    "lost": S.RESOLVED,
    "warning_closed": S.RESOLVED,
    "charge_refunded": S.RESOLVED,
    "prevented": S.RESOLVED,
}
CHARGEBACK_REASONS = {
    "fraudulent": DisputeReason.NOT_RECOGNIZED,
    "unrecognized": DisputeReason.NOT_RECOGNIZED,
    "duplicate": DisputeReason.DUPLICATE,
    "product_not_received": DisputeReason.SERVICE_NOT_RECEIVED,
    "subscription_canceled": DisputeReason.CANCELED_BUT_CHARGED,
    "credit_not_processed": DisputeReason.WRONG_AMOUNT,
}
_PROGRESS = {S.OPEN: 0, S.WAITING_ON_CUSTOMER: 0, S.IN_REVIEW: 1}


def _progress(status: DisputeStatus) -> int:
    return _PROGRESS.get(status, 2)


def apply_chargeback(
    session: Session, facts: GatewayDispute, payment: Payment, actor: Actor
) -> Dispute:
    """Bring our copy of a card chargeback up to Stripe's (`facts`, fetched from Stripe).

    Creates the dispute (against the payment, and its invoice when it paid one), keeps
    Stripe's status, reason, evidence deadline and fee, moves our status forward, and posts
    the money to the ledger once per Stripe balance transaction: the withdrawal and the fee,
    and the reinstatement when won. Idempotent: duplicates and any order of events converge.
    """
    dispute = _chargeback_row(session, facts, payment, actor)
    before = {
        "stripe_status": dispute.stripe_status,
        "evidence_due_by": _iso(dispute.evidence_due_by),
        "fee_minor": dispute.fee_minor,
    }
    dispute.stripe_status = facts.status[:64]
    dispute.stripe_reason = facts.reason[:64]
    if facts.evidence_due_by is not None:
        dispute.evidence_due_by = facts.evidence_due_by
        dispute.response_due_at = facts.evidence_due_by
    fees = [bt.fee for bt in facts.balance_transactions if bt.currency == payment.currency]
    dispute.fee_minor = max(sum(fees), 0)
    after = {
        "stripe_status": dispute.stripe_status,
        "evidence_due_by": _iso(dispute.evidence_due_by),
        "fee_minor": dispute.fee_minor,
    }
    if after != before:
        dispute.updated_at = clock.now()
        session.flush()
        actor.record(
            session,
            "dispute.chargeback_updated",
            account_id=dispute.account_id,
            target_type="dispute",
            target_id=dispute.public_id,
            before=before,
            after=after,
        )
    target = CHARGEBACK_STATUSES.get(facts.status)
    current = DisputeStatus(dispute.status)
    if target is not None and _progress(target) > _progress(current):
        transition(session, dispute, target, actor, note=f"Stripe: {facts.status}")
    _post_chargeback_money(session, dispute, facts, payment)
    return dispute


def _chargeback_row(
    session: Session, facts: GatewayDispute, payment: Payment, actor: Actor
) -> Dispute:
    found = session.scalar(
        select(Dispute)
        .where(Dispute.stripe_dispute_id == facts.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if found is not None:
        return found
    invoice_ids = sorted({allocation.invoice_id for allocation in payment.allocations})
    now = clock.now()
    dispute = Dispute(
        account_id=payment.account_id,
        payment_id=payment.id,
        # NOTE: a payment that paid one invoice names it; one spread over several stays on
        # the payment (the console shows its invoices).
        invoice_id=invoice_ids[0] if len(invoice_ids) == 1 else None,
        source=DisputeSource.CHARGEBACK.value,
        stripe_dispute_id=facts.id,
        stripe_reason=facts.reason[:64],
        stripe_status=facts.status[:64],
        currency=payment.currency,
        amount_minor=min(max(facts.amount, 1), MAX_DISPUTE_MINOR),
        reason=CHARGEBACK_REASONS.get(facts.reason, DisputeReason.OTHER).value,
        description="",
        status=S.OPEN.value,
        evidence_due_by=facts.evidence_due_by,
        response_due_at=facts.evidence_due_by,
        created_at=now,
        updated_at=now,
    )
    dispute.events.append(
        DisputeEvent(
            status=S.OPEN.value, at=now, actor_kind=actor.kind, note=f"Stripe: {facts.status}"
        )
    )
    try:
        with session.begin_nested():
            session.add(dispute)
            session.flush()
    except IntegrityError:
        # NOTE: another delivery of an event about the same dispute created it first.
        again = session.scalar(
            select(Dispute).where(Dispute.stripe_dispute_id == facts.id).with_for_update()
        )
        if again is None:
            raise
        return again
    actor.record(
        session,
        "dispute.chargeback_opened",
        account_id=dispute.account_id,
        target_type="dispute",
        target_id=dispute.public_id,
        before=None,
        after={
            "stripe_dispute_id": facts.id,
            "payment": payment.public_id,
            "amount_minor": dispute.amount_minor,
            "currency": dispute.currency,
            "stripe_reason": facts.reason,
            "evidence_due_by": _iso(facts.evidence_due_by),
        },
    )
    return dispute


def _post_chargeback_money(
    session: Session, dispute: Dispute, facts: GatewayDispute, payment: Payment
) -> None:
    """One ledger entry per kind and Stripe balance transaction (the unique source reference
    makes a replay post nothing)."""
    entries: list[tuple[LedgerKind, int, str, str]] = []
    for bt in facts.balance_transactions:
        same_currency = bt.currency == payment.currency
        if bt.amount < 0:
            principal = -bt.amount if same_currency else dispute.amount_minor
            entries.append(
                (LedgerKind.CHARGEBACK, principal, f"chargeback:{bt.id}", "Card payment disputed")
            )
            if same_currency and bt.fee > 0:
                entries.append(
                    (LedgerKind.CHARGEBACK_FEE, bt.fee, f"chargeback_fee:{bt.id}", "Dispute fee")
                )
        elif bt.amount > 0:
            back = bt.amount if same_currency else dispute.amount_minor
            if same_currency and bt.fee < 0:
                back += -bt.fee  # NOTE: Stripe returned its fee too: so do we.
            entries.append(
                (
                    LedgerKind.CHARGEBACK_REVERSAL,
                    back,
                    f"chargeback_reversal:{bt.id}",
                    "Card dispute won: payment restored",
                )
            )
    refs = [ref for _kind, _amount, ref, _text in entries]
    posted = set(
        session.scalars(
            select(LedgerEntry.source_ref).where(LedgerEntry.source_ref.in_(refs or [""]))
        )
    )
    for kind, amount, ref, text in entries:
        if ref in posted or amount <= 0:
            continue
        ledger.post(
            session,
            account_id=dispute.account_id,
            kind=kind,
            amount=Money(amount, payment.currency),
            source_ref=ref[:80],
            effective_at=clock.now(),
            description=f"{text} ({facts.id})",
            invoice_id=dispute.invoice_id,
        )
        STRIPE_ACTOR.record(
            session,
            f"ledger.{kind.value}",
            account_id=dispute.account_id,
            target_type="dispute",
            target_id=dispute.public_id,
            before=None,
            after={"amount_minor": amount, "currency": payment.currency, "source_ref": ref},
        )
