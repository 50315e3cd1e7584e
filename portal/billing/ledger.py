"""The ledger: every change to what an account owes; balances and statements are read from it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    ScalarSelect,
    Select,
    bindparam,
    case,
    func,
    select,
    text,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from portal.billing.models import AccountBalance, LedgerEntry, LedgerKind
from portal.billing.money import Money
from portal.db import insert_rows

_SIGN = {
    LedgerKind.INVOICE: 1,
    LedgerKind.REFUND: 1,
    LedgerKind.INVOICE_VOID: -1,
    LedgerKind.PAYMENT: -1,
    LedgerKind.CREDIT_NOTE: -1,
    LedgerKind.CHARGEBACK: 1,
    LedgerKind.CHARGEBACK_FEE: 1,
    LedgerKind.CHARGEBACK_REVERSAL: -1,
}


def post(
    session: Session,
    *,
    account_id: int,
    kind: LedgerKind,
    amount: Money,
    source_ref: str,
    effective_at: datetime,
    description: str,
    invoice_id: int | None = None,
) -> LedgerEntry:
    """Record one change of the balance. `amount` is positive; the kind decides the sign."""
    if amount.minor <= 0:
        raise ValueError("ledger amounts are posted as positive values")
    entry = LedgerEntry(
        account_id=account_id,
        currency=amount.currency,
        kind=kind.value,
        amount_minor=_SIGN[kind] * amount.minor,
        source_ref=source_ref,
        effective_at=effective_at,
        description=description[:255],
        invoice_id=invoice_id,
    )
    session.add(entry)
    session.flush()
    _add_to_balance(session, account_id, amount.currency, entry.amount_minor)
    return entry


def post_many(session: Session, postings: Sequence[dict[str, Any]]) -> int:
    """`post` for many entries at once (the billing run's batch): the entries in one INSERT
    (rows, not unit-of-work objects: nothing reads them back in this transaction), then each
    account's balance moved once by the sum of its entries, in one statement. Returns how many
    entries were posted.

    NOTE: as in `post`, the entries go in before the balances move (a replayed source_ref fails
    first); the balance rows are upserted in (account, currency) order so that two runs posting
    to the same accounts at once lock them in the same order.
    """
    entries: list[dict[str, Any]] = []
    deltas: dict[tuple[int, str], int] = {}
    for posting in postings:
        amount: Money = posting["amount"]
        if amount.minor <= 0:
            raise ValueError("ledger amounts are posted as positive values")
        kind: LedgerKind = posting["kind"]
        entry = {
            "account_id": posting["account_id"],
            "currency": amount.currency,
            "kind": kind.value,
            "amount_minor": _SIGN[kind] * amount.minor,
            "source_ref": posting["source_ref"],
            "effective_at": posting["effective_at"],
            "description": posting["description"][:255],
            "invoice_id": posting.get("invoice_id"),
        }
        entries.append(entry)
        key = (entry["account_id"], entry["currency"])
        deltas[key] = deltas.get(key, 0) + entry["amount_minor"]
    if not entries:
        return 0
    insert_rows(session, LedgerEntry.__table__, entries)
    moves = sorted(deltas.items())
    if session.get_bind().dialect.name == "postgresql":
        # NOTE: one statement with the moves as three arrays (an executemany upserts a row per
        # statement), applied in the sorted order (WITH ORDINALITY), so the row locks are
        # still taken in (account, currency) order.
        session.connection().execute(
            _MOVE_BALANCES,
            {
                "accounts": [account_id for (account_id, _), _ in moves],
                "currencies": [currency for (_, currency), _ in moves],
                "deltas": [delta for _, delta in moves],
            },
        )
        return len(entries)
    table = AccountBalance.__table__
    upsert = sqlite.insert(table).values(
        account_id=bindparam("b_account"),
        currency=bindparam("b_currency"),
        balance_minor=bindparam("b_delta"),
    )
    statement = upsert.on_conflict_do_update(
        index_elements=[table.c.account_id, table.c.currency],
        set_={"balance_minor": table.c.balance_minor + upsert.excluded.balance_minor},
    )
    session.connection().execute(
        statement,
        [
            {"b_account": account_id, "b_currency": currency, "b_delta": delta}
            for (account_id, currency), delta in moves
        ],
    )
    return len(entries)


# PostgreSQL: post_many's balance moves in one statement (see there).
_MOVE_BALANCES = text(
    "INSERT INTO account_balances (account_id, currency, balance_minor)"
    " SELECT account_id, currency, delta FROM unnest("
    "CAST(:accounts AS BIGINT[]), CAST(:currencies AS VARCHAR[]), CAST(:deltas AS BIGINT[])"
    ") WITH ORDINALITY AS move(account_id, currency, delta, n) ORDER BY n"
    " ON CONFLICT (account_id, currency) DO UPDATE"
    " SET balance_minor = account_balances.balance_minor + excluded.balance_minor"
)


def _add_to_balance(session: Session, account_id: int, currency: str, delta: int) -> None:
    """Move the account's balance row by `delta`, creating it on first use.

    NOTE: one upsert in the entry's own transaction (after the entry's INSERT, so a replayed
    source_ref fails before the balance moves). Its row lock serialises concurrent posts on
    PostgreSQL; SQLite has one writer anyway.
    """
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    upsert = dialect.insert(AccountBalance).values(
        account_id=account_id, currency=currency, balance_minor=delta
    )
    session.execute(
        upsert.on_conflict_do_update(
            index_elements=[AccountBalance.account_id, AccountBalance.currency],
            set_={"balance_minor": AccountBalance.balance_minor + upsert.excluded.balance_minor},
        )
    )


def _balance_row(
    account_id: int | ColumnElement[int], currency: str | ColumnElement[str]
) -> ScalarSelect[int]:
    return (
        select(AccountBalance.balance_minor)
        .where(AccountBalance.account_id == account_id, AccountBalance.currency == currency)
        .scalar_subquery()
    )


def balance_expr(
    account_id: int | ColumnElement[int], currency: str | ColumnElement[str]
) -> ColumnElement[int]:
    """The current balance in minor units as a SQL expression (0 without any entries yet), for
    callers that read it in a query of their own (values, or bound parameters of a statement
    built once)."""
    return func.coalesce(_balance_row(account_id, currency), 0)


def balance(
    session: Session, account_id: int, currency: str, *, before: datetime | None = None
) -> Money:
    """What the account owes in this currency (positive) or has in credit (negative).

    Read from the balance row (one row, however long the history); the balance before a moment
    is the current one less the entries since (cheap for the recent periods people ask for).
    """
    now_statement, before_statement, *_ = _statements()
    if before is None:
        return Money(
            int(session.scalar(now_statement, _params(account_id, currency)) or 0), currency
        )
    params = {**_params(account_id, currency), "before": before}
    return Money(int(session.scalar(before_statement, params) or 0), currency)


def _params(account_id: int, currency: str) -> dict[str, object]:
    return {"account_id": account_id, "currency": currency}


@functools.cache
def _statements() -> tuple[Select[tuple[int]], Select[tuple[int]], Select[Any], Select[Any]]:
    """The balance now, the balance before a moment, and a period's opening balance with its
    entries (for [start, end), and for [start, end) or else [otherwise_start, otherwise_end)
    when the first has no entries), built once with bound parameters (building statements and
    their cache keys costs more than running these)."""
    account_id, currency = bindparam("account_id"), bindparam("currency")
    current = balance_expr(account_id, currency)
    moment = LedgerEntry.effective_at.type

    def since(start: Any) -> ScalarSelect[int]:
        return (
            select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0))
            .where(
                LedgerEntry.account_id == account_id,
                LedgerEntry.currency == currency,
                LedgerEntry.effective_at >= start,
            )
            .scalar_subquery()
        )

    def entries_in(start: Any, end: Any) -> Select[tuple[LedgerEntry]]:
        return select(LedgerEntry).where(
            LedgerEntry.account_id == account_id,
            LedgerEntry.currency == currency,
            LedgerEntry.effective_at >= start,
            LedgerEntry.effective_at < end,
        )

    # NOTE: the statement's opening balance and its entries in one statement (each is a round
    # trip on PostgreSQL): the period's entries outer-joined to the opening balance's one row
    # (a period without entries gives that row alone). `in_period` says whether the asked
    # period was read (always, unless the statement has an `otherwise` period).
    def with_entries(start: Any, end: Any, in_period: Any) -> Select[Any]:
        opening = select(
            (current - since(start)).label("opening_minor"), in_period.label("in_period")
        ).subquery("opening")
        period = entries_in(start, end).subquery("period")
        return (
            select(opening.c.opening_minor, opening.c.in_period, aliased(LedgerEntry, period))
            .select_from(opening)
            .outerjoin(period, true())
            .order_by(period.c.effective_at, period.c.id)
        )

    start, end = bindparam("start", type_=moment), bindparam("end", type_=moment)
    # NOTE: the default statement (this month, or last month while this month has no entries)
    # decides which period it reads inside its own statement: an uncorrelated EXISTS (one index
    # probe, evaluated once) picks the bounds, where asking first cost a round trip.
    has_entries = entries_in(start, end).exists()
    chosen_start = case((has_entries, start), else_=bindparam("otherwise_start", type_=moment))
    chosen_end = case((has_entries, end), else_=bindparam("otherwise_end", type_=moment))
    return (
        select(current),
        select(current - since(bindparam("before"))),
        with_entries(start, end, true()),
        with_entries(chosen_start, chosen_end, has_entries),
    )


@dataclass(frozen=True)
class StatementLine:
    entry: LedgerEntry
    running: Money


@dataclass(frozen=True)
class Statement:
    """Opening balance, entries in order with the running balance, closing balance, totals."""

    currency: str
    start: datetime
    end: datetime
    opening: Money
    lines: Sequence[StatementLine]
    totals: dict[str, Money] = field(default_factory=dict)

    @property
    def closing(self) -> Money:
        return self.lines[-1].running if self.lines else self.opening


def statement(
    session: Session,
    account_id: int,
    currency: str,
    start: datetime,
    end: datetime,
    *,
    otherwise: tuple[datetime, datetime] | None = None,
) -> Statement:
    """The statement for [start, end), or for `otherwise` when [start, end) has no entries:
    one query, whatever the account's history. The statement's start and end say which
    period was read."""
    periods = [(start, end)] if otherwise is None else [(start, end), otherwise]
    if any(until <= since for since, until in periods):
        raise ValueError("a statement period must end after it starts")
    params = {**_params(account_id, currency), "start": start, "end": end}
    query = _statements()[2]
    if otherwise is not None:
        params |= {"otherwise_start": otherwise[0], "otherwise_end": otherwise[1]}
        query = _statements()[3]
    found = session.execute(query, params).all()
    opening = Money(int(found[0][0] or 0), currency)
    if not found[0][1]:
        assert otherwise is not None
        start, end = otherwise
    running = opening
    lines = []
    totals = {kind.value: Money.zero(currency) for kind in LedgerKind}
    for _opening, _in_period, entry in found:
        if entry is None:
            continue
        amount = Money(entry.amount_minor, currency)
        running = running + amount
        totals[entry.kind] = totals[entry.kind] + Money(abs(entry.amount_minor), currency)
        lines.append(StatementLine(entry=entry, running=running))
    return Statement(currency, start, end, opening, lines, totals)
