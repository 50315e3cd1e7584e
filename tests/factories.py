"""Small factories for the models tests need most. Each takes the test's session and flushes."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from portal import clock
from portal.accounts.models import Account, Membership, User
from portal.billing import services
from portal.billing.models import Invoice
from portal.subscriptions.models import Plan, Price, PriceTier, TaxRate

SELLER: dict[str, Any] = {
    "name": "Northwind Cloud Ltd.",
    "address": "1 Harbour Street\nBristol BS1 4RN\nUnited Kingdom",
    "tax_id": "GB 123 4567 89",
    "email": "billing@example.com",
}

_counter = itertools.count(1)


def _next() -> int:
    return next(_counter)


def statements_sent(session: Session, run: Callable[[], Any]) -> list[str]:
    """The SQL of every statement the session's engine sends while run() runs."""
    sent: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", note)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", note)
    return sent


def make_account(session: Session, currency: str = "USD", **overrides: Any) -> Account:
    """An account with a unique invoice prefix (T0001, T0002, …) unless one is given."""
    n = _next()
    fields: dict[str, Any] = {
        "name": f"Test Customer {n}",
        "billing_email": f"billing{n}@example.com",
        "currency": currency,
        "invoice_prefix": f"T{n:05d}",
        "timezone": "UTC",
    }
    fields.update(overrides)
    account = Account(**fields)
    session.add(account)
    session.flush()
    return account


def make_user(
    session: Session,
    email: str | None = None,
    account: Account | None = None,
    role: str = "owner",
    staff_role: str | None = None,
) -> User:
    """A user; with `account`, a member of it in `role`; with `staff_role`, a staff member."""
    user = User(
        email=email or f"user{_next()}@example.com", name="Test User", staff_role=staff_role
    )
    session.add(user)
    session.flush()
    if account is not None:
        session.add(Membership(user_id=user.id, account_id=account.id, role=role))
        session.flush()
    return user


def make_invoice(
    session: Session,
    account: Account,
    amounts: Sequence[int] = (1000,),
    tax_rate_bp: int = 0,
    finalize: bool = True,
    issue_date: date | None = None,
    finalized_at: datetime | None = None,
) -> Invoice:
    """An invoice with one line per amount, finalized (numbered, posted) unless told otherwise."""
    if issue_date is None and finalized_at is not None:
        issue_date = finalized_at.date()
    lines = [
        services.LineInput(
            description=f"Item {position}",
            unit_amount_minor=amount,
            tax_rate_bp=tax_rate_bp,
            tax_name="VAT" if tax_rate_bp else "",
        )
        for position, amount in enumerate(amounts, start=1)
    ]
    invoice = services.create_draft_invoice(
        session, account, lines, issue_date=issue_date or clock.today(account.timezone)
    )
    if finalize:
        services.finalize_invoice(session, invoice, seller=SELLER, finalized_at=finalized_at)
    return invoice


def make_price(
    session: Session | None = None,
    *,
    currency: str = "USD",
    pricing_model: str = "flat",
    unit_amount_minor: int = 0,
    flat_amount_minor: int = 0,
    tier_mode: str | None = None,
    tiers: Sequence[tuple[int | None, int, int]] = (),
    tax_rate_bp: int = 0,
    min_quantity: int = 1,
    max_quantity: int | None = None,
    plan: Plan | None = None,
) -> Price:
    """A price; `tiers` are (up_to, unit amount, flat amount). Without a session it stays unsaved.

    Every amount is set explicitly, because column defaults only apply when a row is inserted.
    """
    price = Price(
        currency=currency,
        billing_interval="month",
        interval_count=1,
        pricing_model=pricing_model,
        tier_mode=tier_mode,
        unit_amount_minor=unit_amount_minor,
        flat_amount_minor=flat_amount_minor,
        unit_label="",
        min_quantity=min_quantity,
        max_quantity=max_quantity,
        version=1,
        tax_rate=(
            TaxRate(name="VAT", rate_bp=tax_rate_bp, country="ALL", inclusive=False)
            if tax_rate_bp
            else None
        ),
        is_active=True,
        tiers=[
            PriceTier(
                position=position, up_to=up_to, unit_amount_minor=unit, flat_amount_minor=flat
            )
            for position, (up_to, unit, flat) in enumerate(tiers, start=1)
        ],
    )
    if session is not None:
        if plan is None:
            n = _next()
            plan = Plan(code=f"test-plan-{n}", name=f"Test plan {n}")
            session.add(plan)
        price.plan = plan
        session.add(price)
        session.flush()
    return price


# --- issue 10: subscriptions engine (sub-engine) ---------------------------------------------


def make_subscription(
    session: Session,
    account: Account,
    price: Price,
    *,
    quantity: int = 1,
    period_start: datetime | None = None,
    period_end: datetime | None = None,
    status: str = "active",
    trial_end: datetime | None = None,
) -> Any:
    """A subscription on `price` whose current period is [period_start, period_end) (default:
    the month starting at the clock's current day, in UTC)."""
    from datetime import timedelta

    from portal.subscriptions.models import Subscription
    from portal.subscriptions.periods import period_end as end_of_period

    start = period_start or clock.now().replace(hour=0, minute=0, second=0, microsecond=0)
    end = period_end or end_of_period(
        start, price.billing_interval, price.interval_count, account.timezone
    )
    subscription = Subscription(
        account_id=account.id,
        price_id=price.id,
        quantity=quantity,
        status=status,
        started_at=start - timedelta(seconds=0),
        current_period_start=start,
        current_period_end=end,
        trial_end=trial_end,
    )
    session.add(subscription)
    session.flush()
    return subscription


# --- disputes (issue 11) -------------------------------------------------------------------


def make_dispute(
    session: Session,
    account: Account,
    invoice: Invoice,
    amount_minor: int | None = None,
    *,
    line_ids: Sequence[int] = (),
    reason: str = "wrong_amount",
    description: str = "This is not what we agreed.",
    user: User | None = None,
) -> Any:
    """A customer dispute opened through the service (whole invoice unless lines are given)."""
    from portal.audit.services import Actor
    from portal.billing.money import Money
    from portal.disputes import services as disputes
    from portal.disputes.hours import BusinessHours

    actor = Actor("customer", user.id if user is not None else None)
    return disputes.open_dispute(
        session,
        account=account,
        invoice=invoice,
        amount=Money(amount_minor or invoice.total_minor, invoice.currency),
        reason=reason,
        description=description,
        actor=actor,
        target=disputes.ResponseTarget(16, BusinessHours("UTC")),
        line_ids=line_ids,
    )


def png_bytes(width: int = 8, height: int = 8) -> bytes:
    """A real, small PNG (what a phone's screenshot is, in miniature)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(width: int = 8, height: int = 8) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 30, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def pdf_bytes(extra: bytes = b"") -> bytes:
    """A minimal one-page PDF; `extra` goes into the catalog dictionary."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R " + extra + b">>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
