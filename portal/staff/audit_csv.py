"""The audit log as CSV: every event the filters select (not one page), streamed in chunks,
each cell safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC
from typing import Any

from sqlalchemy.orm import Session

from portal.audit.models import AuditEvent
from portal.billing.statements import neutralise_cell
from portal.errors import N_
from portal.staff import queries

HEADER = (
    N_("Time (UTC)"),
    N_("Actor"),
    N_("Role"),
    N_("Account"),
    N_("Account name"),
    N_("Action"),
    N_("Object"),
    N_("Before"),
    N_("After"),
    N_("IP address"),
)
# Rows fetched and written per chunk: a few hundred keeps memory flat on a million events.
CHUNK = 500


def _json(value: dict[str, Any] | None) -> str:
    if value is None:
        return ""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _row(event: AuditEvent, users: dict[int, Any], accounts: dict[int, Any]) -> list[str]:
    who = users.get(event.actor_user_id) if event.actor_user_id else None
    account = accounts.get(event.account_id) if event.account_id else None
    # NOTE: the role is the person's staff role as it stands now (support or admin); the
    # actor's kind at the time of the event (customer, staff, stripe, system) otherwise.
    role = (who.staff_role if who is not None and event.actor_kind == "staff" else None) or (
        event.actor_kind
    )
    return [
        event.occurred_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        who.email if who is not None else event.actor_kind,
        role,
        account.public_id if account is not None else "",
        account.name if account is not None else "",
        event.action,
        " ".join(part for part in (event.target_type, event.target_id) if part),
        _json(event.before),
        _json(event.after),
        event.ip or "",
    ]


def audit_csv(
    session: Session, filters: queries.AuditFilters, translate: Callable[[str], str] = N_
) -> Iterator[bytes]:
    """UTF-8 (with a byte order mark, so spreadsheets read it as UTF-8) CSV chunks, newest
    event first; text cells that a spreadsheet would run as a formula are neutralised."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([translate(name) for name in HEADER])
    first = True
    statement = queries.audit_events(filters).execution_options(yield_per=CHUNK)
    for partition in session.scalars(statement).partitions():
        users = queries.users_by_id(
            session, {e.actor_user_id for e in partition if e.actor_user_id}
        )
        accounts = queries.accounts_by_id(
            session, {e.account_id for e in partition if e.account_id}
        )
        for event in partition:
            writer.writerow([neutralise_cell(cell) for cell in _row(event, users, accounts)])
        yield from _drain(out, first)
        first = False
    if first:
        yield from _drain(out, first)


def _drain(out: io.StringIO, first: bool) -> Iterator[bytes]:
    text = out.getvalue()
    out.seek(0)
    out.truncate()
    yield text.encode("utf-8-sig" if first else "utf-8")
