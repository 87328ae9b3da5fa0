"""A unit of work: one database transaction plus the audit records and events it must carry.

Requests and admin commands both run inside one. The action's writes, its audit records and its
outbox events commit together or not at all: if the audit append fails, so does the action.

The transaction has two phases (webapp/db/engine.py, docs/webapp.md "Transactions"): it reads
without a write lock, and takes the lock at its first write (or SELECT ... FOR UPDATE) and keeps it
to the commit. A request's writes come at its end (the budget counters, the session touch, the audit
append), so the lock is held for those alone; anything a write depends on is read FOR UPDATE, or
checked by the write's own WHERE, inside that phase.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from webapp.audit import service as audit
from webapp.audit.service import AuditEntry
from webapp.clock import Clock
from webapp.events import Event
from webapp.outbox import EventSink


@dataclass
class Origin:
    """Who is acting and from where; `actor` changes when a login succeeds mid-request."""

    actor: str = "-"
    ip: str = "-"
    cert_serial: str = "-"


class UnitOfWork:
    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock,
        events: EventSink,
        audit_logger: logging.Logger,
        origin: Origin,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._events = events
        self._audit_logger = audit_logger
        self.origin = origin
        self._conn: sa.Connection | None = None
        self._tx: sa.RootTransaction | None = None
        self.entries: list[AuditEntry] = []

    @property
    def conn(self) -> sa.Connection:
        if self._conn is None:
            self._conn = self._engine.connect()
            self._tx = self._conn.begin()
        return self._conn

    def record(
        self,
        event: Event,
        *,
        ok: bool,
        resource: str = "-",
        detail: str = "-",
        actor: str | None = None,
    ) -> None:
        self.entries.append(
            AuditEntry(
                event=event,
                outcome=audit.SUCCESS if ok else audit.FAILURE,
                actor=actor if actor is not None else self.origin.actor,
                ip=self.origin.ip,
                cert_serial=self.origin.cert_serial,
                resource=resource,  # AuditEntry masks card numbers in every field
                detail=detail,
            )
        )

    def commit(self) -> None:
        """Append the audit records and events, then COMMIT. Raises (and rolls back) on any failure."""
        entries = list(self.entries)
        try:
            now = self._clock.now()
            appended = audit.append(self.conn, entries, now=now)
            self._events.write(self.conn, entries, now=now)
            assert self._tx is not None  # noqa: S101 - set together with _conn by the property above
            self._tx.commit()
        except BaseException:
            self.rollback()
            raise
        self.entries.clear()
        audit.to_syslog(self._audit_logger, appended)
        self._events.committed(entries)
        self._tx = None
        self._close()

    def abandon(self) -> None:
        """Roll back the action's writes but keep (and commit) its audit records: a refused or failed
        action still leaves its trace. If even that fails, the exception propagates."""
        kept = list(self.entries)
        self.rollback()
        self.entries = kept
        self.commit()

    def mark(self) -> int:
        """Where the records stand now, for `discard_writes(keep=...)`."""
        return len(self.entries)

    def discard_writes(self, *, keep: int | None = None) -> None:
        """Roll back what the action wrote so far, keep its audit records for the final commit (all of
        them, or the first `keep`: the action turned out not to have happened after all)."""
        kept = list(self.entries if keep is None else self.entries[:keep])
        self.rollback()
        self.entries = kept

    def rollback(self) -> None:
        """Drop everything: the action's writes and its pending records."""
        self.entries.clear()
        if self._tx is not None and self._tx.is_active:
            # A broken connection (database gone) cannot roll back; nothing was committed anyway.
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._tx.rollback()
        self._tx = None
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        self.rollback()
