"""Outbox coalescing (webapp/outbox.py): a row counts the events of one name in a 10-minute window.

Existing rows are one event each (server default 1) and their last event is their first.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Frozen here, as in 0003: a migration must not change when the app's schema module does.
UtcDateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("n_events", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("last_at", UtcDateTime, nullable=True))
    # The coalescing lookup: this name's pending row of the current window.
    op.create_index("ix_outbox_event_pending", "outbox", ["event", "sent_at", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_event_pending", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("last_at")
        batch.drop_column("n_events")
