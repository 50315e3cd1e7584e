"""account balances (the ledger's sum per account and currency) and aging indexes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 21:20:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "account_balances",
        sa.Column("account_id", BIGINT_PK, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("balance_minor", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "length(currency) = 3 AND upper(currency) = currency",
            name=op.f("ck_account_balances_currency_iso"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_account_balances_account_id_accounts"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("account_id", "currency", name=op.f("pk_account_balances")),
    )
    # NOTE: the balances of a database that already has a ledger: its sums, once.
    op.execute(
        "INSERT INTO account_balances (account_id, currency, balance_minor)"
        " SELECT account_id, currency, sum(amount_minor) FROM ledger_entries"
        " GROUP BY account_id, currency"
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index("ix_invoices_account_id_paid_at", ["account_id", "paid_at"])
        batch_op.create_index("ix_invoices_account_id_voided_at", ["account_id", "voided_at"])


def downgrade():
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index("ix_invoices_account_id_voided_at")
        batch_op.drop_index("ix_invoices_account_id_paid_at")
    op.drop_table("account_balances")
