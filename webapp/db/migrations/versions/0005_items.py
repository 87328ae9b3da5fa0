"""Items (bank accounts, identity documents, notes), card edits and retirement, step-up tokens.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Frozen here, as in 0003: a migration must not change when the app's schema module does.
UtcDateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("cards") as batch:
        batch.add_column(sa.Column("updated_at", UtcDateTime, nullable=True))
        batch.add_column(sa.Column("updated_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("retired_at", UtcDateTime, nullable=True))
        batch.add_column(sa.Column("retired_by", sa.String(64), nullable=True))
    op.create_table(
        "items",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("record_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("hint", sa.String(40), nullable=False),
        sa.Column("value_ct", sa.LargeBinary(8192 + 64), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=True),
        sa.Column("updated_by", sa.String(64), nullable=True),
        sa.Column("retired_at", UtcDateTime, nullable=True),
        sa.Column("retired_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_items"),
        sa.ForeignKeyConstraint(["record_id"], ["customer_records.id"], name="fk_items_record_id"),
        sa.CheckConstraint("kind IN ('bank', 'identity', 'note')", name="ck_items_kind"),
    )
    op.create_index("ix_items_record_id", "items", ["record_id"])
    op.create_table(
        "stepup_tokens",
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("target", sa.String(120), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("used_at", UtcDateTime, nullable=True),
        sa.PrimaryKeyConstraint("id_hash", name="pk_stepup_tokens"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_stepup_tokens_user_id"),
    )
    op.create_index("ix_stepup_tokens_user_id", "stepup_tokens", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_stepup_tokens_user_id", "stepup_tokens")
    op.drop_table("stepup_tokens")
    op.drop_index("ix_items_record_id", "items")
    op.drop_table("items")
    with op.batch_alter_table("cards") as batch:
        for name in ("retired_by", "retired_at", "updated_by", "updated_at"):
            batch.drop_column(name)
