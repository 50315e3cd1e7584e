"""user sessions (one row per signed-in browser) and the last accepted TOTP step

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 20:30:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "user_sessions",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("public_id", sa.String(length=24), nullable=False),
        sa.Column("user_id", BIGINT_PK, nullable=False),
        sa.Column("sid_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column("device", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
        sa.UniqueConstraint("public_id", name=op.f("uq_user_sessions_public_id")),
        sa.UniqueConstraint("sid_hash", name=op.f("uq_user_sessions_sid_hash")),
    )
    with op.batch_alter_table("user_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_user_sessions_user_id_ended_at", ["user_id", "ended_at"])
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("totp_last_step", sa.Integer(), nullable=True))


def downgrade():
    if op.get_bind().dialect.name == "sqlite":
        # NOTE: batch mode would rebuild `users` (copy, DROP, rename), and with foreign keys on,
        # dropping it deletes every membership, token and code that cascades from it. SQLite
        # (3.35+) drops a plain column in place.
        op.execute("ALTER TABLE users DROP COLUMN totp_last_step")
    else:
        with op.batch_alter_table("users", schema=None) as batch_op:
            batch_op.drop_column("totp_last_step")
    with op.batch_alter_table("user_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_user_sessions_user_id_ended_at")
    op.drop_table("user_sessions")
