"""core hardening (issue 8): the TOTP secret being enrolled waits on the server

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 21:45:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = ("totp_pending_secret", "totp_pending_at")


def upgrade():
    # NOTE: until a code proves the authenticator app has it, the new secret was kept in the
    # signed (readable) session cookie; now it waits in the user's row, never in the cookie.
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("totp_pending_secret", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("totp_pending_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade():
    if op.get_bind().dialect.name == "sqlite":
        # NOTE: batch mode would rebuild `users` and cascade-delete what hangs off it (see 0002).
        for column in _COLUMNS:
            op.execute(f"ALTER TABLE users DROP COLUMN {column}")
    else:
        with op.batch_alter_table("users", schema=None) as batch_op:
            for column in _COLUMNS:
                batch_op.drop_column(column)
