"""A failed or unverifiable backup raises an alert: one row in the web app's outbox (the alerting mailer
drains it) plus an audit record, in one transaction. A successful create or send leaves an audit
record with the file's SHA-256, which anchors each backup in the audit chain: a forged file signed
with a stolen signing key still has a hash the chain never saw.

The row says which step failed and a short reason code; never a path to a key, never content.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from webapp import outbox
from webapp.audit import service as audit
from webapp.events import Event


def raise_alert(engine: sa.Engine, event: Event, *, step: str, reason: str, now: datetime) -> None:
    """Insert the alert (outbox) and its audit record; raises if the database refuses (the caller
    then exits non-zero, which the scheduler reports: the alert is never silently lost)."""
    detail = f"{step}:{reason}"[:200]
    with engine.begin() as conn:
        _audit(conn, event, ok=False, detail=detail, now=now)
        outbox.enqueue(
            conn, str(event), now=now, actor="backup", ip="local", resource="backup", detail=detail
        )


def record_success(engine: sa.Engine, event: Event, *, detail: str, now: datetime) -> None:
    with engine.begin() as conn:
        _audit(conn, event, ok=True, detail=detail, now=now)


def _audit(conn: sa.Connection, event: Event, *, ok: bool, detail: str, now: datetime) -> None:
    entry = audit.AuditEntry(
        event=event,
        outcome=audit.SUCCESS if ok else audit.FAILURE,
        actor="backup",
        ip="local",
        resource="backup",
        detail=detail,
    )
    audit.append(conn, [entry], now=now)
