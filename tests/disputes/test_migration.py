"""0007 rebuilds tables that other rows refer to (on SQLite): nothing that refers to them is
lost, and the audit trail refuses UPDATE and DELETE in the database itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from portal import create_app
from portal.extensions import db
from tests.conftest import drop_database, fresh_database, make_config

ROWS = [
    "INSERT INTO accounts (id, public_id, name, billing_email, address_line1, address_line2,"
    " city, postal_code, region, country, tax_id, currency, locale, timezone, invoice_prefix,"
    " payment_terms_days, created_at, updated_at) VALUES (1, 'acc1', 'A', 'a@example.com', '',"
    " '', '', '', '', 'GB', '', 'GBP', 'en', 'UTC', 'A', 14, :now, :now)",
    "INSERT INTO invoices (id, public_id, account_id, status, currency, issue_date,"
    " subtotal_minor, discount_minor, tax_minor, total_minor, amount_paid_minor,"
    " amount_credited_minor, memo, created_at, number, series_key, sequence) VALUES (1, 'inv1',"
    " 1, 'open', 'GBP', '2026-11-01', 1000, 0, 0, 1000, 0, 0, '', :now, 'A-0001', 'a', 1)",
    "INSERT INTO invoice_lines (id, invoice_id, position, kind, description, quantity,"
    " unit_amount_minor, amount_minor, tax_rate_bp, tax_name, tax_minor) VALUES (1, 1, 1,"
    " 'one_off', 'Work', 1, 1000, 1000, 0, '', 0)",
    "INSERT INTO disputes (id, public_id, account_id, invoice_id, source, currency,"
    " amount_minor, reason, description, status, resolution_note, created_at, updated_at)"
    " VALUES (1, 'dis1', 1, 1, 'customer', 'GBP', 500, 'other', '', 'open', '', :now, :now)",
    "INSERT INTO dispute_lines (id, dispute_id, invoice_line_id, amount_minor) VALUES (1, 1, 1,"
    " 500)",
    "INSERT INTO dispute_messages (id, dispute_id, author_kind, body, is_internal, created_at)"
    " VALUES (1, 1, 'staff', 'note', true, :now)",
    "INSERT INTO attachments (id, public_id, dispute_id, message_id, filename, content_type,"
    " size_bytes, sha256, storage_key, created_at) VALUES (1, 'att1', 1, 1, 'a.pdf',"
    " 'application/pdf', 10, 'x', 'k1', :now)",
    "INSERT INTO audit_events (occurred_at, actor_kind, action, target_type, target_id)"
    " VALUES (:now, 'system', 'test.event', '', '')",
]


def test_upgrade_keeps_rows_and_guards_the_audit_trail(backend: str, tmp_path: Path) -> None:
    url = fresh_database(backend, tmp_path, "disputes_migration")
    app = create_app(make_config(url))
    with app.app_context():
        try:
            upgrade(revision="0005")
            with db.engine.begin() as conn:
                for sql in ROWS:
                    conn.execute(sa.text(sql), {"now": "2026-11-20 10:00:00"})
            upgrade(revision="0007")
            with db.engine.connect() as conn:
                count = {
                    table: conn.scalar(sa.text(f"SELECT count(*) FROM {table}"))
                    for table in ("invoice_lines", "dispute_lines", "dispute_messages")
                }
                assert count == {"invoice_lines": 1, "dispute_lines": 1, "dispute_messages": 1}
                line_open = conn.scalar(sa.text("SELECT is_open FROM dispute_lines"))
                visibility = conn.scalar(sa.text("SELECT visibility FROM attachments"))
                events = conn.scalar(sa.text("SELECT count(*) FROM dispute_events"))
            assert bool(line_open) is True
            # an internal note's file stays internal
            assert visibility == "internal"
            assert events == 1
            for statement in ("UPDATE audit_events SET action = 'x'", "DELETE FROM audit_events"):
                with pytest.raises(sa.exc.DatabaseError), db.engine.begin() as conn:
                    conn.execute(sa.text(statement))
            with db.engine.connect() as conn:
                assert conn.scalar(sa.text("SELECT action FROM audit_events")) == "test.event"
            downgrade(revision="0005")
            with db.engine.connect() as conn:
                assert conn.scalar(sa.text("SELECT count(*) FROM dispute_lines")) == 1
        finally:
            db.engine.dispose()
    drop_database(url)
