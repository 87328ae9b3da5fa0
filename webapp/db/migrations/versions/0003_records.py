"""Customer records and cards (the first migration of the records tables).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UtcDateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "customer_records",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("crm_ref", sa.String(32), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("retired_at", UtcDateTime, nullable=True),
        sa.Column("retired_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_customer_records"),
    )
    op.create_index("ix_customer_records_crm_ref", "customer_records", ["crm_ref"])
    op.create_table(
        "cards",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("record_id", sa.Integer, nullable=False),
        sa.Column("brand", sa.String(16), nullable=False),
        sa.Column("last4", sa.String(4), nullable=False),
        sa.Column("pan_ct", sa.LargeBinary(128), nullable=False),
        sa.Column("name_ct", sa.LargeBinary(256), nullable=False),
        sa.Column("expiry_ct", sa.LargeBinary(64), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cards"),
        sa.ForeignKeyConstraint(["record_id"], ["customer_records.id"], name="fk_cards_record_id"),
    )
    op.create_index("ix_cards_record_id", "cards", ["record_id"])


def downgrade() -> None:
    op.drop_index("ix_cards_record_id", "cards")
    op.drop_table("cards")
    op.drop_index("ix_customer_records_crm_ref", "customer_records")
    op.drop_table("customer_records")
