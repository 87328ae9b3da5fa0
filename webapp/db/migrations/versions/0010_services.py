"""Service identities and the JSON API (webapp/api/, docs/crm-api.md).

- users.role may be 'crm': a service account (no password; only its service certificate, only on
  /api/v1). The CHECK constraint is replaced in batch mode as in 0004 (SQLite recreates the table,
  MariaDB gets DROP/ADD CONSTRAINT).
- api_idempotency: what each Idempotency-Key of a service account already did, so that a retried POST
  returns the first response and never stores a card twice.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Frozen here, as in 0003: a migration must not change when the app's schema module does.
UtcDateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint(op.f("ck_users_role"), type_="check")
        batch.create_check_constraint("role", "role IN ('admin', 'auditor', 'clerk', 'supervisor', 'crm')")
    op.create_table(
        "api_idempotency",
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_api_idempotency_user_id"),
        sa.PrimaryKeyConstraint("key_hash", name="pk_api_idempotency"),
    )
    op.create_index("ix_api_idempotency_user_id", "api_idempotency", ["user_id"])
    op.create_index("ix_api_idempotency_expires_at", "api_idempotency", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_api_idempotency_expires_at", table_name="api_idempotency")
    op.drop_index("ix_api_idempotency_user_id", table_name="api_idempotency")
    op.drop_table("api_idempotency")
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint(op.f("ck_users_role"), type_="check")
        batch.create_check_constraint("role", "role IN ('admin', 'auditor', 'clerk', 'supervisor')")
