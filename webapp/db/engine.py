"""Engines for the two supported backends, each configured for several gunicorn workers.

Both backends run a request the same way (docs/webapp.md, "Transactions"): it reads without taking
any write lock, and its writes (the view's, the counters, the session touch, the audit append) take
the lock at the first write and keep it to the commit.

SQLite (the embedded default): WAL so readers never block the writer nor the writer them, a busy
timeout so a second writer waits instead of failing. A transaction opens DEFERRED (a read snapshot,
no lock). The first statement that writes, or that reads FOR UPDATE (SQLite has no row locks: its
"FOR UPDATE" is the database's write lock), ends that read transaction and opens BEGIN IMMEDIATE
before it runs: from then on the transaction holds the write lock and reads the newest data. The read
transaction is ended, never upgraded in place: a deferred transaction that read and then writes gets
SQLITE_BUSY at once (the busy timeout does not apply) if another writer committed in between.

MariaDB/MySQL: READ COMMITTED, so counters and the audit chain head are read fresh under their row
locks (SELECT ... FOR UPDATE) instead of from a REPEATABLE READ snapshot; pre-ping so a restarted
database is picked up again without restarting the app.

So on both, a value that a decision depends on at write time is read FOR UPDATE, or the write itself
carries the condition (UPDATE ... WHERE ... and its rowcount): a plain read may be stale by then.
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
        event.listen(engine, "begin", _sqlite_begin)
        event.listen(engine, "before_cursor_execute", _sqlite_before_execute)
        return engine
    if parsed.get_backend_name() in {"mysql", "mariadb"}:
        engine = sa.create_engine(
            parsed, isolation_level="READ COMMITTED", pool_pre_ping=True, pool_recycle=3600, **kwargs
        )
        _close_at_exit(engine)
        event.listen(engine, "handle_error", _drop_unready_node)
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


WSREP_NOT_READY = 1047  # ER_UNKNOWN_COM_ERROR: a Galera node outside the primary component


def _drop_unready_node(context: sa.engine.ExceptionContext) -> None:
    """A Galera node that left the cluster still answers a ping, so pre-ping keeps its connections:
    treat its refusal as a lost connection, which drops the pool, and the next checkout reconnects
    (through the balancer, to a node that is ready). The request is re-run (webapp/retry.py)."""
    args = getattr(context.original_exception, "args", ())
    if args and args[0] == WSREP_NOT_READY:
        context.is_disconnect = True


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


# Asked for by long read-only work (audit verification, the mailer's scans). Every transaction now
# starts as a reader, so on SQLite this changes nothing; it still says what the caller means.
READ_ONLY = "strongroom_read_only"
_PHASE = "strongroom_phase"  # in the DBAPI connection's info: "read" or "write"
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")


def _sqlite_begin(conn: sa.Connection) -> None:
    # Under WAL a deferred transaction reads one snapshot and holds no lock that a writer waits on.
    conn.exec_driver_sql("BEGIN DEFERRED")
    conn.info[_PHASE] = "read"


def _takes_write_lock(statement: str, context: Any) -> bool:
    if statement.lstrip()[:7].upper().startswith(_WRITES):
        return True
    compiled = getattr(context, "compiled", None)
    return getattr(getattr(compiled, "statement", None), "_for_update_arg", None) is not None


def _sqlite_before_execute(
    conn: sa.Connection, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
) -> None:
    # SQLAlchemy runs this inside its error handling: a timeout here is its OperationalError.
    if conn.info.get(_PHASE) == "read" and _takes_write_lock(statement, context):
        _begin_writing(conn)


def _begin_writing(conn: sa.Connection) -> None:
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None  # noqa: S101 - the connection is checked out and in a transaction
    # End the read transaction (it wrote nothing, so this releases its snapshot and nothing else),
    # then wait for the write lock with the busy timeout: never SQLITE_BUSY mid-transaction. The
    # phase changes only once the lock is held: should BEGIN IMMEDIATE fail, the statement fails
    # with it and nothing runs outside a transaction.
    if dbapi.in_transaction:
        dbapi.execute("COMMIT")
    dbapi.execute("BEGIN IMMEDIATE")
    conn.info[_PHASE] = "write"


def write_phase(conn: sa.Connection) -> None:
    """Take the write lock now (SQLite: BEGIN IMMEDIATE; MariaDB: nothing, its locks are per row
    and taken by the statements themselves), so that what is read next is the newest data and
    stays so until the commit."""
    if conn.dialect.name != "sqlite":
        return
    if not conn.in_transaction():
        conn.begin()
    if conn.info.get(_PHASE) == "read":
        dbapi_error = conn.dialect.loaded_dbapi.Error
        try:
            _begin_writing(conn)
        except dbapi_error as exc:  # the same exception a statement would raise
            raise sa.exc.DBAPIError.instance("BEGIN IMMEDIATE", None, exc, dbapi_error) from exc


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
