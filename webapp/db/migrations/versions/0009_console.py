"""The web console (admin pages, self-service passwords): what a user's row and an outbox row must
say that they did not before.

- users.must_change_password: the password was set by an admin (a one-time password): the next login
  spends it and allows nothing but choosing a new one, so no admin ever knows a working password.
- users.last_login_at / last_login_ip: shown to admins next to each user.
- outbox.last_error: the class of the last delivery failure of a pending row (never its text: a
  mail server's reply may quote anything).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Frozen here, as in 0003: a migration must not change when the app's schema module does.
UtcDateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("must_change_password", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("last_login_at", UtcDateTime, nullable=True))
        batch.add_column(sa.Column("last_login_ip", sa.String(45), nullable=True))
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("last_error", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("last_error")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("last_login_ip")
        batch.drop_column("last_login_at")
        batch.drop_column("must_change_password")
