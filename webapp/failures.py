"""What happens when a request cannot finish.

- keyd sealed or unreachable: 503 "vault sealed / unavailable", the transaction rolled back.
- keyd's decrypt budget spent: 429 "reveal limit reached", an alert event (the reveal view catches
  it itself to keep its step-up token spent; this is the net for any other decrypting path).
- Database unreachable: 503, and the next request tries again: the pool pre-pings, so recovery needs
  no restart.
- Database that rolled the transaction back on its own (a deadlock, a Galera certification
  conflict: 1213; a Galera node not ready: 1047): the request is run again from the start
  (webapp/retry.py), and the attempt leaves no trace here; when the last attempt fails too, it is an
  outage (503).
- Database refusing writes (disk full, read-only): 503 with a page that says so, not "cannot be
  reached": the operator reading the employee's report must look at the disk, not the network. The
  employee learns that much and nothing more (no error text, no code); the log has the code.
- Any event that cannot be recorded in the database (it is down, full or read-only: the outbox lives
  there) is written to the alert spool (webapp/mail/spool.py), which the mailer sends directly over
  SMTP, and to syslog.
- Anything else ("safe mode"): roll back, end the user's session, show a page that closes the window,
  and raise an event with no details. The server log gets the exception type and the code location
  only: exception messages can carry SQL parameters or form values.
- Development mode: the exception propagates to Flask's debugger after the rollback.
"""

from __future__ import annotations

import logging
import os
import traceback

import sqlalchemy as sa
from flask import Flask, g, request, session
from flask.wrappers import Response

from keyd.errors import QuotaExceeded, Sealed, Unavailable
from webapp import retry
from webapp.auth.sessions import ServerSession, end_sessions, sid_hash
from webapp.db.tables import sessions
from webapp.events import ALERTS, Event
from webapp.mail.spool import Spool, SpoolError, spool_path
from webapp.redact import mask_pans
from webapp.refusals import page
from webapp.request import origin
from webapp.services import services
from webapp.unit import Origin

log = logging.getLogger("strongroom.errors")


def is_db_outage(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if retry.retryable_code(exc) is not None:
        return True  # a conflict that outlasted the re-runs, a node out of the cluster: try again later
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError)


# MariaDB error codes of a database that refuses to write, and what to tell the operator.
_MARIADB_WRITE_REFUSED = {
    3: "disk full",  # ER_ERROR_ON_WRITE
    1021: "disk full",  # ER_DISK_FULL
    1114: "disk full",  # ER_RECORD_FILE_FULL: the table (its tablespace, its disk) is full
    1290: "read-only",  # ER_OPTION_PREVENTS_STATEMENT: --read-only
    1792: "read-only",  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
    1836: "read-only",  # ER_READ_ONLY_MODE
}
_SQLITE_WRITE_REFUSED = {13: "disk full", 8: "read-only"}  # SQLITE_FULL, SQLITE_READONLY (primary codes)


_SQLITE_IOERR = 10  # a full disk in WAL mode often shows as this (the -shm file cannot grow)


def write_refused(exc: BaseException, *, sqlite_path: str | None = None) -> str | None:
    """What the database refused a write for ("disk full", "disk error", "read-only"), else None.
    For an SQLite I/O error the free space next to the database file tells a full disk from a
    failing one."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    orig = exc.orig
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        if sqlite_code & 0xFF == _SQLITE_IOERR:
            return "disk full" if sqlite_path and _no_space(sqlite_path) else "disk error"
        return _SQLITE_WRITE_REFUSED.get(sqlite_code & 0xFF)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return _MARIADB_WRITE_REFUSED.get(args[0])
    return None


def _no_space(database: str) -> bool:
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(database)))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024  # less than a few pages left: as good as full


def sqlite_path(engine: sa.Engine) -> str | None:
    return engine.url.database if engine.dialect.name == "sqlite" else None


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}" for f in reversed(frames[-6:]))


def handle(app: Flask, exc: Exception) -> Response:
    uow = g.pop("uow", None)
    if uow is not None:
        uow.rollback()
    if retry.discard(request.environ, exc):
        return Response(status=503)  # never sent: webapp/retry.py runs the request again
    svc = services()
    if isinstance(exc, Sealed | Unavailable):
        event = Event.VAULT_SEALED if isinstance(exc, Sealed) else Event.VAULT_UNAVAILABLE
        _record(app, event, end_session=False)
        return page("vault_unavailable.html", status=503, sealed=isinstance(exc, Sealed))
    if isinstance(exc, QuotaExceeded):
        _record(app, Event.REVEAL_BUDGET_EXCEEDED, end_session=False)
        return page("quota_exceeded.html", status=429)
    refused = write_refused(exc, sqlite_path=sqlite_path(svc.engine))
    if refused is not None:
        svc.event_logger.critical(
            "event %s reason=%s path=%s", Event.DB_WRITE_REFUSED, refused, mask_pans(request.path)
        )
        log.error("database refused the write (%s): %s at %s", refused, type(exc).__name__, _where(exc))
        _record(app, Event.DB_WRITE_REFUSED, end_session=False)
        return page("db_write_refused.html", status=503, reason=refused)
    if is_db_outage(exc):
        svc.event_logger.critical("event %s path=%s", Event.DB_UNAVAILABLE, mask_pans(request.path))
        log.error("database unavailable: %s at %s", type(exc).__name__, _where(exc))
        _record(app, Event.DB_UNAVAILABLE, end_session=False)
        return page("db_unavailable.html", status=503)
    log.error("unexpected %s at %s", type(exc).__name__, _where(exc))
    _record(app, Event.ERROR_UNEXPECTED, end_session=True)
    if app.config["MODE"] == "development":
        raise exc
    response = page("safe_mode.html", status=500)
    response.delete_cookie(
        app.config["SESSION_COOKIE_NAME"], path="/", secure=True, httponly=True, samesite="Strict"
    )
    return response


def _record(app: Flask, event: Event, *, end_session: bool) -> None:
    """Best effort in a fresh transaction; when even that fails the syslog copy is all there is."""
    svc = services()
    try:
        who = origin()
        uow = svc.unit(Origin(actor=getattr(g, "actor", "-"), ip=who.ip, cert_serial=who.serial))
        try:
            if end_session and isinstance(session, ServerSession) and session.sid:
                end_sessions(
                    uow.conn, sessions.c.id_hash == sid_hash(session.sid), now=svc.clock.now(), reason="error"
                )
            uow.record(event, ok=False, resource=request.path[:200])
            uow.commit()
        finally:
            uow.close()
    except Exception as exc:  # noqa: BLE001 - the failure page must still be shown; logged below
        spooled = _spool(app, event)
        svc.event_logger.critical(
            "event %s not recorded in the database (%s); %s",
            event,
            type(exc).__name__,
            "spooled for the mailer" if spooled else "NOT SPOOLED (spool full or unusable)",
        )


def _spool(app: Flask, event: Event) -> bool:
    """The alert's path that needs no database (webapp/mail/spool.py); only alerts go there."""
    if event not in ALERTS:
        return False
    spool = app.extensions.get("strongroom.spool")
    if spool is None:
        try:
            spool = Spool(spool_path(app.config, app.instance_path))
        except SpoolError:
            return False
        app.extensions["strongroom.spool"] = spool
    return bool(spool.add(str(event), now=services().clock.now()))
