"""Migration 0006 moves the data it reshapes: price tax columns into tax rate rows, scheduled
columns into scheduled change rows, billed periods into billing_period_start; and back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from portal import create_app
from portal.extensions import db
from tests.conftest import drop_database, fresh_database, make_config

T0 = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # midnight in New York (EDT ends Nov 1)
T1 = datetime(2026, 12, 1, 5, 0, tzinfo=UTC)


def _ts(conn: sa.Connection, moment: datetime) -> object:
    return moment.replace(tzinfo=None) if conn.dialect.name == "sqlite" else moment


def _seed_0005(conn: sa.Connection) -> None:
    now = _ts(conn, T0)
    conn.execute(
        sa.text(
            "INSERT INTO accounts (id, public_id, name, billing_email, address_line1,"
            " address_line2, city, postal_code, region, country, tax_id, currency, locale,"
            " timezone, invoice_prefix, payment_terms_days, created_at, updated_at) VALUES"
            " (1, 'acc1', 'A', 'a@example.com', '', '', '', '', '', 'US', '', 'USD', 'en_US',"
            " 'America/New_York', 'MIG', 30, :now, :now)"
        ),
        {"now": now},
    )
    conn.execute(
        sa.text(
            "INSERT INTO plans (id, code, name, description, is_active, created_at) VALUES"
            " (1, 'team', 'Team', '', :yes, :now)"
        ),
        {"now": now, "yes": True},
    )
    for price_id, currency, bp, name in (
        (1, "USD", 0, ""),
        (2, "EUR", 1900, "VAT 19%"),
        (3, "GBP", 1900, "VAT 19%"),
    ):
        conn.execute(
            sa.text(
                "INSERT INTO prices (id, public_id, plan_id, currency, billing_interval,"
                " interval_count, pricing_model, unit_amount_minor, flat_amount_minor,"
                " unit_label, min_quantity, tax_rate_bp, tax_name, is_active) VALUES"
                " (:id, :pid, 1, :cur, 'month', 1, 'per_unit', 1500, 0, 'seat', 1, :bp, :name,"
                " :yes)"
            ),
            {
                "id": price_id,
                "pid": f"price{price_id}",
                "cur": currency,
                "bp": bp,
                "name": name,
                "yes": True,
            },
        )
    conn.execute(
        sa.text(
            "INSERT INTO subscriptions (id, public_id, account_id, price_id, quantity, status,"
            " collection_method, started_at, current_period_start, current_period_end,"
            " cancel_at_period_end, cancellation_reason, created_at, updated_at,"
            " scheduled_quantity) VALUES (1, 'sub1', 1, 1, 5, 'active', 'charge_automatically',"
            " :t0, :t0, :t1, :no, '', :t0, :t0, 3)"
        ),
        {"t0": now, "t1": _ts(conn, T1), "no": False},
    )
    conn.execute(
        sa.text(
            "INSERT INTO invoices (id, public_id, account_id, subscription_id, billing_key,"
            " status, currency, issue_date, subtotal_minor, discount_minor, tax_minor,"
            " total_minor, amount_paid_minor, amount_credited_minor, memo, created_at) VALUES"
            " (1, 'inv1', 1, 1, 'sub:1:2026-11-01', 'draft', 'USD', :day, 0, 0, 0, 0, 0, 0,"
            " '', :now)"
        ),
        {"day": T0.date(), "now": now},
    )


def test_0006_moves_tax_scheduled_changes_and_billed_periods_and_back(
    backend: str, tmp_path: Path
) -> None:
    url = fresh_database(backend, tmp_path, "mig0006")
    app = create_app(make_config(url))
    with app.app_context():
        try:
            upgrade(revision="0005")
            with db.engine.begin() as conn:
                _seed_0005(conn)
            upgrade(revision="0006")
            with db.engine.connect() as conn:
                rates = conn.execute(
                    sa.text("SELECT id, name, rate_bp, country, inclusive FROM tax_rates")
                ).fetchall()
                assert [(r.name, r.rate_bp, r.country, bool(r.inclusive)) for r in rates] == [
                    ("VAT 19%", 1900, "ALL", False)
                ]
                prices = dict(
                    conn.execute(sa.text("SELECT id, tax_rate_id FROM prices")).fetchall()
                )
                assert prices == {1: None, 2: rates[0].id, 3: rates[0].id}
                change = conn.execute(
                    sa.text(
                        "SELECT kind, status, timing, from_quantity, to_quantity, from_price_id,"
                        " to_price_id, effective_at FROM subscription_changes"
                    )
                ).one()
                assert change[:7] == ("quantity", "scheduled", "period_end", 5, 3, 1, 1)
                start = conn.execute(
                    sa.text("SELECT billing_period_start FROM invoices WHERE id = 1")
                ).scalar_one()
                if isinstance(start, str):
                    start = datetime.fromisoformat(start)
                assert start.replace(tzinfo=None) == T0.replace(tzinfo=None)
            downgrade(revision="0005")
            with db.engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT id, tax_rate_bp, tax_name FROM prices ORDER BY id")
                ).fetchall()
                assert [tuple(r) for r in rows] == [
                    (1, 0, ""),
                    (2, 1900, "VAT 19%"),
                    (3, 1900, "VAT 19%"),
                ]
                assert conn.execute(
                    sa.text("SELECT scheduled_price_id, scheduled_quantity FROM subscriptions")
                ).one() == (1, 3)
            upgrade()
        finally:
            db.engine.dispose()
    drop_database(url)
