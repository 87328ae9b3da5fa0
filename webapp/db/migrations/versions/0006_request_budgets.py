"""Request budget counters (webapp/budgets.py): one row per scope and window length.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Frozen here, as in 0003: a migration must not change when the app's schema module does.
UtcDateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "request_counters",
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("window_seconds", sa.Integer, nullable=False),
        sa.Column("window_start", UtcDateTime, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("scope", "window_seconds", name="pk_request_counters"),
    )


def downgrade() -> None:
    op.drop_table("request_counters")
