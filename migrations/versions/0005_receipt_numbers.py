"""readable receipt numbers (issue 9): gapless per year, given to every payment

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 21:50:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("receipt_number", sa.String(length=24), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_payments_receipt_number"), ["receipt_number"]
        )
    # NOTE: payments made before receipts had numbers get them now, in the order they were
    # received, from the same per-year series new payments take theirs from
    # (portal.payments.receipts), so the series stays gapless.
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT id, received_at FROM payments ORDER BY received_at, id")
    ).fetchall()
    counters: dict[int, int] = {}
    for payment_id, received_at in rows:
        year = received_at.year if hasattr(received_at, "year") else int(str(received_at)[:4])
        counters[year] = counters.get(year, 0) + 1
        bind.execute(
            sa.text("UPDATE payments SET receipt_number = :number WHERE id = :id"),
            {"number": f"RCT-{year}-{counters[year]:05d}", "id": payment_id},
        )
    for year, last in counters.items():
        bind.execute(
            sa.text("INSERT INTO number_series (key, next_value) VALUES (:key, :next)"),
            {"key": f"receipt-{year}", "next": last + 1},
        )


def downgrade():
    op.execute("DELETE FROM number_series WHERE key LIKE 'receipt-%'")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_payments_receipt_number"), type_="unique")
        batch_op.drop_column("receipt_number")
