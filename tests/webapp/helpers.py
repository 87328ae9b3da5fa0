"""Reading what the app wrote: audit records, outbox events, users, sessions."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask

from webapp.db.tables import audit_log, outbox, sessions, users


def _conn(app: Flask) -> sa.Connection:
    return app.extensions["strongroom"].engine.connect()


def audit_rows(app: Flask, event: str | None = None) -> list[sa.Row]:
    with _conn(app) as conn:
        q = sa.select(audit_log).order_by(audit_log.c.seq)
        if event:
            q = q.where(audit_log.c.event == event)
        return list(conn.execute(q))


def events(app: Flask) -> list[str]:
    """Every event raised to the outbox, oldest row first; a coalesced row counts its n_events."""
    with _conn(app) as conn:
        rows = conn.execute(sa.select(outbox.c.event, outbox.c.n_events).order_by(outbox.c.id))
        return [r.event for r in rows for _ in range(r.n_events)]


def user_row(app: Flask, username: str) -> sa.Row:
    with _conn(app) as conn:
        return conn.execute(sa.select(users).where(users.c.username == username)).one()


def live_sessions(app: Flask) -> list[sa.Row]:
    with _conn(app) as conn:
        return list(conn.execute(sa.select(sessions).where(sessions.c.ended_at.is_(None))))


def refuse_audit_inserts(engine: sa.Engine) -> None:
    """Make the database itself refuse audit inserts (a trigger): the audit write fails for real."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER audit_refuses BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'no'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER audit_refuses BEFORE INSERT ON audit_log FOR EACH ROW "
                "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'no'"
            )


@contextlib.contextmanager
def mariadb_read_only(request: pytest.FixtureRequest) -> Iterator[None]:
    """The private MariaDB in read_only meanwhile: every write of the app's user refused (it has no
    privilege past it), as on a server put read-only by an operator or a failing disk."""
    root = request.getfixturevalue("maria_backend").server.root()
    try:
        with root.cursor() as cur:
            cur.execute("SET GLOBAL read_only = ON")
        yield
    finally:
        with root.cursor() as cur:
            cur.execute("SET GLOBAL read_only = OFF")
        root.close()
