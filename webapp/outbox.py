"""The durable event outbox: alert-worthy events are inserted in the same transaction as the action
that raised them, and the alerting mailer (webapp/mail) drains the table. If the mail server is
down nothing is lost: rows stay unsent until a delivery succeeds.

Bounded: the web app's events (OutboxSink: as many as anyone can send requests) are coalesced: one
pending row per event name per 10-minute window (UTC aligned) carries their count (`n_events`), the
first event's time and fields, and the last event's time (`last_at`); each occurrence is still in
the audit trail. A keyd outage with thousands of failing requests adds one row, not thousands. The
key is the event name alone: every other field (the request path, the actor) can be chosen by a
client, and a key an attacker can vary is no bound. `enqueue` (the watchdog, backups: scheduled,
once per episode) is not coalesced.
Sent rows are deleted after a retention time by `flask --app webapp mail prune`, which runs as a
database user that may do nothing else (db/grants-prune.sql); the web app itself cannot delete.

Other local processes (the ops watchdog, backups) raise their alerts with `enqueue`, in their own
transaction, into the same table: one mailer, one place to look.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
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
COALESCE_SECONDS = 600  # one pending row per event name per 10 minutes
DEFAULT_RETENTION_DAYS = 30  # sent rows older than this are pruned


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
        for e in entries:
            if e.event in ALERTS:
                fields = {"actor": e.actor, "ip": e.ip, "resource": e.resource, "detail": e.detail}
                _add(conn, str(e.event), now=now, coalesce=True, **fields)

    def committed(self, entries: Sequence[AuditEntry]) -> None:
        for e in entries:
            if e.event in ALERTS:
                self._logger.warning("event %s outcome=%s actor=%s ip=%s", e.event, e.outcome, e.actor, e.ip)


def coalesce_start(now: datetime) -> datetime:
    seconds = int(now.astimezone(UTC).timestamp())
    return datetime.fromtimestamp(seconds - seconds % COALESCE_SECONDS, UTC)


def _add(conn: sa.Connection, event: str, *, now: datetime, coalesce: bool, **fields: str) -> None:
    """Count one event into this window's pending row of its name (`coalesce`), or start one.

    MariaDB: the row is taken FOR UPDATE SKIP LOCKED. The mailer holds the rows it is sending locked
    during the SMTP exchange; a request must neither wait for that nor add to a row that is being
    mailed, so it starts a new row instead (a few rows per window at most). SQLite has no row locks:
    the mailer reads the count it mails and leaves what was added meanwhile pending (`mark_mailed`)."""
    query = (
        sa.select(outbox.c.id)
        .where(
            outbox.c.event == event,
            outbox.c.sent_at.is_(None),
            outbox.c.created_at >= to_db(coalesce_start(now)),
        )
        .order_by(outbox.c.id.desc())
        .limit(1)
    )
    if conn.dialect.name != "sqlite":
        query = query.with_for_update(skip_locked=True)
    found = conn.execute(query).scalar_one_or_none() if coalesce else None
    if found is not None:
        conn.execute(
            sa.update(outbox)
            .where(outbox.c.id == found)
            .values(n_events=outbox.c.n_events + 1, last_at=to_db(now))
        )
        return
    row = {name: mask_pans(str(value) or "-")[: _COLUMN_LIMITS[name]] for name, value in fields.items()}
    conn.execute(
        sa.insert(outbox).values(
            created_at=to_db(now),
            last_at=to_db(now),
            event=event,
            n_events=1,
            attempts=0,
            sent_at=None,
            **row,
        )
    )


def pending(conn: sa.Connection, *, limit: int = 100) -> list[sa.Row]:
    """Unsent events, oldest first: what the mailer will send."""
    return list(
        conn.execute(
            sa.select(outbox).where(outbox.c.sent_at.is_(None)).order_by(outbox.c.id).limit(limit)
        ).all()
    )


def mark_sent(conn: sa.Connection, ids: Sequence[int], *, now: datetime) -> int:
    """Mark rows sent whatever their count (tests, the watchdog's tests); the mailer uses mark_mailed."""
    if not ids:
        return 0
    return conn.execute(
        sa.update(outbox).where(outbox.c.id.in_(ids), outbox.c.sent_at.is_(None)).values(sent_at=to_db(now))
    ).rowcount


def mark_mailed(conn: sa.Connection, rows: Sequence[sa.Row], *, now: datetime) -> int:
    """For the mailer: record that the events in `rows`, as read, were mailed; returns how many.

    A row whose count grew after it was read (SQLite: requests write while the mailer talks SMTP)
    keeps the difference pending, from the time of this mail: those events were not in it."""
    mailed = 0
    for r in rows:
        done = conn.execute(
            sa.update(outbox)
            .where(outbox.c.id == r.id, outbox.c.sent_at.is_(None), outbox.c.n_events == r.n_events)
            .values(sent_at=to_db(now))
        ).rowcount
        if not done:
            done = conn.execute(
                sa.update(outbox)
                .where(outbox.c.id == r.id, outbox.c.sent_at.is_(None), outbox.c.n_events > r.n_events)
                .values(n_events=outbox.c.n_events - r.n_events, created_at=to_db(now))
            ).rowcount
        mailed += int(r.n_events) if done else 0
    return mailed


# What `last_error` may hold: an exception's class name (or the mailer's own fixed refusal name),
# never a message. A mail server's reply may quote anything, the message included.
ERROR_CLASS = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
UNKNOWN_ERROR = "unknown"


def error_class(name: str | None) -> str:
    """`name` if it is a plain identifier of at most 64 characters, else "unknown"."""
    return name if name is not None and ERROR_CLASS.fullmatch(name) else UNKNOWN_ERROR


def mark_failed(conn: sa.Connection, ids: Sequence[int], *, error: str | None = None) -> None:
    """For the mailer: count a failed delivery attempt and record its class (`error`, e.g.
    "SMTPDataError"; anything that is not a plain identifier is stored as "unknown"); the row stays
    pending."""
    if ids:
        conn.execute(
            sa.update(outbox)
            .where(outbox.c.id.in_(ids))
            .values(attempts=outbox.c.attempts + 1, last_error=error_class(error))
        )


def prune(conn: sa.Connection, *, now: datetime, retention: timedelta) -> int:
    """Delete rows sent more than `retention` ago; pending rows are never deleted. Returns the count.
    Runs as the prune user (db/grants-prune.sql), which may read `id, sent_at` and delete, nothing else."""
    if retention < timedelta(days=1):
        raise ValueError("retention must be at least one day")
    cutoff = to_db(now - retention)
    return conn.execute(
        sa.delete(outbox).where(outbox.c.sent_at.is_not(None), outbox.c.sent_at < cutoff)
    ).rowcount


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
    stay on the server for whoever investigates. Not coalesced: these processes run on a schedule
    and raise a finding once per episode (bounded by their timers, not by anyone's traffic), and
    their row is the only place the finding's resource and detail are kept (they have no audit
    record). Raises BadEventName for a malformed name."""
    if not isinstance(event, str) or not valid_event_name(event):
        raise BadEventName("event names are dotted lowercase words, e.g. ops.port_new")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    _add(conn, event, now=now, coalesce=False, actor=actor, ip=ip, resource=resource, detail=detail)


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
