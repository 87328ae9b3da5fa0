"""The whole schema in one explicit list: what the migrations build and autogenerate compares with.

Each feature keeps its tables beside its code (db/tables.py the shared ones, records/tables.py,
keys/tables.py, budgets.py), all on the one `metadata` of db/tables.py. This module names every one
of them, so importing it is all it takes to have the complete schema (the Alembic environment, the
tests), and no module is imported only for the side effect of adding its tables.
tests/webapp/db/test_db.py checks that every table defined in webapp/ is listed here.
"""

from __future__ import annotations

import sqlalchemy as sa

from webapp.api.tables import api_idempotency
from webapp.budgets import request_counters
from webapp.db.tables import (
    audit_head,
    audit_log,
    cert_bindings,
    metadata,
    outbox,
    password_history,
    sessions,
    users,
)
from webapp.keys.tables import key_rewrap_checkpoints
from webapp.records.tables import cards, customer_records, import_jobs, items, stepup_tokens

TABLES: tuple[sa.Table, ...] = (
    users,
    password_history,
    cert_bindings,
    sessions,
    audit_head,
    audit_log,
    outbox,
    customer_records,
    cards,
    items,
    stepup_tokens,
    request_counters,
    key_rewrap_checkpoints,
    import_jobs,
    api_idempotency,
)

__all__ = ["TABLES", "metadata"]
