"""portal/models.py lists every model, and the enums' values are what the database allows."""

from __future__ import annotations

import importlib
import pkgutil
import re
from enum import StrEnum

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

import portal
from portal import models
from portal.accounts.models import MemberRole, StaffRole
from portal.billing.models import CreditNoteReason, InvoiceStatus, LedgerKind, LineKind
from portal.db import Base


def _import_every_models_module() -> None:
    for info in pkgutil.walk_packages(portal.__path__, prefix="portal."):
        if info.name.endswith(".models"):
            importlib.import_module(info.name)


def test_portal_models_lists_every_model_and_every_table() -> None:
    _import_every_models_module()
    mapped = {mapper.class_ for mapper in Base.registry.mappers}
    listed = {getattr(models, name) for name in models.__all__} - {Base}
    assert mapped - listed == set(), "models missing from portal/models.py"
    assert {cls.__table__.name for cls in listed} == set(Base.metadata.tables)


# (table, column, enum, may be NULL): every CHECK built from an enum with portal.db.one_of.
ENUM_CHECKS = [
    ("invoices", "status", InvoiceStatus, False),
    ("invoice_lines", "kind", LineKind, False),
    ("credit_notes", "reason", CreditNoteReason, False),
    ("ledger_entries", "kind", LedgerKind, False),
    ("memberships", "role", MemberRole, False),
    ("users", "staff_role", StaffRole, True),
]


def _allowed_values(session: Session, table: str, column: str) -> set[str]:
    """The values the migrated database's CHECK constraint lists for a column."""
    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        ddl = session.scalar(
            sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"),
            {"t": table},
        )
        checks = [ddl]
    else:
        checks = list(
            session.scalars(
                sa.text(
                    "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c "
                    "JOIN pg_class t ON t.oid = c.conrelid "
                    "WHERE c.contype = 'c' AND t.relname = :t AND t.relnamespace = "
                    "(SELECT oid FROM pg_namespace WHERE nspname = current_schema())"
                ),
                {"t": table},
            )
        )
    found: set[str] = set()
    for check in checks:
        # "status IN ('a', 'b')" on SQLite; "status = ANY (ARRAY['a'::text, ...])" on PostgreSQL.
        for match in re.finditer(
            rf"\(?\b{column}\)?(?:::text)?\s+IN\s*\(([^)]*)\)|\(?\b{column}\)?(?:::text)?\s*="
            r"\s*ANY\s*\(\(?ARRAY\[([^\]]*)\]",
            check,
        ):
            found |= set(re.findall(r"'([^']*)'", match.group(1) or match.group(2)))
    return found


def test_every_enum_check_allows_exactly_the_enums_values(app: Flask, session: Session) -> None:
    for table, column, enum, _nullable in ENUM_CHECKS:
        assert issubclass(enum, StrEnum)
        assert _allowed_values(session, table, column) == {e.value for e in enum}, (
            f"{table}.{column}: the migrated CHECK and {enum.__name__} differ "
            "(a value was added to the enum without a migration, or the other way round)"
        )
