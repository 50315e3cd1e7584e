"""notifications (issue 12): outbox dead letters, cancel keys, stable Message-IDs and
attachments; reminders sent, card retries, email preferences, sync cursors, deep-link targets

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 00:45:00

"""

import secrets

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

OLD_STATUSES = "status IN ('pending', 'sent', 'failed')"
NEW_STATUSES = "status IN ('pending', 'failed', 'sent', 'dead', 'canceled')"


def upgrade():
    bind = op.get_bind()
    with op.batch_alter_table("outbox_emails", schema=None) as batch_op:
        batch_op.add_column(sa.Column("message_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("cancel_key", sa.String(length=120), nullable=True))
        batch_op.add_column(
            sa.Column("is_essential", sa.Boolean(), server_default=sa.text("true"), nullable=False)
        )
        batch_op.add_column(sa.Column("attachment_kind", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("attachment_ref", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_constraint(batch_op.f("ck_outbox_emails_status_valid"), type_="check")
        batch_op.create_check_constraint(batch_op.f("ck_outbox_emails_status_valid"), NEW_STATUSES)
    # NOTE: every row gets its own Message-ID now, kept for every later resend. A row kept as
    # "failed" before this revision had been given up: that is a dead letter now ("failed"
    # means a retry is due).
    for (row_id,) in bind.execute(sa.text("SELECT id FROM outbox_emails")).fetchall():
        bind.execute(
            sa.text("UPDATE outbox_emails SET message_id = :mid WHERE id = :id"),
            {"mid": f"<{secrets.token_hex(16)}@billing-portal.invalid>", "id": row_id},
        )
    bind.execute(
        sa.text(
            "UPDATE outbox_emails SET status = 'dead', ended_at = next_attempt_at "
            "WHERE status = 'failed'"
        )
    )
    with op.batch_alter_table("outbox_emails", schema=None) as batch_op:
        batch_op.alter_column("message_id", existing_type=sa.String(length=255), nullable=False)
        batch_op.create_unique_constraint(
            batch_op.f("uq_outbox_emails_message_id"), ["message_id"]
        )
        batch_op.create_check_constraint(
            batch_op.f("ck_outbox_emails_attachment_kind_valid"),
            "attachment_kind IS NULL OR attachment_kind IN ('invoice_pdf')",
        )
        batch_op.create_check_constraint(
            batch_op.f("ck_outbox_emails_attachment_complete"),
            "(attachment_kind IS NULL) = (attachment_ref IS NULL)",
        )
        batch_op.create_index(
            "ix_outbox_emails_cancel_key_status", ["cancel_key", "status"], unique=False
        )

    with op.batch_alter_table("login_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("target_kind", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("target_id", sa.BigInteger(), nullable=True))
        batch_op.create_check_constraint(
            batch_op.f("ck_login_tokens_target_complete"),
            "(target_kind IS NULL) = (target_id IS NULL)",
        )

    op.create_table(
        "payment_reminders",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("invoice_id", BigIntPK, nullable=False),
        sa.Column("step", sa.String(length=32), nullable=False),
        sa.Column("outbox_email_id", BigIntPK, nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["invoices.id"],
            name=op.f("fk_payment_reminders_invoice_id_invoices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["outbox_email_id"],
            ["outbox_emails.id"],
            name=op.f("fk_payment_reminders_outbox_email_id_outbox_emails"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_reminders")),
        sa.UniqueConstraint(
            "invoice_id", "step", name=op.f("uq_payment_reminders_invoice_id_step")
        ),
    )
    op.create_table(
        "payment_retries",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("invoice_id", BigIntPK, nullable=False),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt_id", BigIntPK, nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("attempt_no >= 1", name=op.f("ck_payment_retries_attempt_no_positive")),
        sa.CheckConstraint(
            "status IN ('scheduled', 'done', 'canceled')",
            name=op.f("ck_payment_retries_status_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["attempt_id"],
            ["payment_attempts.id"],
            name=op.f("fk_payment_retries_attempt_id_payment_attempts"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["invoices.id"],
            name=op.f("fk_payment_retries_invoice_id_invoices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_retries")),
        sa.UniqueConstraint(
            "invoice_id", "attempt_no", name=op.f("uq_payment_retries_invoice_id_attempt_no")
        ),
    )
    with op.batch_alter_table("payment_retries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_payment_retries_status_scheduled_for", ["status", "scheduled_for"], unique=False
        )
    op.create_table(
        "email_preferences",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("account_id", BigIntPK, nullable=False),
        sa.Column("extra_recipients", sa.Text(), nullable=False),
        sa.Column("opt_out_reminders", sa.Boolean(), nullable=False),
        sa.Column("opt_out_card_expiry", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_email_preferences_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_preferences")),
        sa.UniqueConstraint("account_id", name=op.f("uq_email_preferences_account_id")),
    )
    op.create_table(
        "sync_cursors",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_cursors")),
        sa.UniqueConstraint("name", name=op.f("uq_sync_cursors_name")),
    )


def downgrade():
    op.drop_table("sync_cursors")
    op.drop_table("email_preferences")
    with op.batch_alter_table("payment_retries", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_retries_status_scheduled_for")
    op.drop_table("payment_retries")
    op.drop_table("payment_reminders")

    with op.batch_alter_table("login_tokens", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_login_tokens_target_complete"), type_="check")
        batch_op.drop_column("target_id")
        batch_op.drop_column("target_kind")

    # NOTE: the old schema knew only pending, sent and failed (= given up): a dead letter and a
    # canceled row become "failed"; a row waiting for its retry is pending again.
    with op.batch_alter_table("outbox_emails", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_emails_cancel_key_status")
        batch_op.drop_constraint(batch_op.f("ck_outbox_emails_attachment_complete"), type_="check")
        batch_op.drop_constraint(
            batch_op.f("ck_outbox_emails_attachment_kind_valid"), type_="check"
        )
        batch_op.drop_constraint(batch_op.f("ck_outbox_emails_status_valid"), type_="check")
    op.execute("UPDATE outbox_emails SET status = 'pending' WHERE status = 'failed'")
    op.execute("UPDATE outbox_emails SET status = 'failed' WHERE status IN ('dead', 'canceled')")
    with op.batch_alter_table("outbox_emails", schema=None) as batch_op:
        batch_op.create_check_constraint(batch_op.f("ck_outbox_emails_status_valid"), OLD_STATUSES)
        batch_op.drop_constraint(batch_op.f("uq_outbox_emails_message_id"), type_="unique")
        batch_op.drop_column("ended_at")
        batch_op.drop_column("attachment_ref")
        batch_op.drop_column("attachment_kind")
        batch_op.drop_column("is_essential")
        batch_op.drop_column("cancel_key")
        batch_op.drop_column("message_id")
