"""The records tables, on the shared schema metadata (webapp.db.tables.metadata).

A card row holds ciphertexts (keyd, bound to the card's id and the field name) plus brand and last
four digits in clear. Nothing else about a card is stored: never a CVV, never a PAN in clear.
An item row (bank account, identity document, note) holds one ciphertext and a short masked hint.
"""

from __future__ import annotations

import sqlalchemy as sa

from webapp.db.tables import UtcDateTime, metadata

customer_records = sa.Table(
    "customer_records",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("crm_ref", sa.String(32), nullable=False, index=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    # Retired records stay (evidence, and their cards' ciphertexts) but are read-only.
    sa.Column("retired_at", UtcDateTime, nullable=True),
    sa.Column("retired_by", sa.String(64), nullable=True),
)

cards = sa.Table(
    "cards",
    metadata,
    # Random, generated before encryption: keyd binds every ciphertext to it, so it must never change.
    sa.Column("id", sa.String(32), primary_key=True, autoincrement=False),
    sa.Column("record_id", sa.Integer, sa.ForeignKey("customer_records.id"), nullable=False, index=True),
    sa.Column("brand", sa.String(16), nullable=False),
    sa.Column("last4", sa.String(4), nullable=False),
    sa.Column("pan_ct", sa.LargeBinary(128), nullable=False),
    sa.Column("name_ct", sa.LargeBinary(256), nullable=False),
    sa.Column("expiry_ct", sa.LargeBinary(64), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    # Edits re-encrypt cardholder and expiry in place (same id, same context); retired cards are kept.
    sa.Column("updated_at", UtcDateTime, nullable=True),
    sa.Column("updated_by", sa.String(64), nullable=True),
    sa.Column("retired_at", UtcDateTime, nullable=True),
    sa.Column("retired_by", sa.String(64), nullable=True),
)

ITEM_KINDS = ("bank", "identity", "note")
# Notes are the longest item: 2000 characters of at most 4 UTF-8 bytes, plus keyd's 33 bytes.
ITEM_CT_MAX = 8192 + 64

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True, autoincrement=False),  # random, as for cards
    sa.Column("record_id", sa.Integer, sa.ForeignKey("customer_records.id"), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    # What list pages show: never the value (e.g. "DE •••• 3000", "passport •••• 89", "note, 42 chars").
    sa.Column("hint", sa.String(40), nullable=False),
    sa.Column("value_ct", sa.LargeBinary(ITEM_CT_MAX), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=True),
    sa.Column("updated_by", sa.String(64), nullable=True),
    sa.Column("retired_at", UtcDateTime, nullable=True),
    sa.Column("retired_by", sa.String(64), nullable=True),
    sa.CheckConstraint("kind IN ('bank', 'identity', 'note')", name="kind"),
)

# One-time step-up tokens for reveals: issued with the reveal form, consumed by a single conditional
# UPDATE (used_at IS NULL), so two workers racing with one token cannot both win. Only the token's
# SHA-256 is stored.
stepup_tokens = sa.Table(
    "stepup_tokens",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("target", sa.String(120), nullable=False),  # e.g. card:<id>:pan
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("used_at", UtcDateTime, nullable=True),
)


# Every column that holds a keyd ciphertext, with the field name keyd binds it to (the row's id is the
# other half of the context). Rewrap, backup verification and key-version counts walk this registry:
# a new encrypted column that is not listed here would be missed by all three.
ENCRYPTED_COLUMNS: dict[sa.Table, dict[str, sa.Column[bytes]]] = {
    cards: {"pan": cards.c.pan_ct, "cardholder": cards.c.name_ct, "expiry": cards.c.expiry_ct},
    items: {"value": items.c.value_ct},
}

# Bulk imports (webapp/records/bulk.py, migration 0011): one row per (file, actor). `last_line` is the
# checkpoint, the last line of the file whose batch is committed; it moves in the same transaction as
# that batch's cards and audit record, so a re-run after a crash resumes after it and stores no card
# twice. `finished_at` set: the file was imported completely and a re-run does nothing.
import_jobs = sa.Table(
    "import_jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("file_sha256", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("format", sa.String(8), nullable=False),
    sa.Column("last_line", sa.Integer, nullable=False, default=0),
    sa.Column("accepted", sa.Integer, nullable=False, default=0),
    sa.Column("refused", sa.Integer, nullable=False, default=0),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.UniqueConstraint("file_sha256", "actor"),  # uq_import_jobs_file_sha256
)
