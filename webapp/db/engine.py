"""Engines for the two supported backends, each configured for several gunicorn workers.

SQLite (the embedded default): WAL so readers do not block the writer, a busy timeout so a second
writer waits instead of failing, and every transaction opened with BEGIN IMMEDIATE. Every request
writes an audit record, so every transaction is a writer; taking the write lock up front means two
workers never deadlock on a read lock each upgrading to a write lock (SQLITE_BUSY mid-transaction).

MariaDB/MySQL: READ COMMITTED, so counters and the audit chain head are read fresh under their row
locks (SELECT ... FOR UPDATE) instead of from a REPEATABLE READ snapshot; pre-ping so a restarted
database is picked up again without restarting the app.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

SQLITE_BUSY_TIMEOUT_MS = 10_000


def make_engine(url: str, **kwargs: Any) -> Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    if parsed.get_backend_name() in {"mysql", "mariadb"}:
        engine = sa.create_engine(
            parsed, isolation_level="READ COMMITTED", pool_pre_ping=True, pool_recycle=3600, **kwargs
        )
        _close_at_exit(engine)
        return engine
    raise ValueError(f"unsupported database backend: {parsed.get_backend_name()}")


def _close_at_exit(engine: Engine) -> None:
    """Say goodbye to the server when the process ends (a CLI command, a watchdog pass, a worker).

    A pooled connection dropped without COM_QUIT makes MariaDB log "Aborted connection ... Got an
    error reading communication packets" to syslog for every admin command: noise the watchdog would
    report as new log data. Only the process that made the engine closes it: a forked child shares
    the parent's sockets and must not end the parent's sessions.
    """
    owner = os.getpid()

    def close() -> None:
        if os.getpid() == owner:
            engine.dispose()

    atexit.register(close)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module so that our BEGIN IMMEDIATE is the
    # only BEGIN (SQLAlchemy's documented recipe for pysqlite).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = FULL")
    finally:
        cursor.close()


READ_ONLY = "strongroom_read_only"


def _sqlite_begin_immediate(conn: sa.Connection) -> None:
    # Long read-only work (audit verification) asks for a deferred BEGIN: under WAL it reads one
    # snapshot without holding the write lock that every request needs.
    if conn.get_execution_options().get(READ_ONLY):
        conn.exec_driver_sql("BEGIN DEFERRED")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
