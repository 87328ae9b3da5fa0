"""The rewrap checkpoint table (key rotation, webapp/keys).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Frozen here, as in 0003: a migration must not change when the app's schema module does.
UtcDateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "key_rewrap_checkpoints",
        sa.Column("table_name", sa.String(64), nullable=False),
        sa.Column("last_id", sa.String(64), nullable=True),
        sa.Column("done", sa.Boolean, nullable=False),
        sa.Column("target_version", sa.Integer, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("table_name", name="pk_key_rewrap_checkpoints"),
    )


def downgrade() -> None:
    op.drop_table("key_rewrap_checkpoints")
