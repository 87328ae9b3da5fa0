"""What happens when a request cannot finish.

- keyd sealed or unreachable: 503 "vault sealed / unavailable", the transaction rolled back.
- keyd's decrypt budget spent: 429 "reveal limit reached", an alert event (the reveal view catches
  it itself to keep its step-up token spent; this is the net for any other decrypting path).
- Database unreachable: 503, the event goes to syslog (the outbox is in the database that is down),
  and the next request tries again: the pool pre-pings, so recovery needs no restart.
- Anything else ("safe mode"): roll back, end the user's session, show a page that closes the window,
  and raise an event with no details. The server log gets the exception type and the code location
  only: exception messages can carry SQL parameters or form values.
- Development mode: the exception propagates to Flask's debugger after the rollback.
"""

from __future__ import annotations

import logging
import traceback

import sqlalchemy as sa
from flask import Flask, g, render_template, request, session
from flask.wrappers import Response

from keyd.errors import QuotaExceeded, Sealed, Unavailable
from webapp.auth.sessions import ServerSession, end_sessions, sid_hash
from webapp.db.tables import sessions
from webapp.events import Event
from webapp.redact import mask_pans
from webapp.request import origin, services
from webapp.unit import Origin

log = logging.getLogger("strongroom.errors")


def is_db_outage(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError)


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}" for f in reversed(frames[-6:]))


def handle(app: Flask, exc: Exception) -> Response:
    uow = g.pop("uow", None)
    if uow is not None:
        uow.rollback()
    svc = services()
    if isinstance(exc, Sealed | Unavailable):
        event = Event.VAULT_SEALED if isinstance(exc, Sealed) else Event.VAULT_UNAVAILABLE
        _record(app, event, end_session=False)
        page = render_template("vault_unavailable.html", sealed=isinstance(exc, Sealed))
        return Response(page, status=503, mimetype="text/html")
    if isinstance(exc, QuotaExceeded):
        _record(app, Event.REVEAL_BUDGET_EXCEEDED, end_session=False)
        return Response(render_template("quota_exceeded.html"), status=429, mimetype="text/html")
    if is_db_outage(exc):
        svc.event_logger.critical("event %s path=%s", Event.DB_UNAVAILABLE, mask_pans(request.path))
        log.error("database unavailable: %s at %s", type(exc).__name__, _where(exc))
        _record(app, Event.DB_UNAVAILABLE, end_session=False)
        return Response(render_template("db_unavailable.html"), status=503, mimetype="text/html")
    log.error("unexpected %s at %s", type(exc).__name__, _where(exc))
    _record(app, Event.ERROR_UNEXPECTED, end_session=True)
    if app.config["MODE"] == "development":
        raise exc
    response = Response(render_template("safe_mode.html"), status=500, mimetype="text/html")
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
        svc.event_logger.critical("event %s not recorded in the database (%s)", event, type(exc).__name__)
