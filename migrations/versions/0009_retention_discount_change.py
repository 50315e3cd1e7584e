"""subscription changes: a "discount" kind, so taking the retention offer is in the history

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 04:45:00

"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

OLD_KINDS = "kind IN ('plan', 'quantity', 'interval', 'pause', 'resume', 'cancel', 'reactivate')"
NEW_KINDS = (
    "kind IN ('plan', 'quantity', 'interval', 'pause', 'resume', 'cancel', 'reactivate', "
    "'discount')"
)


def upgrade():
    # NOTE: only the CHECK widens; on SQLite the batch recreates the table, on PostgreSQL it is
    # a drop and an add of the constraint.
    with op.batch_alter_table("subscription_changes", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_subscription_changes_kind_valid"), type_="check")
        batch_op.create_check_constraint(
            batch_op.f("ck_subscription_changes_kind_valid"), NEW_KINDS
        )


def downgrade():
    # NOTE: the old schema has no word for a retention discount taken: those history rows go
    # (the discount itself stays on the subscription, and the audit log keeps the event).
    with op.batch_alter_table("subscription_changes", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_subscription_changes_kind_valid"), type_="check")
    op.execute("DELETE FROM subscription_changes WHERE kind = 'discount'")
    with op.batch_alter_table("subscription_changes", schema=None) as batch_op:
        batch_op.create_check_constraint(
            batch_op.f("ck_subscription_changes_kind_valid"), OLD_KINDS
        )
