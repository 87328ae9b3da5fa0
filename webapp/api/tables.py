"""The API's own table: what an Idempotency-Key already did (webapp/api/idempotency.py).

One row per (service account, key): keyed hashes of the key and of the request, and the response the
first call got (masked data only: the API never returns a card number). Rows are reused in place once
expired (no DELETE grant: db/grants.sql).
"""

from __future__ import annotations

import sqlalchemy as sa

from webapp.db.tables import UtcDateTime, metadata

api_idempotency = sa.Table(
    "api_idempotency",
    metadata,
    # HMAC-SHA256 (key derived from SECRET_KEY) of "<user id>:<Idempotency-Key>", lowercase hex.
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
    # HMAC-SHA256 of the route and the canonical JSON body: a card number is never hashed unkeyed.
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("response", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False, index=True),
)
