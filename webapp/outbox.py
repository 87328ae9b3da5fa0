"""The durable event outbox: alert-worthy events are inserted in the same transaction as the action
that raised them, and the alerting mailer (a later issue) drains the table. If the mail server is
down nothing is lost: rows stay unsent until a delivery succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import sqlalchemy as sa

from webapp.audit.service import AuditEntry
from webapp.clock import to_db
from webapp.db.tables import outbox
from webapp.events import ALERTS


class EventSink(Protocol):
    def write(self, conn: sa.Connection, entries: Sequence[AuditEntry], *, now: datetime) -> None:
        """Persist the alert-worthy entries in the caller's transaction."""
        ...

    def committed(self, entries: Sequence[AuditEntry]) -> None:
        """Told after COMMIT, for copies that must not describe rolled-back actions."""
        ...


class OutboxSink:
    def __init__(self, *, logger: logging.Logger) -> None:
        self._logger = logger

    def write(self, conn: sa.Connection, entries: Sequence[AuditEntry], *, now: datetime) -> None:
        rows = [
            {
                "created_at": to_db(now),
                "event": str(e.event),
                "actor": e.actor,
                "ip": e.ip,
                "resource": e.resource,
                "detail": e.detail,
                "attempts": 0,
                "sent_at": None,
            }
            for e in entries
            if e.event in ALERTS
        ]
        if rows:
            conn.execute(sa.insert(outbox), rows)

    def committed(self, entries: Sequence[AuditEntry]) -> None:
        for e in entries:
            if e.event in ALERTS:
                self._logger.warning("event %s outcome=%s actor=%s ip=%s", e.event, e.outcome, e.actor, e.ip)


def pending(conn: sa.Connection, *, limit: int = 100) -> list[sa.Row]:
    """Unsent events, oldest first: what the mailer will send."""
    return list(
        conn.execute(
            sa.select(outbox).where(outbox.c.sent_at.is_(None)).order_by(outbox.c.id).limit(limit)
        ).all()
    )


def mark_sent(conn: sa.Connection, ids: Sequence[int], *, now: datetime) -> int:
    """For the mailer: record delivery. Rows are never deleted (the grants give no DELETE)."""
    if not ids:
        return 0
    return conn.execute(
        sa.update(outbox).where(outbox.c.id.in_(ids), outbox.c.sent_at.is_(None)).values(sent_at=to_db(now))
    ).rowcount


def mark_failed(conn: sa.Connection, ids: Sequence[int]) -> None:
    """For the mailer: count a failed delivery attempt; the row stays pending."""
    if ids:
        conn.execute(sa.update(outbox).where(outbox.c.id.in_(ids)).values(attempts=outbox.c.attempts + 1))
