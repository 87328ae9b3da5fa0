"""The rewrap checkpoint, on the shared schema metadata (migration 0007)."""

from __future__ import annotations

import sqlalchemy as sa

from webapp.db.tables import UtcDateTime, metadata

# One row per encrypted table while a rewrap pass is under way: the last row id whose fields were
# rewrapped and committed, in the same transaction as those fields. Deleted when the pass completes.
key_rewrap_checkpoints = sa.Table(
    "key_rewrap_checkpoints",
    metadata,
    sa.Column("table_name", sa.String(64), primary_key=True, autoincrement=False),
    sa.Column("last_id", sa.String(64), nullable=True),
    sa.Column("done", sa.Boolean, nullable=False, default=False),
    sa.Column("target_version", sa.Integer, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)
