"""The durable event outbox: alert-worthy events are inserted in the same transaction as the action
that raised them, and the alerting mailer (webapp/mail) drains the table. If the mail server is
down nothing is lost: rows stay unsent until a delivery succeeds. Rows are never deleted.

Other local processes (the ops watchdog, backups) raise their alerts with `enqueue`, in their own
transaction, into the same table: one mailer, one place to look.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import sqlalchemy as sa

from webapp.audit.service import AuditEntry
from webapp.clock import to_db
from webapp.db.tables import outbox
from webapp.events import ALERTS
from webapp.redact import mask_pans

# Event names are dotted lowercase words without digits ("auth.account_locked", "ops.port_new"):
# the mailer may put an unknown name into a mail, so it must never carry data (no digits: no PAN).
EVENT_NAME = re.compile(r"[a-z][a-z_]{0,30}(?:\.[a-z][a-z_]{0,30}){1,3}")
_COLUMN_LIMITS = {"actor": 64, "ip": 45, "resource": 200, "detail": 200}


class BadEventName(ValueError):
    """An event name that is not a dotted lowercase name of at most 64 characters."""


def valid_event_name(name: str) -> bool:
    return len(name) <= 64 and EVENT_NAME.fullmatch(name) is not None


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
                "resource": mask_pans(e.resource),
                "detail": mask_pans(e.detail),
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


def enqueue(
    conn: sa.Connection,
    event: str,
    *,
    now: datetime,
    actor: str = "-",
    ip: str = "-",
    resource: str = "-",
    detail: str = "-",
) -> None:
    """Queue one alert in the caller's transaction (for the watchdog, backups: processes that have
    no unit of work). The mailer sends only a bare notification naming the event; the other fields
    stay on the server for whoever investigates. Raises BadEventName for a malformed name."""
    if not isinstance(event, str) or not valid_event_name(event):
        raise BadEventName("event names are dotted lowercase words, e.g. ops.port_new")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    values = {"actor": actor, "ip": ip, "resource": resource, "detail": detail}
    row = {name: mask_pans(str(value) or "-")[: _COLUMN_LIMITS[name]] for name, value in values.items()}
    conn.execute(
        sa.insert(outbox).values(created_at=to_db(now), event=event, attempts=0, sent_at=None, **row)
    )


def pending_kinds(conn: sa.Connection) -> list[str]:
    """The distinct event names waiting to be sent (the mailer sends one mail per name)."""
    return sorted(
        str(name)
        for name in conn.execute(sa.select(outbox.c.event).where(outbox.c.sent_at.is_(None)).distinct())
        .scalars()
        .all()
    )


def claim(conn: sa.Connection, event: str, *, limit: int, skip_locked: bool) -> list[sa.Row]:
    """Pending rows of one event name, oldest first. With `skip_locked` (MariaDB) the rows are
    locked FOR UPDATE SKIP LOCKED in the caller's transaction: a second mailer running at the same
    time skips them instead of sending them again."""
    query = (
        sa.select(outbox)
        .where(outbox.c.sent_at.is_(None), outbox.c.event == event)
        .order_by(outbox.c.id)
        .limit(limit)
    )
    if skip_locked:
        query = query.with_for_update(skip_locked=True)
    return list(conn.execute(query).all())
