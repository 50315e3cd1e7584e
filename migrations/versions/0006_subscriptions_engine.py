"""subscriptions and the billing engine (issue 10): tax rates, price versions, plan ladder,
subscription changes, one regular invoice per subscription period

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 00:50:00

"""

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
AWARE = sa.DateTime(timezone=True)

_OLD_PRICE_UNIQUE = "uq_prices_plan_id_currency_billing_interval_interval_count"
_NEW_PRICE_UNIQUE = "uq_prices_plan_currency_interval_version"
_ACTIVE_PRICE = "uq_prices_active_per_plan_currency_interval"
_ONE_SCHEDULED = "uq_subscription_changes_one_scheduled"
_PERIOD_UNIQUE = "uq_invoices_subscription_id_billing_period_start"


def _is_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _now() -> datetime:
    moment = datetime.now(UTC)
    return moment.replace(tzinfo=None) if _is_sqlite() else moment


def _stored(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None) if _is_sqlite() else moment


def upgrade():
    # NOTE: on SQLite the tables below are rebuilt by batch mode with foreign keys off (see
    # migrations/env.py), and checked again before the commit.
    bind = op.get_bind()

    op.create_table(
        "tax_rates",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("rate_bp", sa.Integer(), nullable=False),
        sa.Column("country", sa.String(length=3), nullable=False),
        sa.Column("inclusive", sa.Boolean(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", AWARE, nullable=False),
        sa.CheckConstraint(
            "rate_bp >= 0 AND rate_bp <= 10000", name=op.f("ck_tax_rates_rate_valid")
        ),
        sa.CheckConstraint(
            "country = 'ALL' OR (length(country) = 2 AND upper(country) = country)",
            name=op.f("ck_tax_rates_country_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tax_rates")),
    )

    # -- plans: the ladder, trials, cancel/pause rules, retention offer, tax -----------------
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rank", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("trial_days", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("allows_cancel_now", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("allows_pause", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("max_pause_days", sa.Integer(), nullable=False, server_default="90")
        )
        batch_op.add_column(
            sa.Column("retention_discount_bp", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column(
                "retention_discount_periods", sa.Integer(), nullable=False, server_default="0"
            )
        )
        batch_op.add_column(sa.Column("tax_rate_id", BIGINT_PK, nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_plans_tax_rate_id_tax_rates"),
            "tax_rates",
            ["tax_rate_id"],
            ["id"],
            ondelete="RESTRICT",
        )
        batch_op.create_check_constraint(
            batch_op.f("ck_plans_trial_days_non_negative"), "trial_days >= 0"
        )
        batch_op.create_check_constraint(
            batch_op.f("ck_plans_max_pause_days_non_negative"), "max_pause_days >= 0"
        )
        batch_op.create_check_constraint(
            batch_op.f("ck_plans_retention_discount_valid"),
            "retention_discount_bp >= 0 AND retention_discount_bp <= 10000",
        )
        batch_op.create_check_constraint(
            batch_op.f("ck_plans_retention_discount_periods_non_negative"),
            "retention_discount_periods >= 0",
        )

    op.create_table(
        "plan_transitions",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("from_plan_id", BIGINT_PK, nullable=False),
        sa.Column("to_plan_id", BIGINT_PK, nullable=False),
        sa.CheckConstraint(
            "from_plan_id != to_plan_id", name=op.f("ck_plan_transitions_not_to_itself")
        ),
        sa.ForeignKeyConstraint(
            ["from_plan_id"],
            ["plans.id"],
            name=op.f("fk_plan_transitions_from_plan_id_plans"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["to_plan_id"],
            ["plans.id"],
            name=op.f("fk_plan_transitions_to_plan_id_plans"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_transitions")),
        sa.UniqueConstraint(
            "from_plan_id", "to_plan_id", name=op.f("uq_plan_transitions_from_plan_id_to_plan_id")
        ),
    )

    # -- prices: versions and a tax rate row instead of tax columns --------------------------
    with op.batch_alter_table("prices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("tax_rate_id", BIGINT_PK, nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_prices_tax_rate_id_tax_rates"),
            "tax_rates",
            ["tax_rate_id"],
            ["id"],
            ondelete="RESTRICT",
        )
    # NOTE: every distinct (rate, name) the prices carried becomes one tax rate row (exclusive,
    # every country: what the columns meant), and each price points at its row.
    pairs = bind.execute(
        sa.text(
            "SELECT DISTINCT tax_rate_bp, tax_name FROM prices"
            " WHERE tax_rate_bp != 0 OR tax_name != '' ORDER BY tax_rate_bp, tax_name"
        )
    ).fetchall()
    tax_rates = sa.table(
        "tax_rates",
        sa.column("id", BIGINT_PK),
        sa.column("name", sa.String),
        sa.column("rate_bp", sa.Integer),
        sa.column("country", sa.String),
        sa.column("inclusive", sa.Boolean),
        sa.column("is_active", sa.Boolean),
        sa.column("created_at", AWARE),
    )
    for rate_bp, name in pairs:
        label = name or f"Tax {rate_bp / 100:g}%"  # money-safe: a label
        bind.execute(
            tax_rates.insert().values(
                name=label[:64],
                rate_bp=rate_bp,
                country="ALL",
                inclusive=False,
                is_active=True,
                created_at=_now(),
            )
        )
        new_id = bind.execute(
            sa.text("SELECT max(id) FROM tax_rates WHERE name = :name AND rate_bp = :rate"),
            {"name": label[:64], "rate": rate_bp},
        ).scalar_one()
        bind.execute(
            sa.text(
                "UPDATE prices SET tax_rate_id = :id WHERE tax_rate_bp = :rate AND tax_name = :name"
            ),
            {"id": new_id, "rate": rate_bp, "name": name},
        )
    with op.batch_alter_table("prices", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f(_OLD_PRICE_UNIQUE), type_="unique")
        batch_op.drop_column("tax_rate_bp")
        batch_op.drop_column("tax_name")
        batch_op.create_unique_constraint(
            batch_op.f(_NEW_PRICE_UNIQUE),
            ["plan_id", "currency", "billing_interval", "interval_count", "version"],
        )
        batch_op.create_check_constraint(batch_op.f("ck_prices_version_positive"), "version >= 1")
        batch_op.create_index(
            _ACTIVE_PRICE,
            ["plan_id", "currency", "billing_interval", "interval_count"],
            unique=True,
            sqlite_where=sa.text("is_active"),
            postgresql_where=sa.text("is_active"),
        )

    # -- subscriptions: version (stale forms), discount --------------------------------------
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(
            sa.Column("discount_bp", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("discount_periods_left", sa.Integer(), nullable=False, server_default="0")
        )

    op.create_table(
        "subscription_changes",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("public_id", sa.String(length=24), nullable=False),
        sa.Column("subscription_id", BIGINT_PK, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("timing", sa.String(length=16), nullable=False),
        sa.Column("actor_kind", sa.String(length=16), nullable=False),
        sa.Column("actor_user_id", BIGINT_PK, nullable=True),
        sa.Column("requested_at", AWARE, nullable=False),
        sa.Column("effective_at", AWARE, nullable=False),
        sa.Column("applied_at", AWARE, nullable=True),
        sa.Column("withdrawn_at", AWARE, nullable=True),
        sa.Column("from_price_id", BIGINT_PK, nullable=True),
        sa.Column("to_price_id", BIGINT_PK, nullable=True),
        sa.Column("from_quantity", sa.Integer(), nullable=True),
        sa.Column("to_quantity", sa.Integer(), nullable=True),
        sa.Column("resume_at", AWARE, nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("reason_text", sa.String(length=500), nullable=False),
        sa.Column("invoice_id", BIGINT_PK, nullable=True),
        sa.CheckConstraint(
            "kind IN ('plan', 'quantity', 'interval', 'pause', 'resume', 'cancel', 'reactivate')",
            name=op.f("ck_subscription_changes_kind_valid"),
        ),
        sa.CheckConstraint(
            "status IN ('scheduled', 'applied', 'withdrawn')",
            name=op.f("ck_subscription_changes_status_valid"),
        ),
        sa.CheckConstraint(
            "timing IN ('now', 'period_end')", name=op.f("ck_subscription_changes_timing_valid")
        ),
        sa.CheckConstraint(
            "actor_kind IN ('customer', 'staff', 'stripe', 'system')",
            name=op.f("ck_subscription_changes_actor_kind_valid"),
        ),
        sa.CheckConstraint(
            "from_quantity IS NULL OR from_quantity >= 0",
            name=op.f("ck_subscription_changes_from_quantity_valid"),
        ),
        sa.CheckConstraint(
            "to_quantity IS NULL OR to_quantity >= 0",
            name=op.f("ck_subscription_changes_to_quantity_valid"),
        ),
        sa.CheckConstraint(
            "(status = 'applied') = (applied_at IS NOT NULL)",
            name=op.f("ck_subscription_changes_applied_iff_at"),
        ),
        sa.CheckConstraint(
            "(status = 'withdrawn') = (withdrawn_at IS NOT NULL)",
            name=op.f("ck_subscription_changes_withdrawn_iff_at"),
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_subscription_changes_subscription_id_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["actor_user_id"],
            ["users.id"],
            name=op.f("fk_subscription_changes_actor_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["from_price_id"],
            ["prices.id"],
            name=op.f("fk_subscription_changes_from_price_id_prices"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["to_price_id"],
            ["prices.id"],
            name=op.f("fk_subscription_changes_to_price_id_prices"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["invoices.id"],
            name=op.f("fk_subscription_changes_invoice_id_invoices"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_changes")),
        sa.UniqueConstraint("public_id", name=op.f("uq_subscription_changes_public_id")),
    )
    with op.batch_alter_table("subscription_changes", schema=None) as batch_op:
        batch_op.create_index(
            _ONE_SCHEDULED,
            ["subscription_id"],
            unique=True,
            sqlite_where=sa.text("status = 'scheduled'"),
            postgresql_where=sa.text("status = 'scheduled'"),
        )
        batch_op.create_index(
            "ix_subscription_changes_status_effective_at", ["status", "effective_at"]
        )
        batch_op.create_index("ix_subscription_changes_subscription_id", ["subscription_id"])

    # NOTE: a change scheduled in the old columns becomes a scheduled change row, effective at
    # the end of the current period (the only moment the columns could mean).
    changes = sa.table(
        "subscription_changes",
        sa.column("public_id", sa.String),
        sa.column("subscription_id", BIGINT_PK),
        sa.column("kind", sa.String),
        sa.column("status", sa.String),
        sa.column("timing", sa.String),
        sa.column("actor_kind", sa.String),
        sa.column("requested_at", AWARE),
        sa.column("effective_at", AWARE),
        sa.column("from_price_id", BIGINT_PK),
        sa.column("to_price_id", BIGINT_PK),
        sa.column("from_quantity", sa.Integer),
        sa.column("to_quantity", sa.Integer),
        sa.column("reason", sa.String),
        sa.column("reason_text", sa.String),
    )
    scheduled = bind.execute(
        sa.text(
            "SELECT id, price_id, quantity, scheduled_price_id, scheduled_quantity,"
            " current_period_end FROM subscriptions"
            " WHERE scheduled_price_id IS NOT NULL OR scheduled_quantity IS NOT NULL"
        )
    ).fetchall()
    import secrets

    for sub_id, price_id, quantity, to_price, to_quantity, period_end in scheduled:
        new_price = to_price if to_price is not None else price_id
        new_quantity = to_quantity if to_quantity is not None else quantity
        bind.execute(
            changes.insert().values(
                public_id=secrets.token_urlsafe(12),
                subscription_id=sub_id,
                kind="plan" if new_price != price_id else "quantity",
                status="scheduled",
                timing="period_end",
                actor_kind="system",
                requested_at=_now(),
                effective_at=_stored(period_end),
                from_price_id=price_id,
                to_price_id=new_price,
                from_quantity=quantity,
                to_quantity=new_quantity,
                reason="",
                reason_text="",
            )
        )
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_subscriptions_scheduled_price_id_prices"), type_="foreignkey"
        )
        batch_op.drop_constraint(
            batch_op.f("ck_subscriptions_scheduled_quantity_non_negative"), type_="check"
        )
        batch_op.drop_column("scheduled_price_id")
        batch_op.drop_column("scheduled_quantity")
        batch_op.create_check_constraint(
            batch_op.f("ck_subscriptions_version_positive"), "version >= 1"
        )
        batch_op.create_check_constraint(
            batch_op.f("ck_subscriptions_discount_valid"),
            "discount_bp >= 0 AND discount_bp <= 10000",
        )
        batch_op.create_check_constraint(
            batch_op.f("ck_subscriptions_discount_periods_non_negative"),
            "discount_periods_left >= 0",
        )

    # -- invoices: one regular invoice per subscription period -------------------------------
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("billing_period_start", AWARE, nullable=True))
    # NOTE: the periods already billed (billing_key "sub:<id>:<date>", issued on the day the
    # period starts) get their start: local midnight of the issue date in the account's zone.
    billed = bind.execute(
        sa.text(
            "SELECT i.id, i.issue_date, a.timezone FROM invoices i"
            " JOIN accounts a ON a.id = i.account_id"
            " WHERE i.subscription_id IS NOT NULL AND i.billing_key LIKE 'sub:%'"
        )
    ).fetchall()
    invoices = sa.table(
        "invoices", sa.column("id", BIGINT_PK), sa.column("billing_period_start", AWARE)
    )
    for invoice_id, issue_date, tz in billed:
        day = issue_date if isinstance(issue_date, date) else date.fromisoformat(str(issue_date))
        try:
            zone = ZoneInfo(tz or "UTC")
        except (KeyError, ValueError):
            zone = ZoneInfo("UTC")
        start = datetime.combine(day, time(0), zone)
        bind.execute(
            invoices.update()
            .where(invoices.c.id == invoice_id)
            .values(billing_period_start=_stored(start))
        )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            batch_op.f(_PERIOD_UNIQUE), ["subscription_id", "billing_period_start"]
        )

    # -- invoice lines: the tax rate frozen onto them, and the change that made them ---------
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tax_rate_id", BIGINT_PK, nullable=True))
        batch_op.add_column(
            sa.Column("tax_inclusive", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("subscription_change_id", BIGINT_PK, nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_invoice_lines_tax_rate_id_tax_rates"),
            "tax_rates",
            ["tax_rate_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_invoice_lines_subscription_change_id_subscription_changes"),
            "subscription_changes",
            ["subscription_change_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade():
    bind = op.get_bind()
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_invoice_lines_subscription_change_id_subscription_changes"),
            type_="foreignkey",
        )
        batch_op.drop_constraint(
            batch_op.f("fk_invoice_lines_tax_rate_id_tax_rates"), type_="foreignkey"
        )
        batch_op.drop_column("subscription_change_id")
        batch_op.drop_column("tax_inclusive")
        batch_op.drop_column("tax_rate_id")

    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f(_PERIOD_UNIQUE), type_="unique")
        batch_op.drop_column("billing_period_start")

    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("ck_subscriptions_discount_periods_non_negative"), type_="check"
        )
        batch_op.drop_constraint(batch_op.f("ck_subscriptions_discount_valid"), type_="check")
        batch_op.drop_constraint(batch_op.f("ck_subscriptions_version_positive"), type_="check")
        batch_op.add_column(sa.Column("scheduled_price_id", BIGINT_PK, nullable=True))
        batch_op.add_column(sa.Column("scheduled_quantity", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_subscriptions_scheduled_price_id_prices"),
            "prices",
            ["scheduled_price_id"],
            ["id"],
            ondelete="RESTRICT",
        )
        batch_op.create_check_constraint(
            batch_op.f("ck_subscriptions_scheduled_quantity_non_negative"),
            "scheduled_quantity IS NULL OR scheduled_quantity >= 0",
        )
    # NOTE: what the old columns can hold of the changes: a scheduled plan or seat change.
    rows = bind.execute(
        sa.text(
            "SELECT subscription_id, to_price_id, to_quantity FROM subscription_changes"
            " WHERE status = 'scheduled' AND kind IN ('plan', 'quantity', 'interval')"
        )
    ).fetchall()
    for sub_id, to_price, to_quantity in rows:
        bind.execute(
            sa.text(
                "UPDATE subscriptions SET scheduled_price_id = :price,"
                " scheduled_quantity = :quantity WHERE id = :id"
            ),
            {"price": to_price, "quantity": to_quantity, "id": sub_id},
        )
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_column("discount_periods_left")
        batch_op.drop_column("discount_bp")
        batch_op.drop_column("version")

    with op.batch_alter_table("subscription_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_subscription_changes_subscription_id")
        batch_op.drop_index("ix_subscription_changes_status_effective_at")
        batch_op.drop_index(
            _ONE_SCHEDULED,
            sqlite_where=sa.text("status = 'scheduled'"),
            postgresql_where=sa.text("status = 'scheduled'"),
        )
    op.drop_table("subscription_changes")

    with op.batch_alter_table("prices", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tax_rate_bp", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("tax_name", sa.String(length=32), nullable=False, server_default="")
        )
    bind.execute(
        sa.text(
            "UPDATE prices SET tax_rate_bp = (SELECT t.rate_bp FROM tax_rates t"
            " WHERE t.id = prices.tax_rate_id), tax_name = (SELECT substr(t.name, 1, 32)"
            " FROM tax_rates t WHERE t.id = prices.tax_rate_id) WHERE tax_rate_id IS NOT NULL"
        )
    )
    # NOTE: the old schema allows one price per plan, currency and interval: the older versions
    # go (a price still used by a subscription or a change blocks the downgrade, on purpose).
    bind.execute(
        sa.text(
            "DELETE FROM prices WHERE version > 1 AND NOT is_active AND id NOT IN"
            " (SELECT price_id FROM subscriptions)"
        )
    )
    with op.batch_alter_table("prices", schema=None) as batch_op:
        batch_op.drop_index(
            _ACTIVE_PRICE, sqlite_where=sa.text("is_active"), postgresql_where=sa.text("is_active")
        )
        batch_op.drop_constraint(batch_op.f("ck_prices_version_positive"), type_="check")
        batch_op.drop_constraint(batch_op.f(_NEW_PRICE_UNIQUE), type_="unique")
        batch_op.drop_constraint(batch_op.f("fk_prices_tax_rate_id_tax_rates"), type_="foreignkey")
        batch_op.drop_column("tax_rate_id")
        batch_op.drop_column("version")
        batch_op.create_unique_constraint(
            batch_op.f(_OLD_PRICE_UNIQUE),
            ["plan_id", "currency", "billing_interval", "interval_count"],
        )

    op.drop_table("plan_transitions")
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("ck_plans_retention_discount_periods_non_negative"), type_="check"
        )
        batch_op.drop_constraint(batch_op.f("ck_plans_retention_discount_valid"), type_="check")
        batch_op.drop_constraint(batch_op.f("ck_plans_max_pause_days_non_negative"), type_="check")
        batch_op.drop_constraint(batch_op.f("ck_plans_trial_days_non_negative"), type_="check")
        batch_op.drop_constraint(batch_op.f("fk_plans_tax_rate_id_tax_rates"), type_="foreignkey")
        for column in (
            "tax_rate_id",
            "retention_discount_periods",
            "retention_discount_bp",
            "max_pause_days",
            "allows_pause",
            "allows_cancel_now",
            "trial_days",
            "rank",
        ):
            batch_op.drop_column(column)
    op.drop_table("tax_rates")
