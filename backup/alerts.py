"""A failed or unverifiable backup raises an alert: one row in the web app's outbox (the alerting mailer
drains it) plus an audit record, in one transaction. A successful create or send leaves an audit
record with the file's SHA-256, which anchors each backup in the audit chain: a forged file signed
with a stolen signing key still has a hash the chain never saw.

The row says which step failed and a short reason code; never a path to a key, never content.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from webapp.audit import service as audit
from webapp.clock import to_db
from webapp.db.tables import outbox
from webapp.keys.events import KeyEvent


def raise_alert(engine: sa.Engine, event: KeyEvent, *, step: str, reason: str, now: datetime) -> None:
    """Insert the alert (outbox) and its audit record; raises if the database refuses (the caller
    then exits non-zero, which the scheduler reports: the alert is never silently lost)."""
    detail = f"{step}:{reason}"[:200]
    with engine.begin() as conn:
        entry = audit.AuditEntry(
            event=event,
            outcome=audit.FAILURE,
            actor="backup",
            ip="local",
            resource="backup",
            detail=detail,
        )
        audit.append(conn, [entry], now=now)
        _enqueue(conn, event, now=now, detail=detail)


def record_success(engine: sa.Engine, event: KeyEvent, *, detail: str, now: datetime) -> None:
    with engine.begin() as conn:
        entry = audit.AuditEntry(
            event=event,
            outcome=audit.SUCCESS,
            actor="backup",
            ip="local",
            resource="backup",
            detail=detail[:200],
        )
        audit.append(conn, [entry], now=now)


def _enqueue(conn: sa.Connection, event: KeyEvent, *, now: datetime, detail: str) -> None:
    # The row webapp.outbox.OutboxSink writes. webapp.outbox.enqueue (another team's, not there yet
    # when this was written) should replace this function once it lands.
    conn.execute(
        sa.insert(outbox).values(
            created_at=to_db(now),
            event=str(event),
            actor="backup",
            ip="local",
            resource="backup",
            detail=detail,
            attempts=0,
            sent_at=None,
        )
    )
