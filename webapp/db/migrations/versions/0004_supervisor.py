"""The supervisor role (may reveal secret fields).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

The CHECK constraint is replaced in batch mode: SQLite cannot alter a constraint in place, so
Alembic recreates the table there; MariaDB gets a plain DROP/ADD CONSTRAINT.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("ck_users_role", type_="check")
        batch.create_check_constraint("role", "role IN ('admin', 'auditor', 'clerk', 'supervisor')")


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("ck_users_role", type_="check")
        batch.create_check_constraint("role", "role IN ('admin', 'auditor', 'clerk')")
